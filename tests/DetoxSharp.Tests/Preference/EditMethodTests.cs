using DetoxSharp.Data;
using DetoxSharp.Editing;
using DetoxSharp.Generation;
using Generator = DetoxSharp.Generation.Generator;
using DetoxSharp.Models;
using DetoxSharp.Text;
using TorchSharp;
using static TorchSharp.torch;

namespace DetoxSharp.Tests.Preference;

/// <summary>ProFS, AurA, steering and DExperts (methods-facts §1) on tiny float64 models.</summary>
public class EditMethodTests
{
    static readonly Gpt2Tokenizer Tok = Gpt2Tokenizer.Default();

    static List<LabelledComment> Comments() =>
    [
        new("you stupid idiot, shut up", true), new("what a lovely day in the park", false), new("I hate you all, morons", true),
        new("thank you friend", false), new("shut up loser", true), new("we like the river and the town hall", false),
        new("garbage post, you lazy coward", true), new("good work team", false),
    ];

    [Fact]
    public void ProFsRemovesItsDirectionsFromTheEditedValueMatricesOnly()
    {
        using var m = Tiny.Model(ScalarType.Float64, seed: 9);
        var before = m.state_dict().ToDictionary(kv => kv.Key, kv => kv.Value.clone());
        var o = new ProFsOptions { Rank = 2, FirstLayer = 1, LastLayer = 1 };
        var layers = ProFs.Apply(m, Tok, Tiny.Pairs(12), o);
        var edited = Assert.Single(layers);
        Assert.Equal(1, edited.Layer);
        Assert.Equal(2, edited.Directions.Length);
        var v = torch.tensor(edited.Directions.SelectMany(r => r).ToArray(), [2, m.DModel], ScalarType.Float64);
        Assert.Equal(1.0, torch.linalg.norm(v[0]).item<double>(), 10);
        Assert.Equal(0.0, v[0].dot(v[1]).item<double>(), 10);
        using (torch.no_grad())
        {
            var w = m.MlpValues(1);
            // every value vector has no component left along the projected directions
            Assert.True(w.matmul(v.T).abs().max().item<double>() < 1e-12);
            // and only that component was removed: W_before − W_after = W_before·VᵀV
            var wb = before[m.MlpValuesParameterName(1)];
            Assert.True((wb - w - wb.matmul(v.T).matmul(v)).abs().max().item<double>() < 1e-12);
            Assert.True((wb - w).abs().max().item<double>() > 1e-6);
        }
        foreach (var (k, t) in m.state_dict())
            if (k != m.MlpValuesParameterName(1))
                Assert.True(torch.equal(t, before[k]).all().item<bool>(), $"{k} changed (ProFS edits only the value matrices of its layers; biases stay)");
    }

    [Fact]
    public void ProFsCentringRemovesTheSharedDirectionAndPaddingChangesNoEmbedding()
    {
        using var m = Tiny.Model(ScalarType.Float64, seed: 4);
        var pairs = Tiny.Pairs(8);
        var texts = pairs.Select(p => p.Prompt + p.Chosen).ToList();
        var batched = ProFs.Embed(m, Tok, texts, [0, 1], 128, 8);
        var alone = texts.Select(t => ProFs.Embed(m, Tok, [t], [0, 1], 128, 1)).ToList();
        for (int i = 0; i < texts.Count; i++)
            for (int l = 0; l < 2; l++)
                Assert.True((batched[l][i] - alone[i][l][0]).abs().max().item<double>() < 1e-5, $"text {i} layer {l}: padding changed the embedding");
        var neg = ProFs.Embed(m, Tok, pairs.Select(p => p.Prompt + p.Rejected).ToList(), [0, 1], 128, 8);
        var (dirs, sv, s0) = ProFs.Subspace(batched[1], neg[1], 3, centring: true);
        var (_, _, vh) = torch.linalg.svd(batched[1], fullMatrices: false);
        var v0 = vh[0];
        Assert.True(dirs.matmul(v0).abs().max().item<double>() < 1e-8); // v₀ is projected out of T before its SVD
        Assert.True(s0 > 0 && sv[0] >= sv[1]);
        // without centring the top direction is T⁰'s own, and it generally leans on v₀
        var (raw, _, _) = ProFs.Subspace(batched[1], neg[1], 1, centring: false);
        Assert.True(raw.matmul(v0).abs().item<double>() > 1e-6);
    }

