using System.CommandLine;
using DetoxSharp.Data;
using DetoxSharp.Training;

namespace DetoxSharp.Cli.Commands;

/// <summary>`detox make-pairs`: preference pairs (or ADPO triples) from prompts.</summary>
public static class MakePairsCommand
{
    public static Command Create()
    {
        var model = CommonOptions.Model(description: "starting model (chosen = its greedy continuation)");
        var prompts = new Option<string>("--prompts") { Description = "JSONL with a 'prompt' field per line, or a .txt file with one prompt per line", Required = true };
        var output = new Option<string>("--out") { Description = "output JSONL (prompt, chosen, rejected[, toxic], source)", Required = true };
        var toxic = new Option<string?>("--toxic-model") { Description = "built-in toxic model (rejected = its greedy reply after prompt + [TOXIC], unless steering is used)" };
        var vec = new Option<string?>("--steer-vector") { Description = "safetensors file with the steering direction (rejected = the starting model steered)" };
        var key = new Option<string?>("--steer-key") { Description = "tensor name inside --steer-vector (optional if it holds one tensor)" };
        var scale = new Option<double>("--steer-scale") { Description = "α, multiple of the direction added", DefaultValueFactory = _ => 10.0 };
        var layer = new Option<int?>("--steer-layer") { Description = "block whose output is steered (default: the middle block)" };
        var hook = new Option<string>("--steer-hook") { Description = "resid_post or mlp_out", DefaultValueFactory = _ => "resid_post" };
        var triples = new Option<bool>("--triples") { Description = "ADPO triples: also record a toxic response y_t sampled from --toxic-model" };
        var maxNew = new Option<int>("--max-new-tokens") { Description = "tokens per continuation", DefaultValueFactory = _ => 20 };
        var maxPrompt = new Option<int>("--max-prompt-tokens") { Description = "prompt limit (cut from the left)", DefaultValueFactory = _ => 64 };
        var limit = new Option<int?>("--limit") { Description = "use only the first N prompts" };
        var seed = new Option<long>("--seed") { Description = "seed for sampling y_t", DefaultValueFactory = _ => 42 };
        var device = CommonOptions.Device();
        var dtype = CommonOptions.DType();
        var pickle = CommonOptions.AllowPickle();
        var cmd = new Command("make-pairs", "Make preference pairs (or ADPO triples): chosen = greedy continuation of the starting model, rejected = toxic continuation from the toxic model or activation steering.")
            { model, prompts, output, toxic, vec, key, scale, layer, hook, triples, maxNew, maxPrompt, limit, seed, device, dtype, pickle };
        cmd.SetAction(p =>
        {
            var err = p.InvocationConfiguration.Error;
            var path = p.GetValue(prompts)!;
            List<string> list;
            if (path.EndsWith(".txt", StringComparison.OrdinalIgnoreCase))
            {
                if (!File.Exists(path)) throw new InvalidInputException($"{path}: file not found");
                list = File.ReadAllLines(path).Where(l => l.Trim().Length > 0).ToList();
            }
            else list = JsonlReader.Read(path).Select(l => l.String("prompt")).ToList();
            if (p.GetValue(limit) is int n) list = list.Take(n).ToList();
            if (list.Count == 0) throw new InvalidInputException($"{path}: no prompts");
            string dev = p.GetValue(device)!, dt = p.GetValue(dtype)!;
            bool pk = p.GetValue(pickle);
            using var m = CommonOptions.LoadModel(p.GetValue(model)!, dev, dt, pk);
            using var tox = p.GetValue(toxic) is string t ? CommonOptions.LoadModel(t, dev, dt, pk) : null;
            SteeringOptions? steer = p.GetValue(vec) is string v
                ? new SteeringOptions(v, p.GetValue(key), p.GetValue(scale), p.GetValue(layer) ?? m.Model.NumLayers / 2, p.GetValue(hook)!)
                : null;
            if (steer is not null && (steer.Layer < 0 || steer.Layer >= m.Model.NumLayers)) throw new InvalidInputException($"--steer-layer {steer.Layer}: model has {m.Model.NumLayers} blocks");
            var records = PairMaker.Make(m.Model, m.Tokenizer, list, new PairMakerOptions { MaxNewTokens = p.GetValue(maxNew), MaxPromptTokens = p.GetValue(maxPrompt), Seed = p.GetValue(seed) },
                tox?.Model, tox?.Tokenizer, steer, p.GetValue(triples),
                progress: (done, total) => err.WriteLine($"[{done}/{total}] prompts"), warn: w => err.WriteLine("detox: warning: " + w));
            JsonlReader.Write(p.GetValue(output)!, records);
            p.InvocationConfiguration.Output.WriteLine($"wrote {records.Count} {(p.GetValue(triples) ? "triples" : "pairs")} to {p.GetValue(output)}");
            return 0;
        });
        return cmd;
    }
}
