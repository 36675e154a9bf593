using System.Text.Json;
using System.Text.Json.Nodes;
using DetoxSharp.Checkpoints;
using Microsoft.ML.Tokenizers;
using TorchSharp;
using static TorchSharp.torch;
using NF = TorchSharp.torch.nn.functional;

namespace DetoxSharp.Evaluation;

/// <summary>
/// A local Hugging Face sequence-classification checkpoint of the BERT or RoBERTa family used as a toxicity scorer
/// (e.g. <c>unitary/toxic-bert</c>, <c>unitary/unbiased-toxic-roberta</c>). The encoder is implemented here from the
/// weights (model.safetensors): embeddings (word + position + token type, RoBERTa's positions offset past
/// <c>padding_idx</c>), post-LayerNorm encoder layers, and the family's head (BERT: pooler dense+tanh on [CLS], then
/// classifier; RoBERTa: classifier.dense+tanh on &lt;s&gt;, then classifier.out_proj). Probabilities: sigmoid per label
/// when config.json says <c>problem_type: multi_label_classification</c> or the head has one label, else softmax; which
/// labels make "toxicity" is chosen by <see cref="ChooseToxicLabels"/> and reported (<see cref="ToxicityRule"/>). Labels (id2label) are mapped to
/// Perspective names where the meaning is the same (toxic/toxicity → TOXICITY, severe_toxic(ity) → SEVERE_TOXICITY,
/// obscene → PROFANITY, identity_attack/identity_hate → IDENTITY_ATTACK, insult, threat, sexual_explicit →
/// SEXUALLY_EXPLICIT); other labels keep their names. The max-over-attributes aggregate uses only the mapped labels
/// (unbiased-toxic-roberta's identity labels such as "female" are not toxicity).
/// </summary>
public sealed class ClassifierScorer : IToxicityScorer
{
    readonly string _dir;
    readonly int _batchSize;
    readonly int? _maxLength;
    Dictionary<string, Tensor>? _w;
    string _family = "";
    int _hidden, _heads, _layers, _pad, _maxLen, _numLabels;
    double _eps;
    string _act = "gelu";
    bool _multiLabel, _sigmoid;
    int _vocabRows;
    string[] _rawLabels = [], _labels = [];
    int[] _toxicIdx = [];
    int? _toxicityIdx;
    string _rule = "", _weightsHash = "";
    readonly IReadOnlyList<string> _toxicLabelOverride;
    Func<string, List<int>>? _encode;

    /// <param name="directory">The classifier checkpoint directory (config.json with id2label, weights, tokenizer files).</param>
    /// <param name="batchSize">Texts per forward batch.</param>
    /// <param name="maxLength">Tokens per text (cut at the end); null = the checkpoint's maximum.</param>
    /// <param name="toxicLabels">labels (id2label names or their Perspective names) that make "toxicity" for this
    /// classifier (the user's --toxic-label); the ones this checkpoint has are used, others are ignored.</param>
    public ClassifierScorer(string directory, int batchSize = 32, int? maxLength = null, IReadOnlyList<string>? toxicLabels = null)
    {
        _dir = directory;
        if (batchSize < 1) throw new InvalidInputException($"classifier batch size must be ≥ 1, got {batchSize}");
        _batchSize = batchSize;
        _maxLength = maxLength;
        _toxicLabelOverride = toxicLabels ?? [];
    }

