using System.CommandLine;
using System.Globalization;
using System.Text.Json;
using System.Text.Json.Nodes;
using DetoxSharp.Data;
using DetoxSharp.Models;
using TorchSharp;
using static TorchSharp.torch;

namespace DetoxSharp.Cli.Commands;

public static class ScoreCommand
{
    public static Command Create()
    {
        var model = CommonOptions.Model();
        var text = new Option<string>("--text") { Description = "text to score", Required = true };
        var json = new Option<bool>("--json") { Description = "print one JSON object on stdout (non-finite log-probs, from NaN/Inf weights, are null and \"finite\" is false)" };
        var device = CommonOptions.Device();
        var dtype = CommonOptions.DType();
        var pickle = CommonOptions.AllowPickle();
        var cmd = new Command("score", "Per-token log-probabilities of a text (the first token has no context, so no log-prob), total and perplexity.")
            { model, text, json, device, dtype, pickle };
        cmd.SetAction(p =>
        {
            using var m = CommonOptions.LoadModel(p.GetValue(model)!, p.GetValue(device)!, p.GetValue(dtype)!, p.GetValue(pickle));
            var ids = m.Tokenizer.Encode(p.GetValue(text)!);
            if (ids.Length == 0) throw new InvalidInputException("--text: empty text has no tokens to score");
            if (ids.Length > m.Model.MaxPositions) throw new InvalidInputException($"--text: {ids.Length} tokens exceed the model's context of {m.Model.MaxPositions}");
            double[] lp;
            using (var scope = torch.NewDisposeScope())
            using (torch.no_grad())
            {
                var t = torch.tensor(ids.Select(i => (long)i).ToArray(), [1, ids.Length], ScalarType.Int64, m.Model.Device);
                lp = ids.Length > 1 ? LogProbs.OfTokens(m.Model, t).to(ScalarType.Float64).cpu().data<double>().ToArray() : [];
            }
            double total = lp.Sum();
            double ppl = lp.Length > 0 ? Math.Exp(-total / lp.Length) : double.NaN;
            var tokens = new JsonArray();
            for (int i = 0; i < ids.Length; i++)
                tokens.Add(new JsonObject
                {
                    ["id"] = ids[i],
                    ["text"] = m.Tokenizer.TokenText(ids[i]),
                    ["logprob"] = i == 0 ? null : StrictJson.Number(lp[i - 1]),
                });
            var o = p.InvocationConfiguration.Output;
            if (p.GetValue(json))
            {
                var r = new JsonObject
                {
                    ["tokens"] = tokens,
                    ["total_logprob"] = StrictJson.Number(total),
                    ["perplexity"] = lp.Length > 0 ? StrictJson.Number(ppl) : null,
                    // JSON has no NaN/Infinity: such values (a model with non-finite weights) are null, and this says so
                    ["finite"] = lp.All(double.IsFinite),
                };
                o.WriteLine(r.ToJsonString());
            }
            else
            {
                for (int i = 0; i < ids.Length; i++)
                    o.WriteLine($"{ids[i],8}  {(i == 0 ? "-" : lp[i - 1].ToString("F4", CultureInfo.InvariantCulture)),10}  {JsonSerializer.Serialize(m.Tokenizer.TokenText(ids[i]))}");
                o.WriteLine(string.Create(CultureInfo.InvariantCulture, $"total_logprob {total:F4}  perplexity {ppl:F3}  ({lp.Length} scored tokens)"));
            }
            return 0;
        });
        return cmd;
    }
}
