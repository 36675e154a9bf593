using System.Text.Json.Nodes;
using DetoxSharp.Checkpoints;
using DetoxSharp.Interpretability;
using DetoxSharp.Models;
using DetoxSharp.Text;
using TorchSharp;
using static TorchSharp.torch;

namespace DetoxSharp.Tests.Interpretability;

public class InterpretabilityTests
{
    static Gpt2Model Tiny(int seed = 1, int layers = 2, int d = 32)
    {
        torch.manual_seed(seed);
        var m = new Gpt2Model(new Gpt2Config { NEmbd = d, NLayer = layers, NHead = 2, NPositions = 64 });
        m.eval();
        return m;
    }

    static Tensor Param(ICausalLM m, string name) => m.Module.named_parameters().First(p => p.name == name).parameter;

    static string TempDir(string name)
    {
        var dir = Path.Combine(Path.GetTempPath(), "detox-interp-tests", name + "-" + Guid.NewGuid().ToString("N")[..8]);
        Directory.CreateDirectory(dir);
        return dir;
    }

    [Fact]
    public void ProbeSeparatesLinearlySeparableData_AndIsAtChanceOnRandomLabels()
    {
        var rng = new Random(3);
        int n = 600, d = 16;
        var x = new float[n * d];
        for (int i = 0; i < x.Length; i++) x[i] = (float)(rng.NextDouble() * 2 - 1) * 5;
        var wStar = Enumerable.Range(0, d).Select(_ => rng.NextDouble() - 0.5).ToArray();
        var y = new bool[n];
        for (int i = 0; i < n; i++) y[i] = Enumerable.Range(0, d).Sum(j => x[i * d + j] * wStar[j]) > 0;
        using var X = torch.tensor(x, [n, d]);
        using var xTr = X.narrow(0, 0, 500);
        using var xVal = X.narrow(0, 500, 100);
        var (probe, _) = ToxicityProbe.Fit(xTr, y[..500], steps: 400, learningRate: 0.05);
        using (probe)
        {
            Assert.True(probe.Accuracy(xVal, y[500..]) >= 0.95, $"val acc {probe.Accuracy(xVal, y[500..])}");
            using var wt = probe.WToxic;
            var w = wt.data<float>().ToArray();
            double cos = w.Zip(wStar, (a, b) => a * b).Sum() / Math.Sqrt(w.Sum(a => a * a) * wStar.Sum(b => b * b));
            Assert.True(cos > 0.9, $"W_Toxic vs true direction cos {cos}");
            // zero start + softmax: the two columns stay opposite
            var W = probe.W.data<float>().ToArray();
            for (int j = 0; j < d; j++) Assert.Equal(-W[2 * j], W[2 * j + 1], 4);
        }
        var yRand = Enumerable.Range(0, n).Select(_ => rng.Next(2) == 1).ToArray();
        var (p2, _) = ToxicityProbe.Fit(xTr, yRand[..500], steps: 400, learningRate: 0.05);
        using (p2)
        {
            double acc = p2.Accuracy(xVal, yRand[500..]);
            Assert.InRange(acc, 0.35, 0.65);
        }
    }

    [Fact]
    public void RankingOrdersByCosine_KeepsTopPerLayer()
    {
        using var l0 = torch.tensor(new float[] { 1, 0, 0, /**/ 1, 1, 0, /**/ 0, 1, 0, /**/ -1, 0, 0 }, [4, 3]);
        using var l1 = torch.tensor(new float[] { 0, 0, 5, /**/ 2, 0.1f, 0, /**/ 3, 0, 4 }, [3, 3]);
        using var dir = torch.tensor(new float[] { 2, 0, 0 });
        var r = ToxicVectors.Rank([l0, l1], dir, perLayer: 2);
        Assert.Equal([(0, 0), (1, 1), (0, 1), (1, 2)], r.Select(v => (v.Layer, v.Neuron)).ToArray());
        Assert.Equal(1.0, r[0].Cosine, 5);
        Assert.Equal(2 / Math.Sqrt(4 + 0.01), r[1].Cosine, 5);
        Assert.Equal(1 / Math.Sqrt(2), r[2].Cosine, 5);
        Assert.Equal(0.6, r[3].Cosine, 5);
        Assert.Equal(Math.Sqrt(2), r[2].Norm, 5);
    }

