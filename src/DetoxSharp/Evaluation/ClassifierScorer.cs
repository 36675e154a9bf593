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
/// when config.json says <c>problem_type: multi_label_classification</c>, else softmax. Labels (id2label) are mapped to
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
    bool _multiLabel;
    string[] _labels = [];
    bool[] _isToxicityLabel = [];
    Func<string, List<int>>? _encode;

    public ClassifierScorer(string directory, int batchSize = 32, int? maxLength = null)
    {
        _dir = directory;
        if (batchSize < 1) throw new InvalidInputException($"classifier batch size must be ≥ 1, got {batchSize}");
        _batchSize = batchSize;
        _maxLength = maxLength;
    }

    public string Name => $"classifier:{Path.GetFileName(Path.GetFullPath(_dir).TrimEnd(Path.DirectorySeparatorChar))}";
    public string Family { get { Load(); return _family; } }
    public IReadOnlyList<string> Labels { get { Load(); return _labels; } }
    public bool MultiLabel { get { Load(); return _multiLabel; } }

    public void Validate() => Load();

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
            _labels = new string[_numLabels];
            var id2label = cfg["id2label"] as JsonObject;
            for (int i = 0; i < _numLabels; i++)
                _labels[i] = id2label?[i.ToString()]?.GetValue<string>() ?? $"LABEL_{i}";
            var mapped = _labels.Select(PerspectiveName).ToArray();
            _isToxicityLabel = mapped.Select(m => m is not null).ToArray();
            if (!_isToxicityLabel.Any(b => b)) _isToxicityLabel = _labels.Select(_ => true).ToArray();
            _labels = _labels.Select((l, i) => mapped[i] ?? l).ToArray();
            if (_labels.Distinct().Count() != _labels.Length) throw new InvalidInputException($"{cfgPath}: id2label has labels mapping to the same attribute ({string.Join(", ", _labels)})");
            _encode = _family == "roberta" ? RobertaTokenizer() : BertTokenizerFn();
            _w = w;
        }
        catch
        {
            foreach (var t in w.Values) t.Dispose();
            throw;
        }
    }

    Func<string, List<int>> RobertaTokenizer()
    {
        string v = Path.Combine(_dir, "vocab.json"), m = Path.Combine(_dir, "merges.txt");
        if (!File.Exists(v) || !File.Exists(m)) throw new InvalidInputException($"{_dir}: RoBERTa classifier needs vocab.json and merges.txt");
        Dictionary<string, int> vocab;
        try { vocab = JsonSerializer.Deserialize<Dictionary<string, int>>(File.ReadAllText(v)) ?? throw new JsonException("null"); }
        catch (JsonException e) { throw new InvalidInputException($"{v}: malformed vocab.json ({e.Message.Split('.')[0]})"); }
        int bos = vocab.TryGetValue("<s>", out var b) ? b : throw new InvalidInputException($"{v}: no <s> token");
        int eos = vocab.TryGetValue("</s>", out var eo) ? eo : throw new InvalidInputException($"{v}: no </s> token");
        // Microsoft.ML.Tokenizers' CodeGenTokenizer.Create requires GPT-2's <|endoftext|> as its unknown token; RoBERTa
        // vocabularies lack it, so it is added at an id past the vocabulary and mapped back to <unk> after encoding.
        int fakeId = vocab.Values.Max() + 1;
        int unk = vocab.TryGetValue("<unk>", out var u) ? u : eos;
        var patched = new Dictionary<string, int>(vocab);
        patched.TryAdd("<|endoftext|>", fakeId);
        CodeGenTokenizer tok;
        using (var vs = new MemoryStream(JsonSerializer.SerializeToUtf8Bytes(patched)))
        using (var ms = File.OpenRead(m))
            tok = CodeGenTokenizer.Create(vs, ms, addPrefixSpace: false, addBeginOfSentence: false, addEndOfSentence: false);
        int max = _maxLen;
        return text =>
        {
            var ids = tok.EncodeToIds(text).Select(i => i == fakeId ? unk : i).ToList();
            if (ids.Count > max - 2) ids = ids.Take(max - 2).ToList();
            return [bos, .. ids, eos];
        };
    }

    Func<string, List<int>> BertTokenizerFn()
    {
        var v = Path.Combine(_dir, "vocab.txt");
        if (!File.Exists(v)) throw new InvalidInputException($"{_dir}: BERT classifier needs vocab.txt");
        bool lower = true;
        var tc = Path.Combine(_dir, "tokenizer_config.json");
        if (File.Exists(tc))
        {
            try { if (JsonNode.Parse(File.ReadAllText(tc))?["do_lower_case"] is JsonValue lv && lv.TryGetValue<bool>(out var l)) lower = l; }
            catch (JsonException ex) { throw new InvalidInputException($"{tc}: malformed JSON ({ex.Message.Split('.')[0]})"); }
        }
        var tok = BertTokenizer.Create(v, new BertOptions { LowerCaseBeforeTokenization = lower });
        int cls = tok.ClassificationTokenId, sep = tok.SeparatorTokenId, max = _maxLen;
        return text =>
        {
            var ids = tok.EncodeToIds(text, addSpecialTokens: false).ToList();
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

    public IReadOnlyList<ToxicityScore> Score(IReadOnlyList<string> texts, ToxicityAggregate aggregate = ToxicityAggregate.MaxOverAttributes)
    {
        Load();
        var result = new List<ToxicityScore>(texts.Count);
        for (int s = 0; s < texts.Count; s += _batchSize)
        {
            var batch = texts.Skip(s).Take(_batchSize).Select(t => (IReadOnlyList<int>)_encode!(t)).ToList();
            var logits = Logits(batch);
            for (int i = 0; i < batch.Count; i++)
            {
                var probs = new double[_numLabels];
                if (_multiLabel)
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
                    value = attrs.TryGetValue(ToxicityAttributes.Toxicity, out var tv) ? tv
                        : throw new InvalidInputException($"{Name}: no toxic/toxicity label (labels: {string.Join(", ", _labels)}); use the max-over-attributes aggregate");
                else
                    value = Enumerable.Range(0, _numLabels).Where(j => _isToxicityLabel[j]).Max(j => probs[j]);
                result.Add(new ToxicityScore(attrs, value));
            }
        }
        return result;
    }
}
