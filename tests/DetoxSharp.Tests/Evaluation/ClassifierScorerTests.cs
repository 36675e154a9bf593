using System.Text.Json.Nodes;
using DetoxSharp.Checkpoints;
using DetoxSharp.Evaluation;
using TorchSharp;
using static TorchSharp.torch;

namespace DetoxSharp.Tests.Evaluation;

/// <summary>
/// Tiny random BERT/RoBERTa sequence classifiers written in Hugging Face layout; the scorer's logits are checked
/// against a plain C# re-computation (loops over float arrays) from the same weights.
/// </summary>
public class ClassifierScorerTests : IDisposable
{
    readonly string _tmp = Path.Combine(Path.GetTempPath(), "detox-cls-" + Guid.NewGuid().ToString("N"));
    public ClassifierScorerTests() => Directory.CreateDirectory(_tmp);
    public void Dispose() { try { Directory.Delete(_tmp, true); } catch { } }

    const int H = 8, Heads = 2, Layers = 2, Inter = 16;

    sealed class Weights
    {
        public readonly Dictionary<string, (float[] Data, long[] Shape)> W = new();
        readonly Random _rng;
        public Weights(int seed) => _rng = new Random(seed);
        public float[] Add(string name, params long[] shape)
        {
            long n = shape.Aggregate(1L, (a, b) => a * b);
            var d = new float[n];
            for (int i = 0; i < n; i++) d[i] = (float)(_rng.NextDouble() * 2 - 1) * 0.5f;
            W[name] = (d, shape);
            return d;
        }
        public void Save(string path)
        {
            var dict = W.ToDictionary(kv => kv.Key, kv => torch.tensor(kv.Value.Data, kv.Value.Shape));
            Safetensors.Save(path, dict);
            foreach (var t in dict.Values) t.Dispose();
        }
        public float[] this[string n] => W[n].Data;
    }

    // ---- plain C# reference ----
    static double Erf(double x)
    {
        // Abramowitz & Stegun 7.1.26 (|error| < 1.5e-7)
        double s = Math.Sign(x); x = Math.Abs(x);
        double t = 1 / (1 + 0.3275911 * x);
        double y = 1 - (((((1.061405429 * t - 1.453152027) * t) + 1.421413741) * t - 0.284496736) * t + 0.254829592) * t * Math.Exp(-x * x);
        return s * y;
    }

    static double[] Linear(double[] x, float[] w, float[] b, int outDim)
    {
        int inDim = x.Length;
        var y = new double[outDim];
        for (int o = 0; o < outDim; o++)
        {
            double acc = b[o];
            for (int i = 0; i < inDim; i++) acc += w[o * inDim + i] * x[i];
            y[o] = acc;
        }
        return y;
    }

    static double[] LayerNorm(double[] x, float[] g, float[] b, double eps)
    {
        double mean = x.Average(), v = x.Select(a => (a - mean) * (a - mean)).Average();
        return x.Select((a, i) => (a - mean) / Math.Sqrt(v + eps) * g[i] + b[i]).ToArray();
    }

