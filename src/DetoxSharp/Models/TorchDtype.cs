using TorchSharp;

namespace DetoxSharp.Models;

/// <summary>The `torch_dtype` string transformers writes into config.json for a model's parameter dtype.</summary>
public static class TorchDtype
{
    public static string ConfigName(torch.ScalarType t) => t switch
    {
        torch.ScalarType.BFloat16 => "bfloat16",
        torch.ScalarType.Float16 => "float16",
        _ => "float32",
    };
}
