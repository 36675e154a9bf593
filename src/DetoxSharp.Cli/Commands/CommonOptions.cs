using System.CommandLine;
using DetoxSharp.Checkpoints;
using TorchSharp;
using static TorchSharp.torch;

namespace DetoxSharp.Cli.Commands;

/// <summary>Options several commands share, and their conversion into library settings.</summary>
public static class CommonOptions
{
    public static Option<string> Model(string name = "--model", string description = "Hugging Face model directory (config.json + model.safetensors + tokenizer files)") =>
        new(name) { Description = description, Required = true };

    public static Option<string> Device() => new("--device") { Description = "cpu or cuda (cuda:N)", DefaultValueFactory = _ => "cpu" };

    public static Option<string> DType() => new("--dtype") { Description = "float32 or bfloat16", DefaultValueFactory = _ => "float32" };

    public static Option<string> Precision() => new("--precision")
    {
        Description = "auto: bf16-mixed on a CPU with native bfloat16 (avx512_bf16/amx_bf16) for a float32 model, else fp32; fp32: train in the loaded dtype (float32; pure bfloat16 with --dtype bfloat16); bf16-mixed: bfloat16 forward/backward with fp32 master weights and optimizer state (model loaded as float32)",
        DefaultValueFactory = _ => "auto",
    };

    /// <summary>--data-parallel: auto (the default) or a number of parts (<see cref="DetoxSharp.Training.SftOptions.DataParallel"/>).</summary>
    public static Option<string> DataParallel() => new("--data-parallel")
    {
        Description = "split each micro-batch into N parts trained side by side, one a thread, on bf16 working copies that share the weights (data parallelism over the cores; needs bf16-mixed): auto = 2 on ≥ 2 threads for models up to 100M parameters (off for dpo/adpo), 1 = off",
        DefaultValueFactory = _ => "auto",
    };

    /// <summary>The value of <see cref="DataParallel"/>: 0 for auto, else the number of parts (≥ 1).</summary>
    public static int ParseDataParallel(string value) =>
        value == "auto" ? 0
        : int.TryParse(value, System.Globalization.NumberStyles.None, System.Globalization.CultureInfo.InvariantCulture, out int n) && n >= 1 ? n
        : throw new InvalidInputException($"--data-parallel: expected auto or a positive number of parts, got '{value}'");

    public static Option<bool> AllowPickle() => new("--allow-pickle") { Description = "allow loading a legacy pickled pytorch_model.bin (pickles can run code)" };

    /// <summary>The one --resume of every training command: a switch that continues from OUT/checkpoint.</summary>
    public static Option<bool> Resume(string checkpoint = "OUT/checkpoint") =>
        new("--resume") { Description = $"continue from {checkpoint} (same data and options)" };

    public static Option<bool> Json() => new("--json") { Description = "print one JSON object on stdout" };

    public static torch.Device ParseDevice(string value)
    {
        if (value == "cpu") return torch.CPU;
        if (value.StartsWith("cuda"))
        {
            if (!torch.cuda.is_available()) throw new InvalidInputException($"--device {value}: CUDA is not available in this build/machine");
            return torch.device(value);
        }
        throw new InvalidInputException($"--device: expected cpu or cuda[:N], got '{value}'");
    }

    public static ScalarType ParseDType(string value) => value switch
    {
        "float32" or "fp32" => ScalarType.Float32,
        "bfloat16" or "bf16" => ScalarType.BFloat16,
        _ => throw new InvalidInputException($"--dtype: expected float32 or bfloat16, got '{value}'"),
    };

    /// <summary>Parses --precision and checks it against --dtype (bf16-mixed keeps fp32 master weights, so the model
    /// must be loaded as float32).</summary>
    public static DetoxSharp.Training.Precision ParsePrecision(string value, string dtype)
    {
        var p = value switch
        {
            "fp32" => DetoxSharp.Training.Precision.ModelDType,
            "bf16-mixed" => DetoxSharp.Training.Precision.Bf16Mixed,
            "auto" => DetoxSharp.Training.Precision.Auto,
            _ => throw new InvalidInputException($"--precision: expected auto, fp32 or bf16-mixed, got '{value}'"),
        };
        if (p == DetoxSharp.Training.Precision.Bf16Mixed && ParseDType(dtype) != ScalarType.Float32)
            throw new InvalidInputException($"--precision bf16-mixed needs --dtype float32 (it keeps fp32 master weights and casts a bf16 working copy itself), got --dtype {dtype}");
        return p;
    }

    public static LoadedModel LoadModel(string dir, string device, string dtype, bool allowPickle) =>
        HfCheckpoint.Load(dir, new LoadOptions { Device = ParseDevice(device), DType = ParseDType(dtype), AllowPickle = allowPickle });
}