    /// <inheritdoc/>
    public string Name => $"classifier:{Path.GetFileName(Path.GetFullPath(_dir).TrimEnd(Path.DirectorySeparatorChar))}";
    /// <summary>The checkpoint's architecture family from config.json (bert, roberta, …).</summary>
    public string Family { get { Load(); return _family; } }
    /// <summary>Attribute names of the labels: Perspective names where the meaning is the same, else id2label's.</summary>
    public IReadOnlyList<string> Labels { get { Load(); return _labels; } }
    /// <summary>True when the head is multi-label (config.json problem_type multi_label_classification or several toxicity attributes).</summary>
    public bool MultiLabel { get { Load(); return _multiLabel; } }
    /// <summary>True when probabilities are per-label sigmoids (multi-label heads, one-label heads), false for softmax.</summary>
    public bool Sigmoid { get { Load(); return _sigmoid; } }
    /// <summary>The attribute names whose maximum is the toxicity value (max-over-attributes aggregate).</summary>
    public IReadOnlyList<string> ToxicLabels { get { Load(); return _toxicIdx.Select(i => _labels[i]).ToList(); } }
    /// <summary>True when the user's --toxic-label named a label of this checkpoint.</summary>
    public bool UsesToxicLabelOverride { get { Load(); return _toxicLabelOverride.Count > 0 && _rule.Contains("--toxic-label"); } }
    /// <summary>How toxicity is made from this classifier's outputs, in words (reported with the results).</summary>
    public string ToxicityRule { get { Load(); return _rule; } }
    /// <summary>The checkpoint's identity: name, SHA-256 of model.safetensors (first 16 hex digits) and the toxicity rule,
    /// so scores from different weights or label choices are never mixed.</summary>
    public string Identity { get { Load(); return $"{Name} weights-sha256:{_weightsHash} ({_rule})"; } }

    /// <summary>Whether a 2-class label names a non-toxic class ("neutral", "nothate", "non_toxic", …).</summary>
    static bool NonToxicName(string label)
    {
        var l = label.ToLowerInvariant().Replace('-', '_').Replace(' ', '_');
        return l is "neutral" or "normal" or "clean" or "safe" or "benign" or "none" or "ok" or "acceptable" or "appropriate"
               || l.StartsWith("not", StringComparison.Ordinal) || l.StartsWith("non", StringComparison.Ordinal) || l.StartsWith("no_", StringComparison.Ordinal);
    }

    /// <summary>Whether a label names toxic content (a Perspective attribute, or hate/offensive/abusive).</summary>
    static bool ToxicName(string label) =>
        !NonToxicName(label) && (PerspectiveName(label) is not null
            || label.ToLowerInvariant() is "hate" or "hateful" or "hate_speech" or "offensive" or "abusive" or "toxic");

    /// <summary>Checks every setting; throws <see cref="InvalidSettingException"/> naming the first one out of range.</summary>
    public void Validate() => Load();

    /// <inheritdoc/>
    public void Dispose()
    {
        if (_w is null) return;
        foreach (var t in _w.Values) t.Dispose();
        _w = null;
    }

    /// <summary>Maps a classifier label to a Perspective attribute name, or null if there is none.</summary>
    public static string? PerspectiveName(string label) => label.ToLowerInvariant().Replace(' ', '_') switch
    {
        "toxic" or "toxicity" => "TOXICITY",
        "severe_toxic" or "severe_toxicity" => "SEVERE_TOXICITY",
        "obscene" => "PROFANITY",
        "identity_attack" or "identity_hate" => "IDENTITY_ATTACK",
        "insult" => "INSULT",
        "threat" => "THREAT",
        "sexual_explicit" => "SEXUALLY_EXPLICIT",
        _ => null,
    };