    [Fact]
    public void SvdRecoversSharedDirectionUpToSign()
    {
        var rng = new Random(5);
        int d = 12, n = 40;
        var u = Enumerable.Range(0, d).Select(_ => rng.NextDouble() - 0.5).ToArray();
        double un = Math.Sqrt(u.Sum(a => a * a));
        u = u.Select(a => a / un).ToArray();
        var rows = new float[n * d];
        for (int i = 0; i < n; i++)
        {
            double s = (i % 2 == 0 ? 1 : -1) * (1 + 3 * rng.NextDouble());
            for (int j = 0; j < d; j++) rows[i * d + j] = (float)(s * u[j] + 0.05 * (rng.NextDouble() - 0.5));
        }
        using var v = torch.tensor(rows, [n, d]);
        var (U, S) = ToxicVectors.Svd(v);
        using (U) using (S)
        {
            Assert.Equal([d, Math.Min(d, n)], U.shape);
            var u0 = U.select(1, 0).data<float>().ToArray();
            double cos = Math.Abs(u0.Zip(u, (a, b) => a * b).Sum());
            Assert.True(cos > 0.999, $"|cos(U0, u)| = {cos}");
            // rows are unit-normalised first: the top singular value is ≈ sqrt(n)
            Assert.Equal(Math.Sqrt(n), S[0].item<float>(), 1);
        }
        // exact case: all vectors ±c·u → U[0] = ±u, S[0] = sqrt(n), S[1] = 0
        var exact = new float[n * d];
        for (int i = 0; i < n; i++) for (int j = 0; j < d; j++) exact[i * d + j] = (float)((i + 1) * (i % 3 == 0 ? -1 : 1) * u[j]);
        using var ve = torch.tensor(exact, [n, d]);
        var (U2, S2) = ToxicVectors.Svd(ve);
        using (U2) using (S2)
        {
            Assert.Equal(1.0, Math.Abs(U2.select(1, 0).data<float>().ToArray().Zip(u, (a, b) => a * b).Sum()), 5);
            Assert.Equal(Math.Sqrt(n), S2[0].item<float>(), 4);
            Assert.True(S2[1].item<float>() < 1e-4);
        }
    }

    [Fact]
    public void TopTokensAreArgmaxOfUnembeddingProjection()
    {
        using var unemb = torch.tensor(new float[] { 1, 0, /**/ 0, 1, /**/ 1, 1, /**/ -1, 0 }, [4, 2]);
        using var v = torch.tensor(new float[] { 2, 1 });
        var t = ToxicVectors.TopTokens(unemb, v, null, 3);
        Assert.Equal([2, 0, 1], t.Select(x => x.Id).ToArray());
        Assert.Equal(3.0, t[0].Score, 5);
    }

    [Fact]
    public void SubtractAllPositions_EqualsShiftingTheMlpOutputBias()
    {
        using var model = Tiny();
        using var edited = (Gpt2Model)model.Clone();
        torch.manual_seed(9);
        using var v = torch.randn(32);
        double alpha = 3.0;
        using (torch.no_grad()) Param(edited, "h.0.mlp.c_proj.bias").sub_(v * alpha);
        using var ids = torch.tensor(new long[] { 5, 17, 300, 2, 99, 1000, 7, 8, 9, 10, 11, 12 }, [2, 6]);
        var edit = VectorIntervention.Subtract("t", v, alpha, layer: 0, mode: InterventionMode.AllPositions);
        Tensor hooked, manual, plain;
        using (torch.no_grad())
        {
            plain = model.Forward(ids);
            using (edit.Apply(model)) hooked = model.Forward(ids);
            manual = edited.Forward(ids);
            var again = model.Forward(ids); // hook removed
            Assert.True(again.allclose(plain, 0, 0));
        }
        Assert.True(hooked.allclose(manual, 1e-5, 1e-4), $"max diff {(hooked - manual).abs().max().item<float>()}");
        Assert.False(hooked.allclose(plain, 1e-3, 1e-3));
    }

    [Fact]
    public void SubtractNewestPosition_ChangesOnlyTheLastPosition()
    {
        using var model = Tiny();
        using var edited = (Gpt2Model)model.Clone();
        torch.manual_seed(10);
        using var v = torch.randn(32);
        double alpha = 2.0;
        int last = model.NumLayers - 1;
        using (torch.no_grad()) Param(edited, $"h.{last}.mlp.c_proj.bias").sub_(v * alpha);
        using var ids = torch.tensor(new long[] { 5, 17, 300, 2, 99, 1000, 7, 8, 9, 10, 11, 12 }, [2, 6]);
        var edit = VectorIntervention.Subtract("t", v, alpha); // default: last layer, newest position
        using (torch.no_grad())
        {
            var plain = model.Forward(ids);
            Tensor hooked;
            using (edit.Apply(model)) hooked = model.Forward(ids);
            var manual = edited.Forward(ids);
            // positions 0..4 unchanged, position 5 equals the manual (bias-shifted) model there
            Assert.True(hooked.narrow(1, 0, 5).allclose(plain.narrow(1, 0, 5), 0, 0));
            Assert.True(hooked.narrow(1, 5, 1).allclose(manual.narrow(1, 5, 1), 1e-5, 1e-4));
            Assert.False(hooked.narrow(1, 5, 1).allclose(plain.narrow(1, 5, 1), 1e-3, 1e-3));

            // with a KV cache: a one-token call is changed at its only position
            using var cache = model.NewCache(16);
            model.Forward(ids.narrow(1, 0, 5), null, cache);
            Tensor step;
            using (edit.Apply(model)) step = model.Forward(ids.narrow(1, 5, 1), null, cache);
            Assert.True(step.allclose(manual.narrow(1, 5, 1), 1e-4, 1e-4));
        }
    }