    static double[] Reference(Weights w, string prefix, int[] ids, int[] positions, double eps, bool roberta, int labels)
    {
        int T = ids.Length, hd = H / Heads;
        var x = new double[T][];
        for (int t = 0; t < T; t++)
        {
            var e = new double[H];
            for (int i = 0; i < H; i++)
                e[i] = w[prefix + "embeddings.word_embeddings.weight"][ids[t] * H + i]
                     + w[prefix + "embeddings.position_embeddings.weight"][positions[t] * H + i]
                     + w[prefix + "embeddings.token_type_embeddings.weight"][i];
            var lnName = prefix + "embeddings.LayerNorm.";
            x[t] = roberta ? LayerNorm(e, w[lnName + "weight"], w[lnName + "bias"], eps) : LayerNorm(e, w[lnName + "gamma"], w[lnName + "beta"], eps);
        }
        for (int l = 0; l < Layers; l++)
        {
            string p = $"{prefix}encoder.layer.{l}.";
            var q = x.Select(v => Linear(v, w[p + "attention.self.query.weight"], w[p + "attention.self.query.bias"], H)).ToArray();
            var k = x.Select(v => Linear(v, w[p + "attention.self.key.weight"], w[p + "attention.self.key.bias"], H)).ToArray();
            var vv = x.Select(v => Linear(v, w[p + "attention.self.value.weight"], w[p + "attention.self.value.bias"], H)).ToArray();
            var ctx = new double[T][];
            for (int t = 0; t < T; t++)
            {
                ctx[t] = new double[H];
                for (int h = 0; h < Heads; h++)
                {
                    var sc = new double[T];
                    for (int s = 0; s < T; s++)
                    {
                        double d = 0;
                        for (int i = 0; i < hd; i++) d += q[t][h * hd + i] * k[s][h * hd + i];
                        sc[s] = d / Math.Sqrt(hd);
                    }
                    double mx = sc.Max();
                    var ex = sc.Select(a => Math.Exp(a - mx)).ToArray();
                    double z = ex.Sum();
                    for (int s = 0; s < T; s++)
                        for (int i = 0; i < hd; i++) ctx[t][h * hd + i] += ex[s] / z * vv[s][h * hd + i];
                }
            }
            for (int t = 0; t < T; t++)
            {
                var ao = Linear(ctx[t], w[p + "attention.output.dense.weight"], w[p + "attention.output.dense.bias"], H);
                var a = LayerNorm(ao.Select((v, i) => v + x[t][i]).ToArray(), w[p + "attention.output.LayerNorm.weight"], w[p + "attention.output.LayerNorm.bias"], eps);
                var inter = Linear(a, w[p + "intermediate.dense.weight"], w[p + "intermediate.dense.bias"], Inter)
                    .Select(u => 0.5 * u * (1 + Erf(u / Math.Sqrt(2)))).ToArray();
                var o = Linear(inter, w[p + "output.dense.weight"], w[p + "output.dense.bias"], H);
                x[t] = LayerNorm(o.Select((v, i) => v + a[i]).ToArray(), w[p + "output.LayerNorm.weight"], w[p + "output.LayerNorm.bias"], eps);
            }
        }
        if (roberta)
        {
            var d = Linear(x[0], w["classifier.dense.weight"], w["classifier.dense.bias"], H).Select(Math.Tanh).ToArray();
            return Linear(d, w["classifier.out_proj.weight"], w["classifier.out_proj.bias"], labels);
        }
        var pooled = Linear(x[0], w["bert.pooler.dense.weight"], w["bert.pooler.dense.bias"], H).Select(Math.Tanh).ToArray();
        return Linear(pooled, w["classifier.weight"], w["classifier.bias"], labels);
    }

    static void Encoder(Weights w, string prefix, int vocab, int maxPos, bool oldLayerNormNames)
    {
        w.Add(prefix + "embeddings.word_embeddings.weight", vocab, H);
        w.Add(prefix + "embeddings.position_embeddings.weight", maxPos, H);
        w.Add(prefix + "embeddings.token_type_embeddings.weight", 1, H);
        w.Add(prefix + "embeddings.LayerNorm." + (oldLayerNormNames ? "gamma" : "weight"), H);
        w.Add(prefix + "embeddings.LayerNorm." + (oldLayerNormNames ? "beta" : "bias"), H);
        for (int l = 0; l < Layers; l++)
        {
            string p = $"{prefix}encoder.layer.{l}.";
            foreach (var n in new[] { "attention.self.query", "attention.self.key", "attention.self.value", "attention.output.dense" })
            { w.Add(p + n + ".weight", H, H); w.Add(p + n + ".bias", H); }
            w.Add(p + "attention.output.LayerNorm.weight", H); w.Add(p + "attention.output.LayerNorm.bias", H);
            w.Add(p + "intermediate.dense.weight", Inter, H); w.Add(p + "intermediate.dense.bias", Inter);
            w.Add(p + "output.dense.weight", H, Inter); w.Add(p + "output.dense.bias", H);
            w.Add(p + "output.LayerNorm.weight", H); w.Add(p + "output.LayerNorm.bias", H);
        }
    }

