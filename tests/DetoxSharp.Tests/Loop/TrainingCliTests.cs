using System.Diagnostics;
using System.Runtime.InteropServices;
using System.Text.Json;
using DetoxSharp.Checkpoints;
using DetoxSharp.Text;
using Tiny = DetoxSharp.Tests.Preference.Tiny;
using static DetoxSharp.Tests.CliRunner;

namespace DetoxSharp.Tests.Loop;

/// <summary>The training commands' interruption, divergence and resume contract as a user meets it: exit codes, the one
/// line on stderr, and the command it prints.</summary>
public class TrainingCliTests
{
    /// <summary>A tiny start model and a pairs file under a fresh directory.</summary>
    static (string Root, string Model, string Pairs) Setup(string name)
    {
        var root = Tiny.TempDir(name);
        var model = Path.Combine(root, "start");
        using (var m = Tiny.Model()) HfCheckpoint.Save(m, Gpt2Tokenizer.Default(), model, overwrite: true);
        var pairs = Path.Combine(root, "pairs.jsonl");
        File.WriteAllLines(pairs, Tiny.Pairs(24).Select(e => JsonSerializer.Serialize(new { prompt = e.Prompt, chosen = e.Chosen, rejected = e.Rejected })));
        return (root, model, pairs);
    }

    static string[] Dpo(string model, string pairs, string outDir, params string[] more) =>
        ["dpo", "--model", model, "--data", pairs, "--out", outDir, "--batch-size", "2", "--validation-size", "4", "--warmup", "0",
            .. more.Contains("--lr") ? more : [.. more, "--lr", "1e-3"]];

    [Fact]
    public void ResumeWithOtherSettingsNamesTheFlagAndAFinishedRunSaysSo()
    {
        var (root, model, pairs) = Setup("cli-resume");
        var outDir = Path.Combine(root, "out");
        var first = Run(Dpo(model, pairs, outDir, "--max-steps", "3"));
        Assert.True(first.Rc == 0, first.Err);
        var beta = Run(Dpo(model, pairs, outDir, "--max-steps", "3", "--beta", "0.3", "--resume"));
        Assert.Equal(2, beta.Rc);
        var line = Assert.Single(beta.Err.Trim().Split('\n'));
        Assert.StartsWith("detox: --beta is 0.3 but the checkpoint", line);
        var lr = Run(Dpo(model, pairs, outDir, "--max-steps", "3", "--resume", "--lr", "5e-4"));
        Assert.Equal(2, lr.Rc);
        Assert.Contains("--lr is 0.0005", lr.Err);
        Assert.Contains("--allow-setting-changes", lr.Err);
        // a longer run is the flag the user typed, not the step count it implies
        var longer = Run(Dpo(model, pairs, outDir, "--max-steps", "5", "--resume"));
        Assert.Equal(2, longer.Rc);
        Assert.StartsWith("detox: --max-steps is 5 but the checkpoint", Assert.Single(longer.Err.Trim().Split('\n')));
        Assert.DoesNotContain("total_steps", longer.Err);
        var finalBytes = File.ReadAllBytes(Path.Combine(outDir, "final", "model.safetensors"));
        var again = Run(Dpo(model, pairs, outDir, "--max-steps", "3", "--resume"));
        Assert.True(again.Rc == 0, again.Err);
        Assert.Contains("finished run (3/3 steps); nothing to train", again.Out);
        Assert.DoesNotContain("NaN", again.Out + again.Err);
        Assert.Equal(finalBytes, File.ReadAllBytes(Path.Combine(outDir, "final", "model.safetensors")));
    }