    [Fact]
    public void SpecParsing()
    {
        var dir = TempDir("spec");
        using var w = torch.tensor(Enumerable.Range(0, 32).Select(i => (float)i).ToArray(), [32, 1]);
        using var probe = new ToxicityProbe(torch.cat([-w, w], 1), torch.zeros(2));
        probe.Save(dir);
        var e = InterventionSpecs.Parse("subtract:probe@50:mode=all", new InterventionContext(ProbeDirectory: dir));
        Assert.Equal(-50, e.Coefficient);
        Assert.Equal(InterventionMode.AllPositions, e.Mode);
        Assert.Null(e.Layer);
        Assert.Equal(31f, e.Vector[31].item<float>());
        using var model = Tiny();
        var e2 = InterventionSpecs.Parse("add:L1.N3@2:layer=0", new InterventionContext(Model: model));
        Assert.Equal(2, e2.Coefficient);
        Assert.Equal(0, e2.Layer);
        Assert.True(e2.Vector.allclose(model.MlpValues(1)[3]));
        Assert.Throws<InvalidInputException>(() => InterventionSpecs.Parse("subtract:probe", new InterventionContext(ProbeDirectory: dir)));
        Assert.Throws<InvalidInputException>(() => InterventionSpecs.Parse("multiply:probe@2", new InterventionContext(ProbeDirectory: dir)));
        Assert.Throws<InvalidInputException>(() => InterventionSpecs.Parse("subtract:v0@2", new InterventionContext()));
        // the perplexity pass of `detox eval` switches a vector edit to all positions, keeping its coefficient
        var e4 = (VectorIntervention)((IPositionModeEdit)e).ForAllPositions();
        Assert.Equal(InterventionMode.AllPositions, e4.Mode);
        Assert.Equal(e.Coefficient, e4.Coefficient);
        Assert.True(e4.Vector.allclose(e.Vector));
    }

    [Fact]
    public void UnalignScalesExactlyTheChosenKeyColumns()
    {
        using var model = Tiny(seed: 4);
        using var original = (Gpt2Model)model.Clone();
        torch.manual_seed(11);
        using var dir = torch.randn(32);
        int k = 5;
        var chosen = Unalign.ScaleToxicKeys(model, dir, new UnalignOptions { Keys = k, Scale = 10 });
        Assert.Equal(k, chosen.Count);
        // independent ranking: brute-force cosines
        var d = dir.data<float>().ToArray();
        var all = new List<(double Cos, int L, int N)>();
        for (int l = 0; l < original.NumLayers; l++)
        {
            var vals = original.MlpValues(l).data<float>().ToArray();
            for (int i = 0; i < original.MlpDim; i++)
            {
                double dot = 0, nv = 0, nd = 0;
                for (int j = 0; j < 32; j++) { dot += vals[i * 32 + j] * d[j]; nv += vals[i * 32 + j] * vals[i * 32 + j]; nd += d[j] * d[j]; }
                all.Add((dot / Math.Sqrt(nv * nd), l, i));
            }
        }
        var expected = all.OrderByDescending(a => a.Cos).Take(k).Select(a => (a.L, a.N)).ToHashSet();
        Assert.Equal(expected, chosen.Select(c => (c.Layer, c.Neuron)).ToHashSet());
        var before = original.Module.named_parameters().ToDictionary(p => p.name, p => p.parameter);
        foreach (var (name, after) in model.Module.named_parameters())
        {
            var b = before[name];
            int? layer = Enumerable.Range(0, model.NumLayers).Cast<int?>().FirstOrDefault(l => model.MlpKeysParameterName(l!.Value) == name);
            if (layer is null) { Assert.True(after.eq(b).all().item<bool>(), name); continue; }
            for (int i = 0; i < model.MlpDim; i++)
            {
                var ca = after.select(1, i); var cb = b.select(1, i);
                if (expected.Contains((layer.Value, i))) Assert.True(ca.allclose(cb * 10, 1e-6, 1e-6), $"{name}[:, {i}] not ×10");
                else Assert.True(ca.eq(cb).all().item<bool>(), $"{name}[:, {i}] changed");
            }
        }
    }

    [Fact]
    public void ActivationCacheHelpers()
    {
        using var x = torch.tensor(new float[] { 1, 2, 3, 4, /**/ 10, 20, 30, 40 }, [2, 4, 1]);
        using var mask = torch.tensor(new long[] { 0, 1, 1, 1, /**/ 1, 1, 0, 0 }, [2, 4]);
        var mean = ActivationCache.MeanOverReal(x, mask).data<float>().ToArray();
        Assert.Equal([3f, 15f], mean);
        var last = ActivationCache.AtLastReal(x, mask).data<float>().ToArray();
        Assert.Equal([4f, 20f], last);
        // padding does not change the probe feature of a sequence
        using var model = Tiny();
        var tok = Gpt2Tokenizer.Default();
        using var f1 = ToxicityProbe.Features(model, tok, ["hello there friend", "a much longer sentence than the first one is"], 32, 2);
        using var f2 = ToxicityProbe.Features(model, tok, ["hello there friend"], 32, 1);
        Assert.True(f1[0].allclose(f2[0], 1e-4, 1e-4));
    }