    static JsonObject Config(string type, int vocab, int maxPos, int pad, string[] labels, string? problem) => new()
    {
        ["architectures"] = new JsonArray(type == "roberta" ? "RobertaForSequenceClassification" : "BertForSequenceClassification"),
        ["model_type"] = type, ["hidden_size"] = H, ["num_hidden_layers"] = Layers, ["num_attention_heads"] = Heads,
        ["intermediate_size"] = Inter, ["hidden_act"] = "gelu", ["max_position_embeddings"] = maxPos, ["type_vocab_size"] = 1,
        ["vocab_size"] = vocab, ["pad_token_id"] = pad, ["layer_norm_eps"] = 1e-5,
        ["id2label"] = new JsonObject(labels.Select((l, i) => KeyValuePair.Create(i.ToString(), (JsonNode?)l))),
        ["label2id"] = new JsonObject(labels.Select((l, i) => KeyValuePair.Create(l, (JsonNode?)i))),
        ["problem_type"] = problem,
    };

    [Fact]
    public void RobertaLogitsMatchPlainComputation()
    {
        var dir = Path.Combine(_tmp, "roberta");
        Directory.CreateDirectory(dir);
        const int vocab = 12, maxPos = 18, pad = 1;
        var labels = new[] { "toxicity", "obscene", "female" };
        File.WriteAllText(Path.Combine(dir, "config.json"), Config("roberta", vocab, maxPos, pad, labels, "multi_label_classification").ToJsonString());
        File.WriteAllText(Path.Combine(dir, "vocab.json"),
            """{"<s>":0,"<pad>":1,"</s>":2,"<unk>":3,"h":4,"i":5,"Ġ":6,"hi":7,"Ġhi":8,"o":9,"ho":10,"Ġho":11}""");
        File.WriteAllText(Path.Combine(dir, "merges.txt"), "#version: 0.2\nh i\nĠ hi\nh o\nĠ ho\n");
        var w = new Weights(5);
        Encoder(w, "roberta.", vocab, maxPos, false);
        w.Add("classifier.dense.weight", H, H); w.Add("classifier.dense.bias", H);
        w.Add("classifier.out_proj.weight", labels.Length, H); w.Add("classifier.out_proj.bias", labels.Length);
        w.Save(Path.Combine(dir, "model.safetensors"));

        using var s = new ClassifierScorer(dir, batchSize: 2);
        s.Validate();
        Assert.Equal("roberta", s.Family);
        Assert.True(s.MultiLabel);
        Assert.Equal(["TOXICITY", "PROFANITY", "female"], s.Labels);
        Assert.Equal([0, 7, 8, 11, 2], s.Tokenize("hi hi ho"));
        Assert.Equal([0, 10, 2], s.Tokenize("ho"));
        var longIds = s.Tokenize(string.Join(" ", Enumerable.Repeat("hi", 30)));
        Assert.Equal(maxPos - pad - 1, longIds.Count); // truncated to 16, still <s> … </s>
        Assert.Equal(2, longIds[^1]);

        var seqs = new[] { new[] { 0, 7, 8, 11, 2 }, new[] { 0, 10, 2 }, longIds.ToArray() };
        var got = s.Logits(seqs.Select(x => (IReadOnlyList<int>)x).ToList()); // padded batch
        for (int b = 0; b < seqs.Length; b++)
        {
            var positions = seqs[b].Select((_, i) => i + pad + 1).ToArray(); // RoBERTa: positions start at padding_idx + 1
            var want = Reference(w, "roberta.", seqs[b], positions, 1e-5, roberta: true, labels.Length);
            for (int j = 0; j < labels.Length; j++) Assert.Equal(want[j], got[b, j], 1e-4);
        }

        var scores = s.Score(["hi hi ho", "ho"]);
        for (int b = 0; b < 2; b++)
        {
            var positions = seqs[b].Select((_, i) => i + pad + 1).ToArray();
            var want = Reference(w, "roberta.", seqs[b], positions, 1e-5, roberta: true, labels.Length).Select(v => 1 / (1 + Math.Exp(-v))).ToArray();
            Assert.Equal(want[0], scores[b].Attributes["TOXICITY"], 1e-4);
            Assert.Equal(want[1], scores[b].Attributes["PROFANITY"], 1e-4);
            Assert.Equal(want[2], scores[b].Attributes["female"], 1e-4);
            Assert.Equal(Math.Max(want[0], want[1]), scores[b].Value, 1e-4); // identity label not in the max
        }
        Assert.Equal(scores[0].Attributes["TOXICITY"], s.Score(["hi hi ho"], ToxicityAggregate.Toxicity)[0].Value, 1e-12);
    }

