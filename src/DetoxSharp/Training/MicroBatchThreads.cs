using System.Runtime.ExceptionServices;
using TorchSharp;

namespace DetoxSharp.Training;

/// <summary>
/// Runs a step's micro-batches side by side, one a thread, each thread with one libtorch thread of its own (data
/// parallelism over the cores inside one process). At small widths a training step on two cores is not one step twice as
/// fast: between libtorch's parallel regions the calling thread works alone (dispatch, autograd, small ops) while
/// libgomp's other worker spins — ≈ 10 % of a two-thread toy step. Two micro-batches, each on one core, keep both cores
/// busy instead.
/// </summary>
/// <remarks>
/// The caller's thread runs slot 0; <c>count − 1</c> dedicated threads run the others. During <see cref="Run"/> the
/// caller's libtorch thread count is the slots' share (each worker's is that from its start) and it is restored
/// afterwards, so the rest of the step (gradient accumulation, clipping, the optimizer) runs on all of libtorch's threads.
/// libtorch's intra-op thread count is OpenMP's, which is per OS thread: that is what lets each slot run on its share.
/// An exception in any slot is rethrown on the caller after every slot has finished.
/// </remarks>
internal sealed class MicroBatchThreads : IDisposable
{
    readonly Thread[] _threads;
    readonly SemaphoreSlim[] _go;
    readonly CountdownEvent _done;
    Action<int>? _work;
    readonly Exception?[] _errors;
    volatile bool _stop;

    /// <summary>Starts <paramref name="count"/> − 1 worker threads (slot 0 is the caller's), each slot to run on
    /// <paramref name="threadsPerSlot"/> libtorch threads.</summary>
    public MicroBatchThreads(int count, int threadsPerSlot)
    {
        if (count < 2) throw new ArgumentOutOfRangeException(nameof(count), "at least two slots");
        if (threadsPerSlot < 1) throw new ArgumentOutOfRangeException(nameof(threadsPerSlot), "at least one thread a slot");
        Count = count;
        ThreadsPerSlot = threadsPerSlot;
        int restore = torch.get_num_threads();
        _threads = new Thread[count - 1];
        _go = new SemaphoreSlim[count - 1];
        _errors = new Exception?[count];
        _done = new CountdownEvent(count - 1);
        for (int i = 0; i < _threads.Length; i++)
        {
            int slot = i + 1;
            _go[i] = new SemaphoreSlim(0);
            _threads[i] = new Thread(() => Loop(slot)) { IsBackground = true, Name = $"detox micro-batch {slot}" };
            _threads[i].Start();
        }
        _done.Wait(); // every worker has set its thread count (which also sets libtorch's default for new threads) …
        torch.set_num_threads(restore); // … so the caller's count, and that default, are put back afterwards
    }

    /// <summary>Slots (threads) a <see cref="Run"/> can use.</summary>
    public int Count { get; }

    /// <summary>libtorch threads each slot runs on.</summary>
    public int ThreadsPerSlot { get; }

    void Loop(int slot)
    {
        torch.set_num_threads(ThreadsPerSlot);
        _done.Signal();
        while (true)
        {
            _go[slot - 1].Wait();
            if (_stop) return;
            try { _work!(slot); }
            catch (Exception e) { _errors[slot] = e; }
            finally { _done.Signal(); }
        }
    }

    /// <summary>Runs <paramref name="work"/>(slot) for slot = 0 … <paramref name="n"/> − 1 at once, slot 0 on the calling
    /// thread; returns when all are done.</summary>
    public void Run(int n, Action<int> work)
    {
        if (n < 1 || n > Count) throw new ArgumentOutOfRangeException(nameof(n), $"1 … {Count} slots");
        Array.Clear(_errors);
        _work = work;
        int restore = torch.get_num_threads();
        torch.set_num_threads(ThreadsPerSlot);
        try
        {
            _done.Reset(n - 1);
            for (int i = 0; i < n - 1; i++) _go[i].Release();
            try { work(0); }
            catch (Exception e) { _errors[0] = e; }
            _done.Wait();
        }
        finally
        {
            torch.set_num_threads(restore);
            _work = null;
        }
        var errors = _errors.Where(e => e is not null).ToList();
        if (errors.Count == 1) ExceptionDispatchInfo.Capture(errors[0]!).Throw();
        if (errors.Count > 1) throw new AggregateException(errors!);
    }

    /// <summary>Stops the worker threads.</summary>
    public void Dispose()
    {
        if (_stop) return;
        _stop = true;
        foreach (var g in _go) g.Release();
        foreach (var t in _threads) t.Join();
        foreach (var g in _go) g.Dispose();
        _done.Dispose();
    }
}