    [Fact]
    public void DiffOfIdenticalModels_IsNeutral_AndLogitLensMatchesOutput()
    {
        using var model = Tiny(seed: 6);
        using var same = (Gpt2Model)model.Clone();
        var tok = Gpt2Tokenizer.Default();
        torch.manual_seed(12);
        using var probe = new ToxicityProbe(torch.randn(32, 2), torch.zeros(2));
        var prompts = new[] { "The weather today is", "You are such a", "I think that" };
        var outDir = TempDir("diff");
        var opts = new DiffOptions { MaxNewTokens = 4, TrackedVectors = 3, BatchSize = 2, LensToken = " the" };
        var r = AlignmentDiff.Run(new(model, same, tok), probe, prompts, opts, outDir);
        Assert.Equal(1.0, r["parameters"]!["min_cosine"]!.GetValue<double>(), 10);
        Assert.Equal(0.0, r["parameters"]!["max_relative_difference"]!.GetValue<double>(), 12);
        foreach (var l in r["layers"]!.AsArray()) Assert.Equal(0.0, l!["delta_x_norm"]!.GetValue<double>(), 10);
        foreach (var a in r["activations"]!.AsArray())
        {
            Assert.Equal(a!["mean_activation_before"]!.GetValue<double>(), a["mean_activation_after"]!.GetValue<double>(), 6);
            Assert.Equal(a["last_position_activation_before"]!.GetValue<double>(), a["last_position_activation_after"]!.GetValue<double>(), 6);
        }
        // independent: the model's own probability of " the" at each generation step
        int tokenId = tok.Encode(" the").Single();
        var prIds = prompts.Select(tok.Encode).ToList();
        var conts = DetoxSharp.Generation.Generator.Generate(model, prIds, new DetoxSharp.Generation.GenerationOptions { MaxNewTokens = 4 });
        double sum = 0; int count = 0;
        using (torch.no_grad())
            for (int i = 0; i < prompts.Length; i++)
            {
                var seq = prIds[i].Concat(conts[i]).Select(x => (long)x).ToArray();
                using var ids = torch.tensor(seq, [1, seq.Length]);
                var probs = torch.nn.functional.softmax(model.Forward(ids), 2)[0];
                for (int s = 0; s < Math.Max(1, conts[i].Length); s++) { sum += probs[prIds[i].Length - 1 + s, tokenId].item<float>(); count++; }
            }
        double expected = sum / count;
        var layers = r["layers"]!.AsArray();
        Assert.Equal(expected, layers[^1]!["lens_prob_before"]!.GetValue<double>(), 5);
        Assert.Equal(expected, r["logit_lens"]!["output_prob_before"]!.GetValue<double>(), 5);
        Assert.Equal(count, r["measured_positions"]!.GetValue<long>());
        foreach (var f in new[] { "diff.json", "parameters.csv", "layers.csv", "activations.csv", "projection.csv", "logit_lens.csv" })
            Assert.True(File.Exists(Path.Combine(outDir, f)), f);
    }