    void Load()
    {
        if (_w is not null) return;
        var cfgPath = Path.Combine(_dir, "config.json");
        if (!Directory.Exists(_dir)) throw new InvalidInputException($"--scorer classifier:{_dir}: directory not found");
        if (!File.Exists(cfgPath)) throw new InvalidInputException($"{cfgPath}: not found (classifier directory needs config.json, model.safetensors and tokenizer files)");
        JsonObject cfg;
        try { cfg = JsonNode.Parse(File.ReadAllText(cfgPath)) as JsonObject ?? throw new JsonException("not an object"); }
        catch (JsonException e) { throw new InvalidInputException($"{cfgPath}: malformed JSON ({e.Message.Split('.')[0]})"); }
        int Int(string k, int? d = null) => cfg[k] is JsonValue v && v.TryGetValue<int>(out var i) ? i
            : d ?? throw new InvalidInputException($"{cfgPath}: missing integer '{k}'");
        _family = cfg["model_type"]?.GetValue<string>() switch
        {
            "roberta" => "roberta",
            "bert" => "bert",
            var other => throw new InvalidInputException($"{cfgPath}: model_type '{other}' is not supported (bert or roberta)"),
        };
        _hidden = Int("hidden_size"); _heads = Int("num_attention_heads"); _layers = Int("num_hidden_layers");
        _pad = Int("pad_token_id", _family == "roberta" ? 1 : 0);
        int maxPos = Int("max_position_embeddings", 512);
        _eps = cfg["layer_norm_eps"] is JsonValue ev && ev.TryGetValue<double>(out var e0) ? e0 : 1e-12;
        _act = cfg["hidden_act"]?.GetValue<string>() ?? "gelu";
        if (_act is not ("gelu" or "gelu_new" or "gelu_pytorch_tanh" or "relu"))
            throw new InvalidInputException($"{cfgPath}: hidden_act '{_act}' is not supported (gelu, gelu_new, relu)");
        if (_hidden % _heads != 0) throw new InvalidInputException($"{cfgPath}: hidden_size {_hidden} not divisible by num_attention_heads {_heads}");
        // problem_type (transformers) or function_to_apply (the pipeline's override, set by the unitary checkpoints)
        _multiLabel = cfg["problem_type"]?.GetValue<string>() == "multi_label_classification"
                      || cfg["function_to_apply"]?.GetValue<string>() == "sigmoid";
        int limit = _family == "roberta" ? maxPos - _pad - 1 : maxPos;
        _maxLen = Math.Min(_maxLength ?? limit, limit);
        if (_maxLen < 3) throw new InvalidInputException($"classifier max length must be ≥ 3, got {_maxLen}");

        var st = Path.Combine(_dir, "model.safetensors");
        if (!File.Exists(st)) throw new InvalidInputException($"{_dir}: no model.safetensors (convert a pytorch_model.bin with safetensors' convert script)");
        var w = new Dictionary<string, Tensor>();
        foreach (var (name, t) in Safetensors.Load(st))
        {
            var n = name.StartsWith(_family + ".") ? name[(_family.Length + 1)..] : name;
            if (n.Contains("LayerNorm.")) n = n.Replace("LayerNorm.gamma", "LayerNorm.weight").Replace("LayerNorm.beta", "LayerNorm.bias");
            w[n] = t.dtype == ScalarType.Float32 ? t : t.to(ScalarType.Float32);
            if (!ReferenceEquals(w[n], t)) t.Dispose();
        }
        try
        {
            var need = new List<string> { "embeddings.word_embeddings.weight", "embeddings.position_embeddings.weight", "embeddings.LayerNorm.weight" };
            for (int l = 0; l < _layers; l++) need.Add($"encoder.layer.{l}.output.LayerNorm.weight");
            need.AddRange(_family == "bert" ? ["pooler.dense.weight", "classifier.weight"] : ["classifier.dense.weight", "classifier.out_proj.weight"]);
            var missing = need.Where(k => !w.ContainsKey(k)).ToList();
            if (missing.Count > 0) throw new InvalidInputException($"{st}: missing tensors for a {_family} sequence classifier: {string.Join(", ", missing.Take(4))}");
            _numLabels = (int)(_family == "bert" ? w["classifier.weight"] : w["classifier.out_proj.weight"]).shape[0];
            _vocabRows = (int)w["embeddings.word_embeddings.weight"].shape[0];
            _rawLabels = new string[_numLabels];
            var id2label = cfg["id2label"] as JsonObject;
            for (int i = 0; i < _numLabels; i++)
                _rawLabels[i] = id2label?[i.ToString()]?.GetValue<string>() ?? $"LABEL_{i}";
            var mapped = _rawLabels.Select(PerspectiveName).ToArray();
            _labels = _rawLabels.Select((l, i) => mapped[i] ?? l).ToArray();
            if (_labels.Distinct().Count() != _labels.Length) throw new InvalidInputException($"{cfgPath}: id2label has labels mapping to the same attribute ({string.Join(", ", _labels)})");
            // transformers' pipeline: sigmoid for multi-label heads and for a single-label head, softmax otherwise
            _sigmoid = _multiLabel || _numLabels == 1;
            ChooseToxicLabels(cfgPath, mapped);
            _weightsHash = HashFile(st);
            _encode = _family == "roberta" ? RobertaTokenizer() : BertTokenizerFn();
            _w = w;
        }
        catch
        {
            foreach (var t in w.Values) t.Dispose();
            throw;
        }
    }

