using System.Runtime.InteropServices;
using TorchSharp;
using static TorchSharp.torch;

namespace DetoxSharp.Models;

/// <summary>
/// The address of a tensor's first element (libtorch's <c>data_ptr()</c>), read through <c>THSTensor_data</c>, an
/// exported function of TorchSharp's native LibTorchSharp library (TorchSharp itself has no public accessor). Two
/// tensors with the same address, dtype, shape and contiguity are the same elements; DetoxSharp.Training's FusedOptimizer uses
/// it to tell whether a parameter's gradient is still the view of its slice of the flat gradient buffer. When the
/// function cannot be found, <see cref="Available"/> is false and callers take their general path (CpuGelu: libtorch's GELU).
/// </summary>
internal static unsafe class TensorAddress
{
    static readonly delegate* unmanaged<IntPtr, IntPtr> Data = Find();

    /// <summary>Whether addresses can be read in this process.</summary>
    public static bool Available => Data != null;

    /// <summary>The address of <paramref name="t"/>'s first element (0 for a tensor without storage).</summary>
    public static long Of(Tensor t) => Data != null ? (long)Data(t.Handle) : throw new InvalidOperationException("LibTorchSharp's THSTensor_data was not found");

    static delegate* unmanaged<IntPtr, IntPtr> Find()
    {
        try
        {
            torch.InitializeDeviceType(DeviceType.CPU); // loads LibTorchSharp if nothing has yet
            // the copy TorchSharp loaded (Linux: found in /proc/self/maps); else the name resolved like TorchSharp's own imports
            IntPtr handle = NativeSetup.LoadedLibrary("libLibTorchSharp.so") is string path && NativeLibrary.TryLoad(path, out var h) ? h
                : NativeLibrary.TryLoad("LibTorchSharp", typeof(torch).Assembly, null, out var h2) ? h2 : IntPtr.Zero;
            return handle != IntPtr.Zero && NativeLibrary.TryGetExport(handle, "THSTensor_data", out var fn) ? (delegate* unmanaged<IntPtr, IntPtr>)fn : null;
        }
        catch (Exception e) when (e is DllNotFoundException or BadImageFormatException or EntryPointNotFoundException or IOException)
        {
            return null;
        }
    }
}