    [Fact]
    public void NeuronContributions_SumToTheDropOfTheMlpOutputAlongWToxic()
    {
        using var model = Tiny(seed: 9, layers: 3);
        using var after = (Gpt2Model)model.Clone();
        var tok = Gpt2Tokenizer.Default();
        torch.manual_seed(21);
        using var w = torch.randn(32);
        var prompts = new[] { "You are such a", "The weather today is", "I think that the town" };
        var opts = new NeuronOptions { MaxNewTokens = 4, BatchSize = 2, TopK = [1, 8] };
        // identical models: every contribution is zero
        var same = NeuronContributions.Compute(new(model, after, tok), w, prompts, opts);
        Assert.All(same.Neurons, n => Assert.Equal(0, n.Delta, 12));
        // lower the key biases of the last layer: only that layer's activations change (values and biases do not), so the
        // contributions sum, exactly, to the drop of the mean last-layer MLP output along Ŵ — computed here without padding
        int last = 2;
        using (torch.no_grad()) after.MlpKeyBias(last).sub_(1.5);
        var r = NeuronContributions.Compute(new(model, after, tok), w, prompts, opts);
        Assert.All(r.Neurons.Where(n => n.Layer != last), n => Assert.Equal(0, n.Delta, 10));
        var unit = (w / w.norm()).to(ScalarType.Float64);
        var prIds = prompts.Select(tok.Encode).ToList();
        var conts = DetoxSharp.Generation.Generator.Generate(model, prIds, new DetoxSharp.Generation.GenerationOptions { MaxNewTokens = 4, Greedy = true });
        double drop = 0; int count = 0;
        for (int i = 0; i < prompts.Length; i++)
        {
            var seq = prIds[i].Concat(conts[i].Take(conts[i].Length - 1)).Select(x => (long)x).ToArray();
            using var ids = torch.tensor(seq, [1, seq.Length]);
            using var cb = ActivationCache.Run(model, ids, null, [HookNames.MlpOut(last)]);
            using var ca = ActivationCache.Run(after, ids, null, [HookNames.MlpOut(last)]);
            for (int j = 0; j < conts[i].Length; j++)
            {
                int pos = prIds[i].Length - 1 + j;
                drop += ((cb[HookNames.MlpOut(last)][0, pos] - ca[HookNames.MlpOut(last)][0, pos]).to(ScalarType.Float64).dot(unit)).item<double>();
                count++;
            }
        }
        Assert.Equal(count, r.Positions);
        Assert.Equal(drop / count, r.TotalDrop, 5);
        // groups follow the signs; shares add up to one; the top-k share ranks by cosine with W_Toxic
        Assert.All(r.Neurons, n => Assert.Equal((n.ProjectionBefore > 0 ? "T" : "A") + (n.ActivationBefore > 0 ? "P" : "N"), n.Group));
        Assert.Equal(1.0, NeuronContributions.Groups.Sum(r.GroupShare), 9);
        var best = r.Neurons.MaxBy(n => n.Cosine)!;
        Assert.Equal(best.Delta / r.TotalDrop, r.TopKShare(1), 12);
        var dir = TempDir("neurons");
        var json = NeuronContributions.Write(r, opts, dir);
        Assert.Equal(r.Neurons.Count + 1, File.ReadAllLines(Path.Combine(dir, "neurons.csv")).Length);
        Assert.Equal(r.Neurons.Count(n => n.Delta < 0), json["towards_toxicity"]!["neurons"]!.GetValue<int>());
    }

    [Fact]
    public void NeuronShift_AddsAlignmentsMeanShiftToTheChosenGroupsOnly()
    {
        using var model = Tiny(seed: 10, layers: 2);
        var dir = TempDir("shift");
        var csv = Path.Combine(dir, "neurons.csv");
        File.WriteAllText(csv, "layer,neuron,group,cosine_with_w_toxic,activation_before,activation_after,projection_before,projection_after,delta\n"
            + "0,3,TP,0.5,1.0,0.25,1,1,0.75\n1,7,AN,-0.2,-0.5,-0.25,1,1,0.1\n1,9,TN,0.3,-0.1,-0.4,1,1,0.3\n");
        var edit = NeuronShiftEdit.FromCsv(csv, ["TP", "TN"], scale: 2);
        Assert.Equal(2, edit.Neurons);
        var tok = Gpt2Tokenizer.Default();
        var ids = tok.Encode("You are such a kind").Select(x => (long)x).ToArray();
        using var t = torch.tensor(ids, [1, ids.Length]);
        string[] names = [HookNames.MlpPost(0), HookNames.MlpPost(1)];
        using var plain = ActivationCache.Run(model, t, null, [names[0]]);
        using (edit.Apply(model))
        {
            using var shifted = ActivationCache.Run(model, t, null, [names[0]]);
            var diff = (shifted[names[0]] - plain[names[0]])[0];
            // layer 0: neuron 3 moved by 2 × (0.25 − 1.0) at every position; every other neuron untouched
            Assert.True(diff.select(1, 3).allclose(torch.full(ids.Length, -1.5f), 1e-5, 1e-5));
            Assert.Equal(0, diff.index_select(1, torch.tensor(Enumerable.Range(0, 128).Where(i => i != 3).Select(i => (long)i).ToArray())).abs().max().item<float>(), 6);
        }
        using var after = ActivationCache.Run(model, t, null, [names[0]]);
        Assert.True(after[names[0]].allclose(plain[names[0]]));   // removed with the handle
        Assert.Throws<InvalidInputException>(() => NeuronShiftEdit.FromCsv(csv, ["XX"]));
    }

