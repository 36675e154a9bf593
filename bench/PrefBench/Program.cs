// Pairs/s of PreferenceTrainer with and without the reference log-prob cache.
using DetoxSharp.Data; using DetoxSharp.Models; using DetoxSharp.Text; using DetoxSharp.Training; using TorchSharp;
var which = args[0]; int steps = int.Parse(args[1]);
var cfg = which == "124m" ? Gpt2Config.Small : new Gpt2Config { NEmbd = 64, NLayer = 2, NHead = 2, NPositions = 256 };
var tok = Gpt2Tokenizer.Default();
var rnd = new Random(1);
string W() => string.Join(" ", Enumerable.Range(0, 30).Select(_ => tok.TokenText(rnd.Next(300, 20000)).Trim()));
var data = Enumerable.Range(0, 4 * steps + 8).Select(i => new PreferenceExample(W(), " " + W(), " " + W(), null, $"b:{i}")).ToList();
torch.set_num_threads(2);
foreach (var cache in new[] { true, false })
{
    torch.manual_seed(1);
    using var m = new Gpt2Model(cfg);
    var dir = Path.Combine(Path.GetTempPath(), "prefbench-" + which + (cache ? "-c" : "-n"));
    if (Directory.Exists(dir)) Directory.Delete(dir, true);
    var o = new PreferenceTrainerOptions { BatchSize = 4, Validation = 4, MaxSteps = steps, WarmupSteps = 2, CacheReference = cache, EvalEvery = 0 };
    var sw = System.Diagnostics.Stopwatch.StartNew();
    var r = PreferenceTrainer.Train(m, tok, data, dir, o);
    Console.WriteLine($"{which} cache={cache} steps={r.Steps} train-loop pairs/s={r.PairsPerSecond:F2} wall={sw.Elapsed.TotalSeconds:F1}s (incl. precompute+saves) hit={r.ReferenceCacheHit}");
    if (cache) { torch.manual_seed(1); using var m2 = new Gpt2Model(cfg); var sw2 = System.Diagnostics.Stopwatch.StartNew(); var r2 = PreferenceTrainer.Train(m2, tok, data, dir, o); Console.WriteLine($"{which} cache rerun hit={r2.ReferenceCacheHit} pairs/s={r2.PairsPerSecond:F2} wall={sw2.Elapsed.TotalSeconds:F1}s"); }
}