    [Fact]
    public void DivergingRunStopsWithOneLineAndTheCommandToContinue()
    {
        var (root, model, pairs) = Setup("cli-diverge");
        var outDir = Path.Combine(root, "out");
        // an absurd learning rate: step 1 is finite, its update overflows the next forward
        var r = Run(Dpo(model, pairs, outDir, "--max-steps", "6", "--lr", "1e30", "--checkpoint-every", "1"));
        Assert.Equal(3, r.Rc); // diverged: neither bad input (2) nor a bug (1)
        var lines = r.Err.Split('\n', StringSplitOptions.RemoveEmptyEntries);
        var line = Assert.Single(lines.Where(l => l.Contains("diverged")).ToList());
        Assert.Equal(line, lines[^1]); // the last word on stderr
        Assert.Matches(@"training diverged at step \d: the (loss|gradient norm) is", line);
        Assert.Contains("last checkpoint", line);
        Assert.Contains("--resume --lr 5E+29 --allow-setting-changes", line);
        Assert.DoesNotContain("--lr 1e30", line); // the old value is replaced, not repeated
        Assert.DoesNotContain("   at ", r.Err); // no stack trace
        Assert.False(Directory.Exists(Path.Combine(outDir, "final")));
        // the checkpoint it names is the step before the divergence
        int badStep = int.Parse(System.Text.RegularExpressions.Regex.Match(line, @"step (\d)").Groups[1].Value);
        var state = StrictJson.ParseFileObject(Path.Combine(outDir, "checkpoint", "trainer_state.json"), "state");
        Assert.Equal(badStep - 1, state["step"]!.GetValue<int>());
    }

    [DllImport("libc", SetLastError = true)]
    static extern int kill(int pid, int sig);

    [Fact]
    public void SigintDuringDpoCheckpointsPrintsTheResumeCommandAndExits130()
    {
        if (!OperatingSystem.IsLinux() && !OperatingSystem.IsMacOS()) throw new PlatformNotSupportedException("signals");
        var (root, model, pairs) = Setup("cli-sigint");
        var exe = Path.Combine(AppContext.BaseDirectory, "detox");
        Assert.True(File.Exists(exe), exe);
        (int Code, string Err) Child(IEnumerable<string> args, Func<string, bool>? signalWhen = null)
        {
            var psi = InterruptibleChild.StartInfo(exe);
            foreach (var a in args) psi.ArgumentList.Add(a);
            using var p = Process.Start(psi)!;
            var err = new System.Text.StringBuilder();
            bool signalled = false;
            p.ErrorDataReceived += (_, e) =>
            {
                if (e.Data is null) return;
                lock (err) err.AppendLine(e.Data);
                if (!signalled && signalWhen?.Invoke(e.Data) == true) { signalled = true; kill(p.Id, 2); }
            };
            p.BeginErrorReadLine();
            p.StandardOutput.ReadToEnd();
            Assert.True(p.WaitForExit(180_000), "child did not exit");
            p.WaitForExit(); // drains the stderr events
            lock (err) return (p.ExitCode, err.ToString());
        }
        // long enough (≈ 2 s) that the signal sent on the first step's progress line arrives well before the end
        string[] Args(string outDir) => Dpo(model, pairs, outDir, "--max-steps", "200", "--epochs", "20", "--threads", "1");

        var full = Child(Args(Path.Combine(root, "full")));
        Assert.True(full.Code == 0, full.Err);

        var outDir = Path.Combine(root, "part");
        // SIGINT once the first step has been reported: the loop finishes the step it is in, checkpoints, exits 130
        var cut = Child(Args(outDir), line => line.StartsWith("[1/200"));
        Assert.True(cut.Code == 130, cut.Err);
        var last = cut.Err.Trim().Split('\n')[^1];
        Assert.Matches(@"^detox: dpo interrupted after step \d+/200; checkpoint saved in .*checkpoint — continue with: detox dpo ", last);
        Assert.EndsWith("--resume", last);
        var state = StrictJson.ParseFileObject(Path.Combine(outDir, "checkpoint", "trainer_state.json"), "state");
        int step = state["step"]!.GetValue<int>();
        Assert.InRange(step, 1, 199);
        Assert.False(Directory.Exists(Path.Combine(outDir, "final")));

        // the printed command continues the run to the same final weights as the uninterrupted one
        var command = last[(last.IndexOf("continue with: detox ", StringComparison.Ordinal) + "continue with: detox ".Length)..].Split(' ');
        var resumed = Child(command);
        Assert.True(resumed.Code == 0, resumed.Err);
        Assert.Equal(File.ReadAllBytes(Path.Combine(root, "full", "final", "model.safetensors")),
            File.ReadAllBytes(Path.Combine(outDir, "final", "model.safetensors")));
    }
}