    [Fact]
    public void AlignmentDepth_IsThePerPositionKlAlongTheAlignedContinuation()
    {
        using var model = Tiny(seed: 11);
        using var aligned = (Gpt2Model)model.Clone();
        var tok = Gpt2Tokenizer.Default();
        var prompts = new[] { "You are such a", "The weather today is" };
        var same = AlignmentDepth.PerPositionKl(new(model, aligned, tok), prompts, maxNewTokens: 4, batchSize: 2);
        Assert.All(same.MeanKl.Where(double.IsFinite), k => Assert.Equal(0, k, 9));
        using (torch.no_grad()) aligned.MlpKeyBias(1).add_(0.7);
        var r = AlignmentDepth.PerPositionKl(new(model, aligned, tok), prompts, maxNewTokens: 4, batchSize: 2);
        // independent: unpadded forwards, KL summed by hand in double
        var prIds = prompts.Select(tok.Encode).ToList();
        var conts = DetoxSharp.Generation.Generator.Generate(aligned, prIds, new DetoxSharp.Generation.GenerationOptions { MaxNewTokens = 4, Greedy = true });
        for (int t = 0; t < 4; t++)
        {
            double sum = 0; int n = 0;
            for (int i = 0; i < prompts.Length; i++)
            {
                if (t >= conts[i].Length) continue;
                var seq = prIds[i].Concat(conts[i].Take(t)).Select(x => (long)x).ToArray();
                using var ids = torch.tensor(seq, [1, seq.Length]);
                using var _ = torch.no_grad();
                var pa = torch.nn.functional.softmax(aligned.Forward(ids)[0, -1].to(ScalarType.Float64), 0).data<double>().ToArray();
                var pb = torch.nn.functional.softmax(model.Forward(ids)[0, -1].to(ScalarType.Float64), 0).data<double>().ToArray();
                sum += pa.Zip(pb, (a, b) => a > 0 ? a * Math.Log(a / b) : 0).Sum(); n++;
            }
            Assert.Equal(n, r.Counts[t]);
            if (n > 0) Assert.Equal(sum / n, r.MeanKl[t], 6);
        }
        Assert.True(r.MeanKl.Where(double.IsFinite).Sum() > 0);
        Assert.InRange(r.ShareOfFirst(3), 0, 1);
    }

    [Fact]
    public void Logistic1D_SatisfiesTheLikelihoodEquations()
    {
        double[] z = [-2, -1, -0.5, 0.3, 1, 2, 2.5, -1.5];
        bool[] y = [false, true, false, true, false, true, true, false];
        var (a, c) = ToxicityProbe.Logistic1D(z, y, ridge: 0);
        // at the maximum likelihood: Σ (y − p) = 0 and Σ (y − p)·z = 0 (independent of how it was found)
        double g0 = 0, g1 = 0;
        for (int i = 0; i < z.Length; i++) { double p = 1 / (1 + Math.Exp(-(a * z[i] + c))); g0 += (y[i] ? 1 : 0) - p; g1 += ((y[i] ? 1 : 0) - p) * z[i]; }
        Assert.Equal(0, g0, 8);
        Assert.Equal(0, g1, 8);
        Assert.True(a > 0);
    }

    [Fact]
    public void MassMeanDirection_IsTheClassMeanDifference_AndSurvivesSaveLoad()
    {
        using var x = torch.tensor(new float[] { 1, 0, /**/ 3, 2, /**/ 0, 1, /**/ 2, 5, /**/ 4, 0 }, [5, 2]);
        bool[] y = [true, true, false, false, false];
        // toxic mean (2, 1), non-toxic mean (2, 2): difference (0, −1), computed by hand
        using var mm = ToxicityProbe.MassMean(x, y);
        Assert.Equal([0f, -1f], mm.data<float>().ToArray());
        using var w = torch.tensor(new float[] { -1, 1, /**/ -2, 2 }, [2, 2]);
        using var probe = new ToxicityProbe(w, torch.zeros(2));
        using (var wt = probe.WToxic) Assert.Equal([1f, 2f], wt.data<float>().ToArray());
        using var mass = probe.WithMassMeanDirection(x, y);
        Assert.Equal(ProbeDirection.MassMean, mass.DirectionKind);
        using (var wt = mass.WToxic) Assert.Equal([0f, -1f], wt.data<float>().ToArray());
        // the classifier is unchanged: same predictions
        Assert.Equal(probe.PredictToxic(x).data<float>().ToArray(), mass.PredictToxic(x).data<float>().ToArray());
        var dir = TempDir("probe-mass");
        mass.Save(dir);
        using var back = ToxicityProbe.Load(dir);
        Assert.Equal(ProbeDirection.MassMean, back.DirectionKind);
        using (var wt = back.WToxic) Assert.Equal([0f, -1f], wt.data<float>().ToArray());
        probe.Save(dir);
        using var back2 = ToxicityProbe.Load(dir);
        Assert.Equal(ProbeDirection.Weights, back2.DirectionKind);
        using (var wt = back2.WToxic) Assert.Equal([1f, 2f], wt.data<float>().ToArray());
        // PPLM's attribute model steers along W_Toxic: its logit difference is a·(x·d̂) + c
        var attr = (DetoxSharp.Generation.IAttributeModel)back;
        var diff = (attr.W.select(1, 1) - attr.W.select(1, 0)).data<float>().ToArray();
        Assert.Equal(0f, diff[0], 6);
        Assert.True(diff[1] < 0); // d̂ = (0, −1) and toxic rows have the smaller second feature: a > 0
        Assert.Same(back2.W, ((DetoxSharp.Generation.IAttributeModel)back2).W);
        Assert.Throws<InvalidInputException>(() => ToxicityProbe.MassMean(x, [true, true, true, true, true]));
        Assert.Equal(ProbeDirection.MassMean, ToxicityProbe.ParseDirection("mass_mean", "direction"));
        Assert.Throws<InvalidSettingException>(() => ToxicityProbe.ParseDirection("pca", "direction"));
    }