    [Fact]
    public void AurocAndAlphaByHand()
    {
        // positives 0.35, 0.8 vs negatives 0.1, 0.4: 3 of 4 pairs ordered → AUROC 0.75 → α = 1 − 2·0.25 = 0.5
        Assert.Equal(0.75, Aura.Auroc([0.1, 0.4, 0.35, 0.8], [false, false, true, true]), 12);
        Assert.Equal(0.5, Aura.Alpha(0.75), 12);
        // a tie counts one half: positives {1, 2}, negatives {1, 0} → (0.5 + 1 + 1 + 1)/4
        Assert.Equal(0.875, Aura.Auroc([1, 1, 0, 2], [true, false, false, true]), 12);
        Assert.Equal(0.25, Aura.Alpha(0.875), 12);
        Assert.Equal(1.0, Aura.Alpha(0.5));
        Assert.Equal(1.0, Aura.Alpha(0.2)); // anti-toxic neurons are left alone
        Assert.Throws<InvalidInputException>(() => Aura.Auroc([1, 2], [true, true]));
    }

    [Fact]
    public void AuraScalesValueVectorsByAlphaFromMaxPooledAuroc()
    {
        using var m = Tiny.Model(ScalarType.Float64, seed: 2);
        var comments = Comments();
        var r = Aura.Score(m, Tok, comments, new AuraOptions { BatchSize = 3 });
        // independent: each comment alone (no padding), max over its tokens of layer 0's activations, AUROC by pair counting
        var acts = comments.Select(c =>
        {
            var ids = torch.tensor(Tok.EncodeWithSpecialTokens(c.Text).Select(x => (long)x).ToArray()).unsqueeze(0);
            using var cache = DetoxSharp.Interpretability.ActivationCache.Run(m, ids, null, [HookNames.MlpPost(0)]);
            return cache[HookNames.MlpPost(0)][0].amax([0]).data<double>().ToArray();
        }).ToList();
        foreach (var neuron in new[] { 0, 5, 17, 63 })
        {
            double wins = 0; int pairs = 0;
            for (int a = 0; a < comments.Count; a++)
                for (int b = 0; b < comments.Count; b++)
                    if (comments[a].Toxic && !comments[b].Toxic)
                    {
                        pairs++;
                        double x = acts[a][neuron], y = acts[b][neuron];
                        wins += x > y ? 1 : x == y ? 0.5 : 0;
                    }
            double auroc = wins / pairs;
            Assert.Equal(auroc, r.Auroc[0][neuron], 5);
            Assert.Equal(auroc > 0.5 ? 2 - 2 * auroc : 1.0, r.Alpha[0][neuron], 5);
        }
        Assert.True(r.Dampened > 0);
        var before = m.MlpValues(0).clone();
        var bias = m.state_dict().First(kv => kv.Key.EndsWith("mlp.c_proj.bias")).Value.clone();
        Aura.Apply(m, r);
        var after = m.MlpValues(0);
        for (int i = 0; i < m.MlpDim; i++)
            Assert.True((after[i] - before[i] * r.Alpha[0][i]).abs().max().item<double>() < 1e-12);
        Assert.True(torch.equal(bias, m.state_dict().First(kv => kv.Key.EndsWith("mlp.c_proj.bias")).Value).all().item<bool>());
    }