    /// <summary>
    /// Which outputs make "toxicity". The user's --toxic-label wins. A sigmoid head: its one label, or the labels with a
    /// Perspective meaning (toxic-bert's 6, unbiased-toxic-roberta's 7 non-identity labels; identity groups such as
    /// "female" are not toxicity). A 2-class softmax head: P(label 1), unless the names say the toxic class is label 0
    /// (ToxiGen's LABEL_0/LABEL_1 → LABEL_1; s-nlp's neutral/toxic → toxic; {toxic, neutral} → toxic). Taking the max
    /// over both classes would always be ≥ 0.5. A wider softmax head needs labels with a Perspective meaning.
    /// </summary>
    void ChooseToxicLabels(string cfgPath, string?[] mapped)
    {
        string head = _sigmoid ? "sigmoid" : "softmax";
        var named = Enumerable.Range(0, _numLabels)
            .Where(i => _toxicLabelOverride.Any(n => string.Equals(n, _rawLabels[i], StringComparison.OrdinalIgnoreCase) || n == _labels[i])).ToArray();
        if (named.Length > 0)
        {
            _toxicIdx = named;
            int t = Array.IndexOf(_labels, ToxicityAttributes.Toxicity);
            _toxicityIdx = named.Length == 1 ? named[0] : named.Contains(t) ? t : null;
            _rule = $"{head}; toxicity = {Describe(named)} (--toxic-label)";
            return;
        }
        var withMeaning = Enumerable.Range(0, _numLabels).Where(i => mapped[i] is not null).ToArray();
        int tox = Array.IndexOf(_labels, ToxicityAttributes.Toxicity);
        if (_numLabels == 1)
            _toxicIdx = [0];
        else if (!_sigmoid && _numLabels == 2)
        {
            bool t0 = ToxicName(_rawLabels[0]), t1 = ToxicName(_rawLabels[1]), n0 = NonToxicName(_rawLabels[0]), n1 = NonToxicName(_rawLabels[1]);
            int pick = t0 && !t1 || n1 && !n0 ? 0 : 1;
            _toxicIdx = [pick];
            tox = pick;
        }
        else if (withMeaning.Length > 0)
            _toxicIdx = withMeaning;
        else
            throw new InvalidInputException($"{cfgPath}: none of the labels ({string.Join(", ", _rawLabels)}) names a kind of toxicity; name the toxic label(s) with --toxic-label NAME");
        _toxicityIdx = tox >= 0 ? tox : _toxicIdx.Length == 1 ? _toxicIdx[0] : null;
        _rule = $"{head}; toxicity = {Describe(_toxicIdx)}";
    }

    string Describe(int[] idx) => idx.Length == 1
        ? $"P({_rawLabels[idx[0]]})"
        : $"max of P({string.Join(", ", idx.Select(i => _rawLabels[i]))})";

    static string HashFile(string path)
    {
        using var f = File.OpenRead(path);
        return Convert.ToHexStringLower(System.Security.Cryptography.SHA256.HashData(f))[..16];
    }

    Func<string, List<int>> RobertaTokenizer()
    {
        string v = Path.Combine(_dir, "vocab.json"), m = Path.Combine(_dir, "merges.txt");
        if (!File.Exists(v) || !File.Exists(m)) throw new InvalidInputException($"{_dir}: RoBERTa classifier needs vocab.json and merges.txt");
        var tok = RobertaBpe.Create(v, m, out var vocab);
        int bos = vocab.TryGetValue("<s>", out var b) ? b : throw new InvalidInputException($"{v}: no <s> token");
        int eos = vocab.TryGetValue("</s>", out var eo) ? eo : throw new InvalidInputException($"{v}: no </s> token");
        if (vocab.Values.Max() >= _vocabRows) throw new InvalidInputException($"{v}: token id {vocab.Values.Max()} is outside the model's {_vocabRows} embeddings");
        int max = _maxLen;
        return text =>
        {
            var ids = tok.EncodeToIds(text).ToList();
            if (ids.Count > max - 2) ids = ids.Take(max - 2).ToList();
            return [bos, .. ids, eos];
        };
    }

