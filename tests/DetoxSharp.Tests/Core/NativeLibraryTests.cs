using TorchSharp;
using static TorchSharp.torch;

namespace DetoxSharp.Tests.Core;

public class NativeLibraryTests
{
    [Fact]
    public void LibTorchSharpLoadsAndComputes()
    {
        // Fails with a DllNotFoundException/TypeInitializationException when libLibTorchSharp.so cannot be loaded
        // (e.g. the Debian 12 GLIBCXX_3.4.32 fix in build/LibTorchSharpLoadFix.targets did not apply).
        using var a = torch.tensor(new float[] { 1, 2, 3, 4 }, [2, 2]);
        using var b = torch.tensor(new float[] { 5, 6, 7, 8 }, [2, 2]);
        using var c = a.matmul(b);
        Assert.Equal(new float[] { 19, 22, 43, 50 }, c.data<float>().ToArray());
    }
}
