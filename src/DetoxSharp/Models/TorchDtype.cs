using TorchSharp;

namespace DetoxSharp.Models;

/// <summary>The `torch_dtype` string transformers writes into config.json for a model's parameter dtype.</summary>
public static class TorchDtype
{
    /// <summary>config.json's torch_dtype name of a dtype ("float32", "bfloat16", "float16").</summary>
    /// <param name="t">The dtype.</param>
    public static string ConfigName(torch.ScalarType t) => t switch
    {
        torch.ScalarType.BFloat16 => "bfloat16",
        torch.ScalarType.Float16 => "float16",
        _ => "float32",
    };
}
