using System.CommandLine;
using System.Text.Json;
using System.Text.Json.Nodes;

namespace DetoxSharp.Cli.Commands;

public static class InfoCommand
{
    public static Command Create()
    {
        var model = CommonOptions.Model();
        var pickle = CommonOptions.AllowPickle();
        var json = CommonOptions.Json();
        var device = CommonOptions.Device();
        var cmd = new Command("info", "Show a model's architecture, parameter count, dtype and tokenizer.") { model, pickle, json, device };
        cmd.SetAction(p =>
        {
            using var m = CommonOptions.LoadModel(p.GetValue(model)!, p.GetValue(device)!, "float32", p.GetValue(pickle));
            var lm = m.Model;
            long n = lm.Module.parameters().Sum(x => x.numel());
            var cfg = lm.ConfigJson();
            var o = new JsonObject
            {
                ["directory"] = m.Directory,
                ["family"] = lm.Family,
                ["layers"] = lm.NumLayers,
                ["d_model"] = lm.DModel,
                ["heads"] = lm.NumHeads,
                ["mlp_dim"] = lm.MlpDim,
                ["context"] = lm.MaxPositions,
                ["vocab_size"] = lm.VocabSize,
                ["parameters"] = n,
                ["stored_dtype"] = DetoxSharp.Checkpoints.HfCheckpoint.ReadConfig(m.Directory)["torch_dtype"]?.DeepClone(), // as written in config.json, not the dtype loaded for inspection
                ["allocator"] = DetoxSharp.NativeSetup.Description, // libtorch THP setting, plus GLIBC_TUNABLES when detox re-executed itself with it
                ["mkl"] = DetoxSharp.NativeSetup.MklDescription, // MKL's fp32 GEMM kernel choice (NativeSetup.InitMkl)
                ["cpu"] = DetoxSharp.Training.CpuFeatures.Description, // name, family/model (AMD generation), vector flags: the context of any timing
                ["activation"] = (cfg["activation_function"] ?? cfg["hidden_act"])?.DeepClone(),
                ["kv_heads"] = cfg["num_key_value_heads"]?.DeepClone() ?? lm.NumHeads,
                ["tokenizer"] = m.Tokenizer.Source,
                ["tokenizer_vocab_size"] = m.Tokenizer.VocabSize,
                ["added_tokens"] = new JsonArray(m.Tokenizer.AddedTokens.Keys.Select(k => (JsonNode)JsonValue.Create(k)!).ToArray()),
            };
            if (p.GetValue(json)) p.InvocationConfiguration.Output.WriteLine(o.ToJsonString());
            else
                foreach (var (k, v) in o) p.InvocationConfiguration.Output.WriteLine($"{k,-22}{v?.ToJsonString().Trim('"')}");
            return 0;
        });
        return cmd;
    }
}