    Func<string, List<int>> BertTokenizerFn()
    {
        var v = Path.Combine(_dir, "vocab.txt");
        if (!File.Exists(v)) throw new InvalidInputException($"{_dir}: BERT classifier needs vocab.txt");
        bool lower = true, chinese = true;
        bool? strip = null;
        var tc = Path.Combine(_dir, "tokenizer_config.json");
        if (File.Exists(tc))
        {
            JsonNode? n;
            try { n = JsonNode.Parse(File.ReadAllText(tc)); }
            catch (JsonException ex) { throw new InvalidInputException($"{tc}: malformed JSON ({ex.Message.Split('.')[0]})"); }
            static bool? B(JsonNode? x) => x is JsonValue jv && jv.TryGetValue<bool>(out var r) ? r : null;
            lower = B(n?["do_lower_case"]) ?? true;
            strip = B(n?["strip_accents"]);
            chinese = B(n?["tokenize_chinese_chars"]) ?? true;
        }
        var lines = File.ReadAllLines(v);
        if (lines.Length > _vocabRows) throw new InvalidInputException($"{v}: {lines.Length} tokens but the model has {_vocabRows} embeddings");
        var tok = new BertWordPieceTokenizer(lines, lower, strip, chinese);
        int cls = tok.Cls, sep = tok.Sep, max = _maxLen;
        return text =>
        {
            var ids = tok.Encode(text);
            if (ids.Count > max - 2) ids = ids.Take(max - 2).ToList();
            return [cls, .. ids, sep];
        };
    }

    /// <summary>Token ids (with the family's special tokens, truncated) the classifier sees for a text.</summary>
    public IReadOnlyList<int> Tokenize(string text) { Load(); return _encode!(text); }

    /// <summary>Raw logits [texts, labels] for already tokenized inputs (right-padded internally).</summary>
    public float[,] Logits(IReadOnlyList<IReadOnlyList<int>> batch)
    {
        Load();
        var w = _w!;
        int b = batch.Count, t = batch.Max(x => x.Count);
        var ids = new long[b * t];
        var mask = new long[b * t];
        for (int i = 0; i < b; i++)
            for (int j = 0; j < t; j++)
            {
                bool real = j < batch[i].Count;
                ids[i * t + j] = real ? batch[i][j] : _pad;
                mask[i * t + j] = real ? 1 : 0;
            }
        using var scope = torch.NewDisposeScope();
        using var noGrad = torch.no_grad();
        var idT = torch.tensor(ids, [b, t], ScalarType.Int64);
        var maskT = torch.tensor(mask, [b, t], ScalarType.Int64);
        Tensor pos = _family == "roberta"
            ? maskT.cumsum(1, ScalarType.Int64) * maskT + _pad          // create_position_ids_from_input_ids
            : torch.arange(t, ScalarType.Int64).unsqueeze(0).expand(b, t);
        var x = w["embeddings.word_embeddings.weight"].index_select(0, idT.flatten()).view(b, t, _hidden)
                + w["embeddings.position_embeddings.weight"].index_select(0, pos.flatten()).view(b, t, _hidden);
        if (w.TryGetValue("embeddings.token_type_embeddings.weight", out var tt)) x = x + tt[0];
        x = Ln(x, "embeddings.LayerNorm");
        var addMask = ((1 - maskT.to(ScalarType.Float32)) * float.MinValue).view(b, 1, 1, t);
        int hd = _hidden / _heads;
        for (int l = 0; l < _layers; l++)
        {
            string p = $"encoder.layer.{l}.";
            Tensor Split(Tensor y) => y.view(b, t, _heads, hd).transpose(1, 2);
            var q = Split(Lin(x, p + "attention.self.query"));
            var k = Split(Lin(x, p + "attention.self.key"));
            var v = Split(Lin(x, p + "attention.self.value"));
            var att = (q.matmul(k.transpose(-1, -2)) / Math.Sqrt(hd) + addMask).softmax(-1);
            var ctx = att.matmul(v).transpose(1, 2).reshape(b, t, _hidden);
            var a = Ln(Lin(ctx, p + "attention.output.dense") + x, p + "attention.output.LayerNorm");
            var inter = Lin(a, p + "intermediate.dense");
            inter = _act switch
            {
                "gelu" => NF.gelu(inter),
                "relu" => NF.relu(inter),
                _ => 0.5 * inter * (1 + torch.tanh(Math.Sqrt(2 / Math.PI) * (inter + 0.044715 * inter.pow(3)))),
            };
            x = Ln(Lin(inter, p + "output.dense") + a, p + "output.LayerNorm");
        }
        var first = x.select(1, 0);
        var logits = _family == "bert"
            ? Lin(torch.tanh(Lin(first, "pooler.dense")), "classifier")
            : Lin(torch.tanh(Lin(first, "classifier.dense")), "classifier.out_proj");
        var data = logits.contiguous().data<float>().ToArray();
        var r = new float[b, _numLabels];
        for (int i = 0; i < b; i++) for (int j = 0; j < _numLabels; j++) r[i, j] = data[i * _numLabels + j];
        return r;
    }