    [Fact]
    public void SteeringVectorIsTheClassMeanDifferenceAndIsSubtractedEverywhere()
    {
        using var m = Tiny.Model(ScalarType.Float64, seed: 6);
        var comments = Comments();
        var (v, layer) = Steering.MeanDifference(m, Tok, comments, new SteeringOptions { Layer = 0, BatchSize = 3 });
        Assert.Equal(0, layer);
        var feats = comments.Select(c =>
        {
            var ids = torch.tensor(Tok.EncodeWithSpecialTokens(c.Text).Select(x => (long)x).ToArray()).unsqueeze(0);
            using var cache = DetoxSharp.Interpretability.ActivationCache.Run(m, ids, null, [HookNames.ResidPost(0)]);
            return cache[HookNames.ResidPost(0)][0].mean([0]);
        }).ToList();
        var want = torch.stack(feats.Where((_, i) => comments[i].Toxic)).mean([0]) - torch.stack(feats.Where((_, i) => !comments[i].Toxic)).mean([0]);
        Assert.True((v.to(ScalarType.Float64) - want).abs().max().item<double>() < 1e-5);

        var dir = Tiny.TempDir("steer");
        Steering.Save(dir, v, layer, new System.Text.Json.Nodes.JsonObject());
        var edit = Steering.Load(dir + "@3");
        var ids2 = torch.tensor(Tok.EncodeWithSpecialTokens("shut up you").Select(x => (long)x).ToArray()).unsqueeze(0);
        using var plain = DetoxSharp.Interpretability.ActivationCache.Run(m, ids2, null, [HookNames.ResidPost(0)]);
        using (edit.Apply(m))
        {
            using var steered = DetoxSharp.Interpretability.ActivationCache.Run(m, ids2, null, [HookNames.ResidPost(0)]);
            var diff = plain[HookNames.ResidPost(0)] - steered[HookNames.ResidPost(0)]; // [1, T, d]
            for (int t = 0; t < diff.shape[1]; t++)
                Assert.True((diff[0, t] - 3 * v.to(ScalarType.Float64)).abs().max().item<double>() < 1e-5, $"position {t} not steered by 3·v");
        }
        Assert.Throws<InvalidInputException>(() => Steering.Load(dir + "@x"));
        Assert.Throws<InvalidInputException>(() => Steering.Load(Path.Combine(dir, "missing") + "@1"));
    }

    [Fact]
    public void DExpertsBatchedCachedGenerationEqualsRecomputedCombination()
    {
        using var b = Tiny.Model(ScalarType.Float64, seed: 11);
        using var e = Tiny.Model(ScalarType.Float64, seed: 12);
        using var a = Tiny.Model(ScalarType.Float64, seed: 13);
        foreach (var x in new[] { b, e, a }) using (torch.no_grad()) foreach (var p in x.parameters()) p.mul_(20); // peaked, so argmax differs between models
        var dx = new DExperts(e, a, 2.0);
        var prompts = new[] { "The river", "Shut up you stupid", "A" }.Select(t => Tok.Encode(t)).ToList();
        var opts = new GenerationOptions { MaxNewTokens = 6, StopAtEos = false, BatchSize = 3 };
        var got = Generator.Generate(b, prompts, opts, dx);
        var plainBase = Generator.Generate(b, prompts, opts);
        Assert.NotEqual(plainBase.Select(r => string.Join(",", r)), got.Select(r => string.Join(",", r)));
        using var _ = torch.no_grad();
        for (int i = 0; i < prompts.Count; i++)
        {
            var seq = prompts[i].Select(x => (long)x).ToList();
            for (int s = 0; s < 6; s++)
            {
                var ids = torch.tensor(seq.ToArray()).unsqueeze(0);
                var z = b.Forward(ids)[0, -1] + 2.0 * (e.Forward(ids)[0, -1] - a.Forward(ids)[0, -1]);
                seq.Add(z.argmax().item<long>());
            }
            Assert.Equal(seq.Skip(prompts[i].Length).Select(x => (int)x), got[i]);
        }
        // α = 0 is the base model alone
        Assert.Equal(plainBase, Generator.Generate(b, prompts, opts, dx with { Alpha = 0 }));
        // the combined distribution's log-probs sum to one per position
        var t = torch.tensor(prompts[1].Select(x => (long)x).ToArray()).unsqueeze(0);
        var lp = dx.TokenLogProbs(b, t);
        var full = dx.Combine(b.Forward(t), e.Forward(t), a.Forward(t)).log_softmax(-1);
        Assert.Equal(full[0, 0, prompts[1][1]].item<float>(), lp[0, 0].item<float>(), 4);
    }
}