    [Fact]
    public void Diff_InsultStepActivation_IsReadWhereTheStartModelEmitsItsFirstToxicToken()
    {
        using var model = Tiny(seed: 8);
        using var after = (Gpt2Model)model.Clone();
        var tok = Gpt2Tokenizer.Default();
        torch.manual_seed(14);
        using var probe = new ToxicityProbe(torch.randn(32, 2), torch.zeros(2));
        var prompts = new[] { "You are such a", "The weather today is", "I think that" };
        var prIds = prompts.Select(tok.Encode).ToList();
        var conts = DetoxSharp.Generation.Generator.Generate(model, prIds, new DetoxSharp.Generation.GenerationOptions { MaxNewTokens = 5, Greedy = true });
        // "toxic" = the third token the model emits after prompt 0 (and whatever else equals it)
        int toxic = conts[0][2];
        var opts = new DiffOptions { MaxNewTokens = 5, TrackedVectors = 2, BatchSize = 2, ToxicTokenIds = new HashSet<int> { toxic } };
        var r = AlignmentDiff.Run(new(model, after, tok), probe, prompts, opts, TempDir("diff-insult"));
        int expectedPrompts = conts.Count(c => c.Contains(toxic));
        Assert.Equal(expectedPrompts, r["insult_step_prompts"]!.GetValue<int>());
        // independent: an unpadded forward of prompt + continuation up to (not including) the first toxic token; the
        // activation at its last position is the one that chose the toxic token
        foreach (var a in r["activations"]!.AsArray())
        {
            int layer = a!["layer"]!.GetValue<int>(), neuron = a["neuron"]!.GetValue<int>();
            double sum = 0;
            for (int i = 0; i < prompts.Length; i++)
            {
                int j = Array.IndexOf(conts[i], toxic);
                if (j < 0) continue;
                var seq = prIds[i].Concat(conts[i].Take(j)).Select(x => (long)x).ToArray();
                using var ids = torch.tensor(seq, [1, seq.Length]);
                using var cache = ActivationCache.Run(model, ids, null, [HookNames.MlpPost(layer)]);
                sum += cache[HookNames.MlpPost(layer)][0, seq.Length - 1, neuron].item<float>();
            }
            Assert.Equal(sum / expectedPrompts, a["insult_step_activation_before"]!.GetValue<double>(), 4);
            Assert.Equal(a["insult_step_activation_before"]!.GetValue<double>(), a["insult_step_activation_after"]!.GetValue<double>(), 6);
        }
        // without a toxic list there is no insult step
        var r2 = AlignmentDiff.Run(new(model, after, tok), probe, prompts, opts with { ToxicTokenIds = null }, TempDir("diff-insult2"));
        Assert.Equal(0, r2["insult_step_prompts"]!.GetValue<int>());
        Assert.Null(r2["activations"]![0]!["insult_step_activation_before"]);
    }

    [Fact]
    public void DiffSeesAnActivationChangeWhenTheToxicKeyBiasIsLowered()
    {
        using var model = Tiny(seed: 7);
        using var after = (Gpt2Model)model.Clone();
        var tok = Gpt2Tokenizer.Default();
        torch.manual_seed(13);
        using var probe = new ToxicityProbe(torch.randn(32, 2), torch.zeros(2));
        using var wt = probe.WToxic;
        var top = ToxicVectors.Rank(model, wt, 1)[0];
        using (torch.no_grad()) after.MlpKeyBias(top.Layer)[top.Neuron].sub_(5.0);
        var r = AlignmentDiff.Run(new(model, after, tok), probe, ["You are such a", "Hello"], new DiffOptions { MaxNewTokens = 3, TrackedVectors = 2 }, TempDir("diff2"));
        var a0 = r["activations"]![0]!;
        Assert.Equal(top.Layer, a0["layer"]!.GetValue<int>());
        Assert.True(a0["mean_activation_after"]!.GetValue<double>() < a0["mean_activation_before"]!.GetValue<double>());
        Assert.True(a0["positive_preactivation_share_after"]!.GetValue<double>() <= a0["positive_preactivation_share_before"]!.GetValue<double>());
        // resid_mid at the top layer is upstream of that MLP → no offset there if the layer is 0
        if (top.Layer == 0) Assert.Equal(0.0, r["residual_offset_top_layer"]!["norm"]!.GetValue<double>(), 10);
        Assert.True(r["parameters"]!["min_cosine"]!.GetValue<double>() < 1.0);
    }

