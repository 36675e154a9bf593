using System.Diagnostics;
using DetoxSharp.Models;
using DetoxSharp.Text;
using TorchSharp;
using static TorchSharp.torch;

/// <summary>
/// The forward and backward of a DPO step's scoring (<see cref="LogProbs.SharedPromptSums"/> of 4 pairs: each prompt with
/// its chosen and rejected completion side by side in one row) on one config's bf16 weights, with the padded batch's blocks run on its real tokens
/// (<see cref="TokenPacking.Always"/>) and on every position (<see cref="TokenPacking.Never"/>). The pairs are the DPO
/// bench's (<see cref="PreferenceBench"/>: 30 random words per prompt and completion, ≈ 8 % of the block rows padding at
/// batch 4); each batch runs both ways back to back, in alternating order, and the figure is the median of the
/// per-batch ratios. Checks that both give the same summed log-probs within bf16 rounding. With <c>llama</c> the model is
/// Llama-shaped at the config's width, depth and heads (grouped-query attention with half as many key/value heads, a
/// SwiGLU MLP of ≈ 8/3 of the width, untied head).
/// </summary>
static class PackingBench
{
    public static IEnumerable<string> Run(Gpt2Config cfg, int rounds, int batches, bool llama = false)
    {
        var tok = Gpt2Tokenizer.Default();
        var data = PreferenceBench.Pairs(tok, 4 * batches).Chunk(4).Select(ex =>
        {
            var enc = ex.Select(e => (P: tok.Encode(e.Prompt), C: tok.Encode(e.Chosen), R: tok.Encode(e.Rejected))).ToList();
            return (Prompts: enc.Select(e => e.P).ToList(), Rows: enc.Select((e, i) => (i, e.C)).Concat(enc.Select((e, i) => (i, e.R))).ToList());
        }).ToList();
        long real = data.Sum(d => d.Prompts.Sum(p => (long)p.Length) + d.Rows.Sum(r => (long)r.Item2.Length));
        long padded = data.Sum(d => 4L * d.Prompts.Max(p => p.Length) + 8L * d.Rows.Max(r => r.Item2.Length));
        yield return $"{batches} batches of 4 pairs: {real} real block rows of {padded} ({100.0 * (padded - real) / padded:F1} % padding)";
        torch.manual_seed(1);
        using ICausalLM m = llama
            ? new LlamaModel(new LlamaConfig
            {
                ModelType = "llama", VocabSize = Math.Max(cfg.VocabSize, 50257), HiddenSize = cfg.NEmbd, IntermediateSize = (cfg.NEmbd * 8 / 3 + 63) / 64 * 64,
                NumHiddenLayers = cfg.NLayer, NumAttentionHeads = cfg.NHead, NumKeyValueHeads = Math.Max(1, cfg.NHead / 2),
                MaxPositionEmbeddings = cfg.NPositions, EosTokenIds = [50256], BosTokenId = 50256,
            })
            : new Gpt2Model(cfg with { VocabSize = Math.Max(cfg.VocabSize, 50257), EosTokenId = 50256, BosTokenId = 50256 });
        m.Module.to(ScalarType.BFloat16);
        var ps = m.Module.parameters().Cast<Tensor>().ToList();
        yield return $"{m.Family}, {ps.Sum(p => p.numel()) / 1e6:F0} M parameters";
        (double Ms, double[] Sums) Step(TokenPacking p, int i)
        {
            if (m is Gpt2Model g) g.Packing = p; else ((LlamaModel)m).Packing = p;
            using var s = torch.NewDisposeScope();
            var sw = Stopwatch.StartNew();
            var y = LogProbs.SharedPromptSums(m, data[i].Prompts, data[i].Rows, 50256);
            torch.autograd.grad([y.sum()], ps);
            double ms = sw.Elapsed.TotalMilliseconds;
            return (ms, y.to(ScalarType.Float64).data<double>().ToArray());
        }
        Step(TokenPacking.Never, 0); Step(TokenPacking.Always, 0); // warm-up
        var padT = new List<double>(); var packT = new List<double>(); var ratios = new List<double>();
        double maxRel = 0;
        for (int r = 0; r < rounds; r++)
            for (int i = 0; i < batches; i++)
            {
                bool packFirst = (i + r) % 2 == 1;
                var first = Step(packFirst ? TokenPacking.Always : TokenPacking.Never, i);
                var second = Step(packFirst ? TokenPacking.Never : TokenPacking.Always, i);
                var (pad, pack) = packFirst ? (second, first) : (first, second);
                padT.Add(pad.Ms); packT.Add(pack.Ms); ratios.Add(pack.Ms / pad.Ms);
                maxRel = Math.Max(maxRel, pad.Sums.Zip(pack.Sums, (x, y) => Math.Abs(x - y) / Math.Max(1, Math.Abs(x))).Max());
                yield return $"round {r + 1} batch {i + 1}: padded {pad.Ms:F0} ms, packed {pack.Ms:F0} ms ({pack.Ms / pad.Ms:F3})";
            }
        static double Median(List<double> x) { var o = x.Order().ToList(); return o[o.Count / 2]; }
        yield return $"forward + backward: padded median {Median(padT):F0} ms, packed median {Median(packT):F0} ms; packed ÷ padded per batch: median {Median(ratios):F3} (min {ratios.Min():F3}, max {ratios.Max():F3}) over {ratios.Count} batches";
        yield return $"summed log-probs, packed vs padded: max relative difference {maxRel:E2} (bf16 rounding)";
    }
}