    Tensor Lin(Tensor x, string name)
    {
        var w = _w!;
        if (!w.TryGetValue(name + ".weight", out var wt)) throw new InvalidInputException($"{_dir}/model.safetensors: missing tensor {name}.weight");
        return NF.linear(x, wt, w.GetValueOrDefault(name + ".bias"));
    }

    Tensor Ln(Tensor x, string name)
    {
        var w = _w!;
        if (!w.TryGetValue(name + ".weight", out var g)) throw new InvalidInputException($"{_dir}/model.safetensors: missing tensor {name}.weight");
        return NF.layer_norm(x, [_hidden], g, w.GetValueOrDefault(name + ".bias"), _eps);
    }

    /// <inheritdoc/>
    public IReadOnlyList<ToxicityScore> Score(IReadOnlyList<string> texts, ToxicityAggregate aggregate = ToxicityAggregate.MaxOverAttributes)
    {
        Load();
        // Batches of similar length (texts sorted by token count) waste little compute on padding; results are
        // returned in the input order. A text's numbers depend on its batch only at float rounding level.
        var encoded = texts.Select(t => (IReadOnlyList<int>)_encode!(t)).ToList();
        var order = Enumerable.Range(0, texts.Count).OrderBy(i => encoded[i].Count).ToArray();
        var result = new ToxicityScore[texts.Count];
        for (int s = 0; s < texts.Count; s += _batchSize)
        {
            var idx = order.Skip(s).Take(_batchSize).ToArray();
            var batch = idx.Select(i => encoded[i]).ToList();
            var logits = Logits(batch);
            for (int i = 0; i < batch.Count; i++)
            {
                var probs = new double[_numLabels];
                if (_sigmoid)
                    for (int j = 0; j < _numLabels; j++) probs[j] = 1 / (1 + Math.Exp(-logits[i, j]));
                else
                {
                    double mx = double.NegativeInfinity;
                    for (int j = 0; j < _numLabels; j++) mx = Math.Max(mx, logits[i, j]);
                    double z = 0;
                    for (int j = 0; j < _numLabels; j++) z += probs[j] = Math.Exp(logits[i, j] - mx);
                    for (int j = 0; j < _numLabels; j++) probs[j] /= z;
                }
                var attrs = new Dictionary<string, double>();
                for (int j = 0; j < _numLabels; j++) attrs[_labels[j]] = probs[j];
                double value;
                if (aggregate == ToxicityAggregate.Toxicity)
                    value = _toxicityIdx is { } ti ? probs[ti]
                        : throw new InvalidInputException($"{Name}: no toxic/toxicity label (labels: {string.Join(", ", _rawLabels)}); use the max-over-attributes aggregate or name one with --toxic-label");
                else
                    value = _toxicIdx.Max(j => probs[j]);
                result[idx[i]] = new ToxicityScore(attrs, value);
            }
        }
        return result;
    }
}
