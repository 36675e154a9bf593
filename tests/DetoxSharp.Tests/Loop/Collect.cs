using DetoxSharp.Training;

namespace DetoxSharp.Tests;

/// <summary>An IProgress that runs an action on the reporting thread (Progress&lt;T&gt; would post to the thread pool, too
/// late to cancel at an exact step).</summary>
sealed class Collect(Action<TrainingProgress> onReport) : IProgress<TrainingProgress>
{
    public void Report(TrainingProgress value) => onReport(value);
}
