// A console app that uses DetoxSharp only through its NuGet package (scripts/check-packages.sh builds it in a temporary
// folder outside the repository): create a tiny GPT-2, run a forward pass, save it as a Hugging Face checkpoint, load it
// back and check that the loaded model gives the same logits. Exit code 1 on any mismatch.
using DetoxSharp.Checkpoints;
using DetoxSharp.Models;
using DetoxSharp.Text;
using TorchSharp;

var dir = args.Length > 0 ? args[0] : Path.Combine(Path.GetTempPath(), "detox-consumer-model");
torch.manual_seed(1);
var tokenizer = Gpt2Tokenizer.Default();
using var model = new Gpt2Model(new Gpt2Config { NLayer = 2, NHead = 2, NEmbd = 32, NPositions = 64 });
var ids = tokenizer.Encode("The toy world is a quiet place.");
using var input = torch.tensor(ids, dtype: torch.int64).unsqueeze(0);
using var logits = model.Forward(input);
long[] want = [1, ids.Length, tokenizer.VocabSize];
if (!logits.shape.SequenceEqual(want) || !logits.isfinite().all().item<bool>())
{
    Console.Error.WriteLine($"consumer: unexpected logits shape [{string.Join(", ", logits.shape)}] or non-finite values");
    return 1;
}
HfCheckpoint.Save(model, tokenizer, dir, overwrite: true);
using var loaded = HfCheckpoint.Load(dir);
using var again = loaded.Model.Forward(input);
double diff = (again - logits).abs().max().item<float>();
Console.WriteLine($"consumer: {loaded.Model.Family}, logits [{string.Join(", ", logits.shape)}], saved to {dir}, max |Δlogit| after reload = {diff:G3}");
return diff <= 1e-5 ? 0 : 1;
