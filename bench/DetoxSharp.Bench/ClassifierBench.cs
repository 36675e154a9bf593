using System.Diagnostics;
using System.Globalization;
using System.Text.Json;
using System.Text.Json.Nodes;
using DetoxSharp.Checkpoints;
using DetoxSharp.Evaluation;
using DetoxSharp.Text;
using TorchSharp;
using static TorchSharp.torch;

/// <summary>
/// Classifier scoring throughput (`--classifier`): a RoBERTa-base-shaped sequence classifier (12 layers, 768 wide,
/// 12 heads, 3072 MLP, 50265 tokens, 16 sigmoid labels as unbiased-toxic-roberta) with random weights N(0, 0.02) and
/// GPT-2's byte-level BPE files as its tokenizer, written once to a temp directory; then `ClassifierScorer.Score` on
/// synthetic 20-token-like continuations, best of the rounds, next to the time of tokenization alone and of the
/// batched forward passes alone on the same (length-sorted) batches — the check that scoring is bounded by the forward.
/// </summary>
static class ClassifierBench
{
    public static string Run(int texts, int batch, int rounds, Action<string> log)
    {
        var dir = Path.Combine(Path.GetTempPath(), "detox-bench-roberta-base");
        if (!File.Exists(Path.Combine(dir, "model.safetensors"))) Write(dir, log);
        var rng = new Random(0);
        string[] words = ["the", "you", "people", "think", "about", "really", "never", "going", "to", "and", "what", "is", "a", "that",
            "stupid", "world", "because", "they", "were", "just", "said", "it", "would", "be", "like", "this", "no", "one", "cares", "!", ",", "."];
        var items = Enumerable.Range(0, texts).Select(_ => " " + string.Join(" ", Enumerable.Range(0, rng.Next(8, 22)).Select(_ => words[rng.Next(words.Length)]))).ToList();
        using var s = new ClassifierScorer(dir, batchSize: batch);
        s.Validate();
        s.Score(items.Take(batch).ToList()); // warm-up
        double best = double.MaxValue, tokBest = double.MaxValue, fwdBest = double.MaxValue;
        double meanLen = 0;
        for (int r = 0; r < rounds; r++)
        {
            var sw = Stopwatch.StartNew();
            s.Score(items);
            best = Math.Min(best, sw.Elapsed.TotalSeconds);
            sw.Restart();
            var enc = items.Select(t => s.Tokenize(t)).ToList();
            tokBest = Math.Min(tokBest, sw.Elapsed.TotalSeconds);
            meanLen = enc.Average(e => e.Count);
            var sorted = enc.OrderBy(e => e.Count).ToList();
            sw.Restart();
            for (int i = 0; i < sorted.Count; i += batch) s.Logits(sorted.Skip(i).Take(batch).ToList());
            fwdBest = Math.Min(fwdBest, sw.Elapsed.TotalSeconds);
            log($"classifier round {r + 1}: score {texts / best:F1} texts/s, forward alone {texts / fwdBest:F1}, tokenize alone {texts / tokBest:F0}");
        }
        return string.Join("\n",
            $"| texts | batch | tokens/text (incl. <s> </s>) | threads | score texts/s | forward-only texts/s | tokenize-only texts/s | forward share |",
            "|---|---|---|---|---|---|---|---|",
            $"| {texts} | {batch} | {meanLen:F1} | {torch.get_num_threads()} | {texts / best:F1} | {texts / fwdBest:F1} | {texts / tokBest:F0} | {fwdBest / best:P0} |");
    }

    static void Write(string dir, Action<string> log)
    {
        log("writing a random RoBERTa-base-shaped classifier to " + dir);
        Directory.CreateDirectory(dir);
        const int H = 768, L = 12, I = 3072, V = 50265, P = 514, Labels = 16;
        torch.manual_seed(0);
        var w = new Dictionary<string, Tensor>();
        void Add(string n, params long[] shape) => w[n] = torch.randn(shape) * 0.02f;
        void Ones(string n) { w[n + ".weight"] = torch.ones(H); w[n + ".bias"] = torch.zeros(H); }
        Add("roberta.embeddings.word_embeddings.weight", V, H);
        Add("roberta.embeddings.position_embeddings.weight", P, H);
        Add("roberta.embeddings.token_type_embeddings.weight", 1, H);
        Ones("roberta.embeddings.LayerNorm");
        for (int l = 0; l < L; l++)
        {
            var p = $"roberta.encoder.layer.{l}.";
            foreach (var n in new[] { "attention.self.query", "attention.self.key", "attention.self.value", "attention.output.dense" })
            { Add(p + n + ".weight", H, H); Add(p + n + ".bias", H); }
            Ones(p + "attention.output.LayerNorm");
            Add(p + "intermediate.dense.weight", I, H); Add(p + "intermediate.dense.bias", I);
            Add(p + "output.dense.weight", H, I); Add(p + "output.dense.bias", H);
            Ones(p + "output.LayerNorm");
        }
        Add("classifier.dense.weight", H, H); Add("classifier.dense.bias", H);
        Add("classifier.out_proj.weight", Labels, H); Add("classifier.out_proj.bias", Labels);
        Safetensors.Save(Path.Combine(dir, "model.safetensors"), w);
        foreach (var t in w.Values) t.Dispose();
        // GPT-2's byte-level BPE (RoBERTa's vocabulary is GPT-2's plus 4 specials; ids differ, costs do not)
        var bpe = Gpt2Tokenizer.Default().Vocabulary;
        // RoBERTa's layout: <s> 0, <pad> 1 (also the position padding_idx), </s> 2, <unk> 3, then the BPE tokens
        var vocab = new Dictionary<string, int> { ["<s>"] = 0, ["<pad>"] = 1, ["</s>"] = 2, ["<unk>"] = 3 };
        foreach (var (tok, id) in bpe.Vocab) vocab.TryAdd(tok, id + 4);
        File.WriteAllText(Path.Combine(dir, "vocab.json"), JsonSerializer.Serialize(vocab));
        File.WriteAllLines(Path.Combine(dir, "merges.txt"), bpe.Merges.Select(m => $"{m.Left} {m.Right}").Prepend("#version: 0.2"));
        var labels = new[] { "toxicity", "severe_toxicity", "obscene", "identity_attack", "insult", "threat", "sexual_explicit",
            "male", "female", "homosexual_gay_or_lesbian", "christian", "jewish", "muslim", "black", "white", "psychiatric_or_mental_illness" };
        var cfg = new JsonObject
        {
            ["model_type"] = "roberta", ["hidden_size"] = H, ["num_hidden_layers"] = L, ["num_attention_heads"] = 12, ["intermediate_size"] = I,
            ["hidden_act"] = "gelu", ["max_position_embeddings"] = P, ["type_vocab_size"] = 1, ["vocab_size"] = V, ["pad_token_id"] = vocab["<pad>"],
            ["layer_norm_eps"] = 1e-5, ["problem_type"] = "multi_label_classification",
            ["id2label"] = new JsonObject(labels.Select((l, i) => KeyValuePair.Create(i.ToString(CultureInfo.InvariantCulture), (JsonNode?)l))),
        };
        File.WriteAllText(Path.Combine(dir, "config.json"), cfg.ToJsonString());
    }
}
