using System.Text.Json.Nodes;
using DetoxSharp.Checkpoints;
using DetoxSharp.Text;
using TorchSharp;
using static TorchSharp.torch;

namespace DetoxSharp.Tests.Core;

public class ScoreCliTests
{
    [Fact]
    public void ScoreJsonMatchesIndependentLogSoftmax()
    {
        var tok = Gpt2Tokenizer.Default().Compact(["Hello world, this is a test.", "another line of text"]);
        using var m = CoreTestUtil.Tiny(vocab: tok.VocabSize, d: 16, heads: 2, positions: 32, std: 0.2);
        var dir = Path.Combine(CoreTestUtil.TempDir("score"), "model");
        HfCheckpoint.Save(m, tok, dir, KeyConvention.Transformers);

        const string text = "Hello world, this is a test.";
        var o = new StringWriter();
        var e = new StringWriter();
        int rc = DetoxSharp.Cli.DetoxCli.Run(["score", "--model", dir, "--text", text, "--json"], o, e);
        Assert.True(rc == 0, e.ToString());
        var lines = o.ToString().Trim().Split('\n');
        Assert.Single(lines);
        var json = JsonNode.Parse(lines[0])!.AsObject();
        var tokens = json["tokens"]!.AsArray();
        var ids = tok.Encode(text);
        Assert.Equal(8, ids.Length);
        Assert.Equal(ids, tokens.Select(t => t!["id"]!.GetValue<int>()));
        Assert.Equal(text, string.Concat(tokens.Select(t => t!["text"]!.GetValue<string>())));
        Assert.Null(tokens[0]!["logprob"]);

        // independent: logits from the model in float64, log-softmax by hand
        double[] logits;
        using (torch.no_grad())
        using (var x = m.Forward(torch.tensor(ids.Select(i => (long)i).ToArray(), [1, ids.Length], ScalarType.Int64)))
            logits = x.to(ScalarType.Float64).data<double>().ToArray();
        int V = tok.VocabSize;
        var expected = new double[ids.Length - 1];
        for (int t = 1; t < ids.Length; t++)
        {
            var row = logits.Skip((t - 1) * V).Take(V).ToArray();
            double mx = row.Max();
            double lse = mx + Math.Log(row.Sum(v => Math.Exp(v - mx)));
            expected[t - 1] = row[ids[t]] - lse;
        }
        for (int t = 1; t < ids.Length; t++)
            Assert.True(Math.Abs(tokens[t]!["logprob"]!.GetValue<double>() - expected[t - 1]) < 1e-4, $"token {t}");
        double total = json["total_logprob"]!.GetValue<double>();
        Assert.Equal(expected.Sum(), total, 1e-3);
        Assert.Equal(Math.Exp(-expected.Average()), json["perplexity"]!.GetValue<double>(), 1e-3 * Math.Exp(-expected.Average()));
        Assert.True(expected.Average() < -0.5); // a random model: far from certain, so the check has teeth

        // info runs and names the architecture
        var io = new StringWriter();
        Assert.Equal(0, DetoxSharp.Cli.DetoxCli.Run(["info", "--model", dir], io, e));
        Assert.Contains("gpt2", io.ToString());

        // generate --json: one JSON object
        var go = new StringWriter();
        Assert.Equal(0, DetoxSharp.Cli.DetoxCli.Run(["generate", "--model", dir, "--prompt", "Hello world", "--max-new-tokens", "5", "--greedy", "--json"], go, e));
        Assert.NotNull(JsonNode.Parse(go.ToString().Trim()));
    }
}