    [Fact]
    public void BertLogitsMatchPlainComputation()
    {
        var dir = Path.Combine(_tmp, "bert");
        Directory.CreateDirectory(dir);
        var vocabList = new[] { "[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "hello", "world", "##s", "," };
        File.WriteAllLines(Path.Combine(dir, "vocab.txt"), vocabList);
        File.WriteAllText(Path.Combine(dir, "tokenizer_config.json"), """{"do_lower_case": true}""");
        const int maxPos = 12;
        var labels = new[] { "not_toxic", "toxic" };
        File.WriteAllText(Path.Combine(dir, "config.json"), Config("bert", vocabList.Length, maxPos, 0, labels, null).ToJsonString());
        var w = new Weights(9);
        Encoder(w, "bert.", vocabList.Length, maxPos, oldLayerNormNames: true);
        w.Add("bert.pooler.dense.weight", H, H); w.Add("bert.pooler.dense.bias", H);
        w.Add("classifier.weight", labels.Length, H); w.Add("classifier.bias", labels.Length);
        w.Save(Path.Combine(dir, "model.safetensors"));

        using var s = new ClassifierScorer(dir);
        Assert.Equal("bert", s.Family);
        Assert.False(s.MultiLabel);
        Assert.Equal([2, 5, 6, 7, 3], s.Tokenize("Hello worlds"));
        Assert.Equal(maxPos, s.Tokenize(string.Join(" ", Enumerable.Repeat("hello", 40))).Count);
        var seqs = new[] { new[] { 2, 5, 6, 7, 3 }, new[] { 2, 6, 8, 5, 3 }, new[] { 2, 6, 3 } };
        var got = s.Logits(seqs.Select(x => (IReadOnlyList<int>)x).ToList());
        var scores = s.Score(["Hello worlds", "world, hello", "WORLD"]);
        Assert.Equal(seqs[1], s.Tokenize("world, hello"));
        for (int b = 0; b < seqs.Length; b++)
        {
            var want = Reference(w, "bert.", seqs[b], seqs[b].Select((_, i) => i).ToArray(), 1e-5, roberta: false, labels.Length);
            for (int j = 0; j < labels.Length; j++) Assert.Equal(want[j], got[b, j], 1e-4);
            double pToxic = Math.Exp(want[1]) / (Math.Exp(want[0]) + Math.Exp(want[1])); // softmax (no problem_type)
            Assert.Equal(pToxic, scores[b].Attributes["TOXICITY"], 1e-4);
            Assert.Equal(pToxic, scores[b].Value, 1e-4); // only TOXICITY maps to a Perspective attribute
        }
    }

    /// <summary>A tiny BERT classifier directory with the given labels; returns the weights for the reference.</summary>
    Weights BertDir(string dir, string[] vocabList, string[] labels, string? problem, bool lower = true, int seed = 9, int maxPos = 12)
    {
        Directory.CreateDirectory(dir);
        File.WriteAllLines(Path.Combine(dir, "vocab.txt"), vocabList);
        File.WriteAllText(Path.Combine(dir, "tokenizer_config.json"), $$"""{"do_lower_case": {{(lower ? "true" : "false")}}}""");
        File.WriteAllText(Path.Combine(dir, "config.json"), Config("bert", vocabList.Length, maxPos, 0, labels, problem).ToJsonString());
        var w = new Weights(seed);
        Encoder(w, "bert.", vocabList.Length, maxPos, oldLayerNormNames: true);
        w.Add("bert.pooler.dense.weight", H, H); w.Add("bert.pooler.dense.bias", H);
        w.Add("classifier.weight", labels.Length, H); w.Add("classifier.bias", labels.Length);
        w.Save(Path.Combine(dir, "model.safetensors"));
        return w;
    }

    static readonly string[] TokVocab =
    [
        "[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "hello", "world", "##s", ",", "cafe", // 0-9
        "$", "=", "+", ">", "^", "|", "~", "_", "€", "©",                                   // 10-19
        "co", "##op", "中", "a", ".", "##a", "café",                                        // 20-26
    ];

    [Fact]
    public void BertTokenizerFollowsTransformersBasicTokenizerAndWordPiece()
    {
        var dir = Path.Combine(_tmp, "bert-tok");
        BertDir(dir, TokVocab, ["toxic"], null, maxPos: 110);
        using var s = new ClassifierScorer(dir);
        int[] Ids(string t) => s.Tokenize(t).ToArray()[1..^1];
        Assert.Equal(2, s.Tokenize("x")[0]);
        Assert.Equal(3, s.Tokenize("x")[^1]);
        // ids worked out by hand from TokVocab and transformers' BasicTokenizer/WordPiece rules
        Assert.Equal([9], Ids("Café"));                      // lower-cased, NFD, accent (Mn) dropped
        Assert.Equal([9], Ids("CAFE\u0301"));                 // combining accent (NFC makes É, then NFD + drop Mn)
        Assert.Equal([5, 6], Ids("hello\nworld"));           // newline is whitespace, not deleted
        Assert.Equal([5, 6, 7], Ids("hello\tworlds"));
        Assert.Equal([5, 6], Ids("hello\u00A0world"));       // NBSP (Zs) is whitespace
        Assert.Equal([10, 11, 12, 13, 14, 15, 16, 17], Ids("$=+>^|~_")); // ASCII punctuation ranges, each split off
        Assert.Equal([18, 19, 1, 1], Ids("€ © ½ °"));         // symbols (S*, No) are not punctuation: own words, [UNK] if unknown
        Assert.Equal([1], Ids("a€"));                          // not split off: "a" then "##€" is missing → whole word [UNK]
        Assert.Equal([1], Ids("hello😀"));                     // emoji (So) stays in its word
        Assert.Equal([1, 5], Ids("😀 hello"));
        Assert.Equal([20, 21], Ids("co\u00ADop"));            // soft hyphen (Cf) removed
        Assert.Equal([1], Ids("hello\u200Bworld"));           // zero-width space (Cf) removed → "helloworld" → [UNK]
        Assert.Equal([23, 22, 23], Ids("a中a"));               // CJK ideographs become words
        Assert.Equal([5, 3, 6], Ids("hello [SEP] world"));    // special tokens in the text stay whole
        Assert.Equal([6, 24, 8, 5], Ids("world., hello"));
        Assert.Equal([5], Ids("hello\u0007"));                // control character dropped
        Assert.Equal([23, .. Enumerable.Repeat(25, 99)], Ids(new string('a', 100)));
        Assert.Equal([1], Ids(new string('a', 101)));          // > 100 code points → [UNK]
        Assert.Equal([1], Ids(string.Concat(Enumerable.Repeat("😀", 60)))); // 60 code points (120 UTF-16 units): still one WordPiece word → [UNK]

        var cased = Path.Combine(_tmp, "bert-tok-cased");
        BertDir(cased, TokVocab, ["toxic"], null, lower: false);
        using var c = new ClassifierScorer(cased);
        Assert.Equal([26], c.Tokenize("café").ToArray()[1..^1]); // cased: accents kept
        Assert.Equal([1], c.Tokenize("Hello").ToArray()[1..^1]);
    }

    [Fact]
    public void RobertaHandlesRunsOfSpacesTabsAndNewlines()
    {
        var dir = Path.Combine(_tmp, "roberta-ws");
        Directory.CreateDirectory(dir);
        const int vocab = 15, maxPos = 40, pad = 1;
        var labels = new[] { "LABEL_0", "LABEL_1" };
        File.WriteAllText(Path.Combine(dir, "config.json"), Config("roberta", vocab, maxPos, pad, labels, null).ToJsonString());
        File.WriteAllText(Path.Combine(dir, "vocab.json"),
            """{"<s>":0,"<pad>":1,"</s>":2,"<unk>":3,"h":4,"i":5,"Ġ":6,"hi":7,"Ġhi":8,"o":9,"ho":10,"Ġho":11,"ĠĠ":12,"ĉ":13,"Ċ":14}""");
        File.WriteAllText(Path.Combine(dir, "merges.txt"), "#version: 0.2\nh i\nĠ hi\nh o\nĠ ho\nĠ Ġ\n");
        var w = new Weights(11);
        Encoder(w, "roberta.", vocab, maxPos, false);
        w.Add("classifier.dense.weight", H, H); w.Add("classifier.dense.bias", H);
        w.Add("classifier.out_proj.weight", 2, H); w.Add("classifier.out_proj.bias", 2);
        w.Save(Path.Combine(dir, "model.safetensors"));
        using var s = new ClassifierScorer(dir);
        // GPT-2 pre-tokenization: \s+(?!\S) leaves the last space of a run to the next word
        Assert.Equal([0, 7, 6, 11, 2], s.Tokenize("hi  ho"));
        Assert.Equal([0, 7, 12, 11, 6, 2], s.Tokenize("hi   ho "));
        Assert.Equal([0, 7, 13, 10, 2], s.Tokenize("hi\tho"));
        Assert.Equal([0, 7, 13, 13, 10, 2], s.Tokenize("hi\t\tho"));
        Assert.Equal([0, 7, 14, 14, 10, 2], s.Tokenize("hi\n\nho"));
        Assert.Equal([0, 7, 3, 2], s.Tokenize("hix"));        // BPE merges h+i, then "x" is not in the vocabulary → <unk>
        Assert.Equal([0, 3, 3, 3, 2], s.Tokenize("€"));       // three bytes, none in the vocabulary

        var texts = new[] { "hi  ho", "hi\t\tho  hi", "ho" };
        var scores = s.Score(texts);
        for (int b = 0; b < texts.Length; b++)
        {
            var ids = s.Tokenize(texts[b]).ToArray();
            var want = Reference(w, "roberta.", ids, ids.Select((_, i) => i + pad + 1).ToArray(), 1e-5, roberta: true, 2);
            double p1 = 1 / (1 + Math.Exp(want[0] - want[1]));
            Assert.Equal(p1, scores[b].Value, 1e-4);               // 2-class softmax, LABEL_0/LABEL_1 → toxicity = P(LABEL_1)
            Assert.Equal(p1, scores[b].Attributes["LABEL_1"], 1e-4);
        }
        Assert.Equal(["LABEL_1"], s.ToxicLabels);
        Assert.Contains("P(LABEL_1)", s.ToxicityRule);
        Assert.Equal(scores.Select(x => x.Value), s.Score(texts, ToxicityAggregate.Toxicity).Select(x => x.Value)); // no error for LABEL_0/1
    }

    [Fact]
    public void ToxicityConventionPerHead()
    {
        var vocabList = new[] { "[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "hello", "world" };
        var texts = new[] { "hello world", "world", "hello hello" };
        int[][] seqs = [[2, 5, 6, 3], [2, 6, 3], [2, 5, 5, 3]];
        double[][] Logits(Weights w, int n) => seqs.Select(q => Reference(w, "bert.", q, q.Select((_, i) => i).ToArray(), 1e-5, false, n)).ToArray();
        static double Sig(double x) => 1 / (1 + Math.Exp(-x));

        // {toxic, neutral}: the name says label 0 is the toxic one
        var d1 = Path.Combine(_tmp, "h1");
        var w1 = BertDir(d1, vocabList, ["toxic", "neutral"], null);
        using (var s = new ClassifierScorer(d1))
        {
            var r = s.Score(texts);
            var l = Logits(w1, 2);
            for (int b = 0; b < 3; b++) Assert.Equal(1 / (1 + Math.Exp(l[b][1] - l[b][0])), r[b].Value, 1e-4);
            Assert.Equal(["TOXICITY"], s.ToxicLabels);
        }
        // {nothate, hate} → hate (label 1)
        var d2 = Path.Combine(_tmp, "h2");
        var w2 = BertDir(d2, vocabList, ["nothate", "hate"], null, seed: 3);
        using (var s = new ClassifierScorer(d2))
        {
            var r = s.Score(texts);
            var l = Logits(w2, 2);
            for (int b = 0; b < 3; b++) Assert.Equal(1 / (1 + Math.Exp(l[b][0] - l[b][1])), r[b].Value, 1e-4);
            Assert.Equal("softmax; toxicity = P(hate)", s.ToxicityRule);
        }
        // one label: sigmoid, as transformers' pipeline
        var d3 = Path.Combine(_tmp, "h3");
        var w3 = BertDir(d3, vocabList, ["LABEL_0"], null, seed: 4);
        using (var s = new ClassifierScorer(d3))
        {
            var r = s.Score(texts);
            var l = Logits(w3, 1);
            Assert.True(s.Sigmoid);
            for (int b = 0; b < 3; b++) Assert.Equal(Sig(l[b][0]), r[b].Value, 1e-4);
        }
        // multi-label head without any toxicity label: an error naming --toxic-label; with it, that label's sigmoid
        var d4 = Path.Combine(_tmp, "h4");
        var w4 = BertDir(d4, vocabList, ["female", "male", "christian"], "multi_label_classification", seed: 5);
        var e = Assert.Throws<InvalidInputException>(() => new ClassifierScorer(d4).Validate());
        Assert.Contains("--toxic-label", e.Message);
        using (var s = new ClassifierScorer(d4, toxicLabels: ["male", "christian", "not-a-label"]))
        {
            var r = s.Score(texts);
            var l = Logits(w4, 3);
            for (int b = 0; b < 3; b++) Assert.Equal(Math.Max(Sig(l[b][1]), Sig(l[b][2])), r[b].Value, 1e-4);
            Assert.True(s.UsesToxicLabelOverride);
            Assert.Equal(["male", "christian"], s.ToxicLabels);
        }
        // the identity changes with the weights and with the label choice
        using var a = new ClassifierScorer(d1);
        using var a2 = new ClassifierScorer(d1, toxicLabels: ["neutral"]);
        using var b2 = new ClassifierScorer(d2);
        Assert.NotEqual(a.Identity, a2.Identity);
        Assert.NotEqual(a.Identity.Split(' ')[1], b2.Identity.Split(' ')[1]);
        Assert.StartsWith("classifier:h1 weights-sha256:", a.Identity);
    }

    [Fact]
    public void InvalidDirectoriesGiveOneLineErrors()
    {
        var e1 = Assert.Throws<InvalidInputException>(() => new ClassifierScorer(Path.Combine(_tmp, "none")).Validate());
        Assert.Contains("not found", e1.Message);
        var d = Path.Combine(_tmp, "gpt");
        Directory.CreateDirectory(d);
        File.WriteAllText(Path.Combine(d, "config.json"), """{"model_type":"gpt2"}""");
        var e2 = Assert.Throws<InvalidInputException>(() => new ClassifierScorer(d).Validate());
        Assert.Contains("not supported", e2.Message);
        File.WriteAllText(Path.Combine(d, "config.json"), Config("bert", 9, 12, 0, ["toxic"], null).ToJsonString());
        var e3 = Assert.Throws<InvalidInputException>(() => new ClassifierScorer(d).Validate());
        Assert.Contains("model.safetensors", e3.Message);
        Assert.All(new[] { e1, e2, e3 }, e => Assert.DoesNotContain('\n', e.Message));
    }
}