    [Fact]
    public void CsvReaderReportsFileAndLine()
    {
        var dir = TempDir("csv");
        var good = Path.Combine(dir, "good.csv");
        File.WriteAllText(good, "id,comment_text,toxic\n1,\"hello, world\",0\n2,\"multi\nline\",1\n3,meh,0.7\n");
        var rows = DetoxSharp.Data.DatasetReaders.ReadJigsawCsv(good);
        Assert.Equal(3, rows.Count);
        Assert.Equal("hello, world", rows[0].Text);
        Assert.Equal("multi\nline", rows[1].Text);
        Assert.Equal([false, true, true], rows.Select(r => r.Toxic).ToArray());
        var bad = Path.Combine(dir, "bad.csv");
        File.WriteAllText(bad, "comment_text,toxic\nfine,1\nnot fine,maybe\n");
        var e = Assert.Throws<InvalidInputException>(() => DetoxSharp.Data.DatasetReaders.ReadJigsawCsv(bad));
        Assert.Contains("bad.csv:3", e.Message);
        var noCol = Path.Combine(dir, "nocol.csv");
        File.WriteAllText(noCol, "text,label\nx,1\n");
        Assert.Contains("nocol.csv:1", Assert.Throws<InvalidInputException>(() => DetoxSharp.Data.DatasetReaders.ReadJigsawCsv(noCol)).Message);
    }

    [Fact]
    public void CommandsRunEndToEndOnATinyCheckpoint()
    {
        using var model = Tiny(seed: 8);
        var tok = Gpt2Tokenizer.Default();
        var root = TempDir("cli");
        var mdir = Path.Combine(root, "model");
        HfCheckpoint.Save(model, tok, mdir, overwrite: true);
        var csv = Path.Combine(root, "c.csv");
        var lines = new List<string> { "comment_text,toxic" };
        for (int i = 0; i < 30; i++) lines.Add(i % 2 == 0 ? $"you are an idiot number {i},1" : $"thanks for the help number {i},0");
        File.WriteAllLines(csv, lines);
        var prompts = Path.Combine(root, "p.jsonl");
        File.WriteAllText(prompts, "{\"prompt\":{\"text\":\"You are such a\"}}\n{\"prompt\":\"Hello there\"}\n");
        int Run(params string[] args)
        {
            var (rc, o, e) = CliRunner.Run(args);
            Assert.True(rc == 0, $"{string.Join(" ", args)} → {rc}\n{o}\n{e}");
            return rc;
        }
        Run("probe", "--model", mdir, "--data", csv, "--out", Path.Combine(root, "probe"), "--max-steps", "200");
        var metrics = JsonNode.Parse(File.ReadAllText(Path.Combine(root, "probe", "probe_metrics.json")))!;
        Assert.Equal(27, metrics["train"]!.GetValue<int>());
        Assert.Equal(3, metrics["validation"]!.GetValue<int>());
        Run("vectors", "--model", mdir, "--probe", Path.Combine(root, "probe"), "--out", Path.Combine(root, "vec"), "--svd-vectors", "16");
        var vec = JsonNode.Parse(File.ReadAllText(Path.Combine(root, "vec", "vectors.json")))!;
        Assert.Equal(16, vec["svd_vectors"]!.GetValue<int>());
        Assert.Equal(1 + 20 + 3, File.ReadAllLines(Path.Combine(root, "vec", "vectors.csv")).Length - 1);
        Run("unalign", "--model", mdir, "--probe", Path.Combine(root, "probe"), "--out", Path.Combine(root, "un"), "--k", "3");
        var un = JsonNode.Parse(File.ReadAllText(Path.Combine(root, "un", "unalign.json")))!;
        using var loaded = HfCheckpoint.Load(Path.Combine(root, "un"));
        foreach (var n in un["neurons"]!.AsArray())
        {
            int l = n!["layer"]!.GetValue<int>(), i = n["neuron"]!.GetValue<int>();
            Assert.True(loaded.Model.MlpKeys(l).select(1, i).allclose(model.MlpKeys(l).select(1, i) * 10, 1e-6, 1e-6));
        }
        // the top neuron of `vectors` is the first neuron unalign scaled
        Assert.Equal(vec["ranking"]![0]!["neuron"]!.GetValue<int>(), un["neurons"]![0]!["neuron"]!.GetValue<int>());
        Run("diff", "--before", mdir, "--after", Path.Combine(root, "un"), "--probe", Path.Combine(root, "probe"), "--prompts", prompts, "--out", Path.Combine(root, "diff"), "--max-new-tokens", "3");
        var diff = JsonNode.Parse(File.ReadAllText(Path.Combine(root, "diff", "diff.json")))!;
        Assert.Equal(2, diff["prompts"]!.GetValue<int>());
        // user errors: exit code 2, one line
        var eo = new StringWriter(); var ee = new StringWriter();
        Assert.Equal(2, DetoxSharp.Cli.DetoxCli.Run(["vectors", "--model", mdir, "--probe", Path.Combine(root, "nope"), "--out", Path.Combine(root, "x")], eo, ee));
        Assert.StartsWith("detox: --probe:", ee.ToString());
    }
}
