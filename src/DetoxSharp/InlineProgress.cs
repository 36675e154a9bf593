namespace DetoxSharp;

/// <summary>An <see cref="IProgress{T}"/> that runs its callback on the reporting thread, in order
/// (<see cref="Progress{T}"/> posts to the thread pool and may reorder or delay reports).</summary>
internal sealed class InlineProgress<T>(Action<T> report) : IProgress<T>
{
    public void Report(T value) => report(value);
}
