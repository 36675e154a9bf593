using System.Security.Cryptography;
using DetoxSharp.Text;
using TorchSharp;
using static TorchSharp.torch;

namespace DetoxSharp.Data;

/// <summary>One preference record: prompt x, chosen y_w, rejected y_l and (ADPO) the toxic response y_t. An unpaired KTO
/// record (<see cref="PreferenceData.ReadKto"/>) carries its completion as Chosen, a mismatched completion (another
/// record's, for KTO's KL estimate) as Rejected and its label as Desirable.</summary>
public sealed record PreferenceExample(string Prompt, string Chosen, string Rejected, string? Toxic = null, string Where = "", bool? Desirable = null);

/// <summary>Which JSONL layout a preference file uses.</summary>
public enum PreferenceFormat
{
    /// <summary>Detect per file: `prompt_text` → Mechanistic, otherwise Standard (with optional `toxic`).</summary>
    Auto,
    /// <summary>`prompt`, `chosen`, `rejected` (optional `toxic`).</summary>
    Standard,
    /// <summary>The mechanistic study's pairs: `prompt_text`, `unpert_gen_text` (chosen), `pert_gen_text` (rejected).</summary>
    Mechanistic,
    /// <summary>ADPO triples: `prompt`, `chosen`, `rejected`, `toxic` (all required).</summary>
    Adpo,
}

/// <summary>Token limits. The prompt is cut from the left (keeping its end), completions from the right.
/// Names as TRL's DPOConfig (max_prompt_length / max_completion_length / max_length), in tokens.</summary>
public sealed record TruncationOptions(
    [property: Setting("prompt limit in tokens (cut from the left)")] int MaxPromptTokens = 64,
    [property: Setting("completion limit in tokens")] int MaxCompletionTokens = 64,
    [property: Setting("prompt + completion limit in tokens")] int MaxLength = 256)
{
    /// <summary>Checks every setting; throws <see cref="InvalidSettingException"/> naming the first one out of range.</summary>
    public void Validate()
    {
        InvalidSettingException.Require(MaxPromptTokens >= 1, "max_prompt_tokens", $"must be ≥ 1 (got {MaxPromptTokens})");
        InvalidSettingException.Require(MaxCompletionTokens >= 1, "max_completion_tokens", $"must be ≥ 1 (got {MaxCompletionTokens})");
        InvalidSettingException.Require(MaxLength >= 2, "max_length", $"must be ≥ 2 (got {MaxLength})");
    }
}

/// <summary>A tokenized example. ToxicPrompt = prompt followed by the [TOXIC] control token (π_tox's context for y_t).</summary>
public sealed record TokenizedExample(int[] Prompt, int[] Chosen, int[] Rejected, int[]? Toxic, int[]? ToxicPrompt, string Where, bool? Desirable = null);

/// <summary>Right-padded batch of prompt+completion sequences.</summary>
/// <param name="Ids">[B,T] int64, padding = pad id.</param>
/// <param name="AttentionMask">[B,T] int64, 1 real, 0 pad.</param>
/// <param name="CompletionMask">[B,T-1] float32 aligned with LogProbs (entry t-1 scores token t): 1 on completion tokens only.</param>
public sealed record SequenceBatch(Tensor Ids, Tensor AttentionMask, Tensor CompletionMask) : IDisposable
{
    /// <summary>Disposes the three tensors.</summary>
    public void Dispose() { Ids.Dispose(); AttentionMask.Dispose(); CompletionMask.Dispose(); }
}

/// <summary>Preference data: reading (JSONL, CSV; TRL-style pairs, KTO rows), splitting, tokenizing and batching.</summary>
public static class PreferenceData
{
    /// <summary>Reads a preference file (JSONL or Parquet). Identical chosen/rejected pairs are skipped with a warning; if
    /// every pair is identical → error. TRL's formats: standard (strings) or conversational (message lists, rendered with
    /// <paramref name="chat"/>, see <see cref="Conversations"/>), with an explicit <c>prompt</c> or an implicit one (the
    /// common start of chosen and rejected).</summary>
    /// <param name="path">The file.</param>
    /// <param name="format">Which layout.</param>
    /// <param name="warn">Receives warnings.</param>
    /// <param name="chat">The model's chat template, for conversational records (null: such records are an error).</param>
    public static List<PreferenceExample> Read(string path, PreferenceFormat format = PreferenceFormat.Auto, Action<string>? warn = null, ChatTemplate? chat = null)
    {
        var all = new List<PreferenceExample>();
        foreach (var line in JsonlReader.Read(path))
        {
            var f = format;
            if (f == PreferenceFormat.Auto) f = line.Object.ContainsKey("prompt_text") ? PreferenceFormat.Mechanistic : PreferenceFormat.Standard;
            if (f == PreferenceFormat.Mechanistic)
            {
                all.Add(new PreferenceExample(line.String("prompt_text"), line.String("unpert_gen_text"), line.String("pert_gen_text"), null, line.Where));
                continue;
            }
            bool needToxic = f == PreferenceFormat.Adpo || line.Object["toxic"] is not null;
            string[] fields = needToxic ? ["chosen", "rejected", "toxic"] : ["chosen", "rejected"];
            if (needToxic && line.Object["toxic"] is null) line.String("toxic"); // the missing-field error
            var (prompt, texts) = PromptAndCompletions(line, fields, chat);
            all.Add(new PreferenceExample(prompt, texts[0], texts[1], needToxic ? texts[2] : null, line.Where));
        }
        var identical = all.Where(e => e.Chosen == e.Rejected).ToList();
        if (identical.Count == all.Count)
            throw new InvalidInputException($"{path}: chosen == rejected in all {identical.Count} pairs; nothing to learn from");
        if (identical.Count > 0)
            warn?.Invoke($"{path}: skipping {identical.Count} of {all.Count} pairs whose chosen == rejected (first at {identical[0].Where})");
        int withToxic = all.Count(e => e.Toxic is not null);
        if (withToxic > 0 && withToxic < all.Count)
            throw new InvalidInputException($"{all.First(e => e.Toxic is null).Where}: field 'toxic' missing (other lines have it)");
        return all.Where(e => e.Chosen != e.Rejected).ToList();
    }

    /// <summary>Reads unpaired KTO data as TRL's KTOTrainer does: JSONL with string `prompt` and `completion` and a
    /// boolean `label` (true = desirable). Record i's mismatched completion (for the KL estimate z₀) is record i−1's
    /// (the first takes the last's), fixed here so that reference log-probs of both can be cached.</summary>
    /// <param name="path">The file (JSONL or Parquet).</param>
    /// <param name="chat">The model's chat template, for conversational records.</param>
    public static List<PreferenceExample> ReadKto(string path, ChatTemplate? chat = null)
    {
        var rows = new List<(string Prompt, string Completion, bool Label, string Where)>();
        foreach (var line in JsonlReader.Read(path))
        {
            var n = line.Object["label"] ?? throw new InvalidInputException($"{line.Where}: missing field 'label' (KTO data: prompt, completion, label true/false; `detox convert pairs-to-kto` makes it from pairs)");
            if (n is not System.Text.Json.Nodes.JsonValue v || !v.TryGetValue<bool>(out var label))
                throw new InvalidInputException($"{line.Where}: field 'label' must be true or false");
            var (prompt, texts) = PromptAndCompletions(line, ["completion"], chat);
            rows.Add((prompt, texts[0], label, line.Where));
        }
        if (rows.Count < 2) throw new InvalidInputException($"{path}: KTO needs at least 2 records (the KL estimate pairs each prompt with another record's completion)");
        return rows.Select((r, i) => new PreferenceExample(r.Prompt, r.Completion, rows[(i + rows.Count - 1) % rows.Count].Completion, null, r.Where, r.Label)).ToList();
    }

    /// <summary>A record's prompt and completion texts, standard or conversational (TRL): <c>prompt</c> a string and
    /// the completions strings, or all message lists (rendered with the chat template); without <c>prompt</c>, the
    /// prompt is the common start of the completions (TRL's implicit prompt).</summary>
    /// <param name="line">The record.</param>
    /// <param name="fields">The completion fields (chosen, rejected[, toxic] or completion).</param>
    /// <param name="chat">The model's chat template, for conversational records.</param>
    public static (string Prompt, string[] Completions) PromptAndCompletions(JsonlReader.Line line, string[] fields, ChatTemplate? chat)
    {
        var o = line.Object;
        bool conversational = Conversations.IsConversation(o["prompt"]) || fields.Any(f => Conversations.IsConversation(o[f]));
        bool implicitPrompt = o["prompt"] is null && fields.Length >= 2 && fields.All(f => o[f] is not null);
        if (!conversational)
        {
            if (!implicitPrompt) return (line.String("prompt"), fields.Select(line.String).ToArray());
            var texts = fields.Select(line.String).ToArray();
            int n = Conversations.CommonPrefix(texts[0], texts[1]);
            if (n == 0) throw new InvalidInputException($"{line.Where}: missing field 'prompt' (and chosen/rejected share no start to take it from)");
            return (texts[0][..n], texts.Select(t => t.Length >= n && t.StartsWith(texts[0][..n], StringComparison.Ordinal) ? t[n..] : throw new InvalidInputException($"{line.Where}: without 'prompt', every completion must start with the implicit prompt")).ToArray());
        }
        List<ChatMessage> prompt;
        List<ChatMessage>[] completions;
        if (implicitPrompt)
        {
            var convs = fields.Select(f => Conversations.Messages(line, f)).ToArray();
            int n = Conversations.CommonPrefix(convs[0], convs[1]);
            if (n == 0) throw new InvalidInputException($"{line.Where}: missing field 'prompt' (and chosen/rejected share no first message to take it from)");
            prompt = convs[0][..n];
            completions = convs.Select(c => c.Count > n && c.Take(n).SequenceEqual(prompt) ? c[n..] : throw new InvalidInputException($"{line.Where}: without 'prompt', every conversation must start with the shared prompt messages and add a reply")).ToArray();
        }
        else
        {
            if (o["prompt"] is null) line.String("prompt"); // the missing-field error
            prompt = Conversations.Messages(line, "prompt");
            foreach (var f in fields) if (o[f] is null) line.String(f); // the missing-field error
            completions = fields.Select(f => Conversations.Messages(line, f)).ToArray();
        }
        return (Conversations.RenderPrompt(chat, line, prompt),
            fields.Select((f, i) => Conversations.RenderCompletion(chat, line, prompt, completions[i], f)).ToArray());
    }

    /// <summary>Unpairs preference pairs into KTO records as TRL's <c>unpair_preference_dataset</c>: every chosen
    /// completion with label true, then every rejected one with label false, each with its prompt.</summary>
    public static List<System.Text.Json.Nodes.JsonObject> PairsToKto(IReadOnlyList<PreferenceExample> pairs) =>
        pairs.Select(e => (e.Prompt, e.Chosen, true)).Concat(pairs.Select(e => (e.Prompt, e.Rejected, false)))
            .Select(r => new System.Text.Json.Nodes.JsonObject { ["prompt"] = r.Prompt, ["completion"] = r.Item2, ["label"] = r.Item3 })
            .ToList();

    /// <summary>Unpairs a preference file (JSONL or Parquet) into KTO records as TRL's <c>unpair_preference_dataset</c>,
    /// with no model: every chosen completion with label true, then every rejected one with label false. Standard records
    /// (strings; the mechanistic study's prompt_text/unpert_gen_text/pert_gen_text; an implicit prompt) give string rows
    /// as <see cref="PairsToKto(IReadOnlyList{PreferenceExample})"/>; TRL conversational records (message lists) give
    /// conversational rows — <c>prompt</c> and <c>completion</c> message lists, rendered later with the chat template of
    /// the model that trains on them (an implicit prompt becomes the shared leading messages, as TRL's
    /// <c>extract_prompt</c>). A <c>toxic</c> field (ADPO) is dropped. Pairs with chosen == rejected are skipped with a
    /// warning (all of them → error), as <see cref="Read"/> does.</summary>
    /// <param name="path">The pairs file.</param>
    /// <param name="warn">Receives warnings.</param>
    public static List<System.Text.Json.Nodes.JsonObject> PairsToKto(string path, Action<string>? warn = null)
    {
        var pairs = new List<(System.Text.Json.Nodes.JsonNode Prompt, System.Text.Json.Nodes.JsonNode Chosen, System.Text.Json.Nodes.JsonNode Rejected, string Where)>();
        foreach (var line in JsonlReader.Read(path))
        {
            var o = line.Object;
            if (o.ContainsKey("prompt_text"))
            {
                pairs.Add((line.String("prompt_text"), line.String("unpert_gen_text"), line.String("pert_gen_text"), line.Where));
                continue;
            }
            bool conversational = Conversations.IsConversation(o["prompt"]) || Conversations.IsConversation(o["chosen"]) || Conversations.IsConversation(o["rejected"]);
            if (!conversational)
            {
                var (p, t) = PromptAndCompletions(line, ["chosen", "rejected"], null);
                pairs.Add((p, t[0], t[1], line.Where));
                continue;
            }
            foreach (var f in new[] { "chosen", "rejected" }) if (o[f] is null) line.String(f); // the missing-field error
            var chosen = Conversations.Messages(line, "chosen");
            var rejected = Conversations.Messages(line, "rejected");
            List<ChatMessage> prompt;
            if (o["prompt"] is null)
            {
                int n = Conversations.CommonPrefix(chosen, rejected);
                if (n == 0) throw new InvalidInputException($"{line.Where}: missing field 'prompt' (and chosen/rejected share no first message to take it from)");
                if (chosen.Count == n || rejected.Count == n)
                    throw new InvalidInputException($"{line.Where}: without 'prompt', every conversation must start with the shared prompt messages and add a reply");
                prompt = chosen[..n];
                chosen = chosen[n..];
                rejected = rejected[n..];
            }
            else prompt = Conversations.Messages(line, "prompt");
            pairs.Add((Messages(prompt), Messages(chosen), Messages(rejected), line.Where));
        }
        var identical = pairs.Where(e => System.Text.Json.Nodes.JsonNode.DeepEquals(e.Chosen, e.Rejected)).ToList();
        if (pairs.Count > 0 && identical.Count == pairs.Count)
            throw new InvalidInputException($"{path}: chosen == rejected in all {identical.Count} pairs; nothing to learn from");
        if (identical.Count > 0)
            warn?.Invoke($"{path}: skipping {identical.Count} of {pairs.Count} pairs whose chosen == rejected (first at {identical[0].Where})");
        var kept = pairs.Where(e => !System.Text.Json.Nodes.JsonNode.DeepEquals(e.Chosen, e.Rejected)).ToList();
        return kept.Select(e => (e.Prompt, Completion: e.Chosen, Label: true)).Concat(kept.Select(e => (e.Prompt, Completion: e.Rejected, Label: false)))
            .Select(r => new System.Text.Json.Nodes.JsonObject { ["prompt"] = r.Prompt.DeepClone(), ["completion"] = r.Completion.DeepClone(), ["label"] = r.Label })
            .ToList();

        static System.Text.Json.Nodes.JsonArray Messages(IEnumerable<ChatMessage> messages) =>
            new([.. messages.Select(m => (System.Text.Json.Nodes.JsonNode)new System.Text.Json.Nodes.JsonObject { ["role"] = m.Role, ["content"] = m.Content })]);
    }

    /// <summary>Seeded shuffle, then the first `validation` examples form the validation set.</summary>
    public static (List<T> Train, List<T> Validation) Split<T>(IReadOnlyList<T> items, int validation, ulong seed)
    {
        if (validation < 0 || validation >= items.Count)
            throw new InvalidInputException($"--validation {validation}: must be ≥ 0 and smaller than the {items.Count} examples");
        var shuffled = Shuffle(items, seed);
        return (shuffled.Skip(validation).ToList(), shuffled.Take(validation).ToList());
    }

    /// <summary>Deterministic Fisher–Yates shuffle (System.Random with a seed is stable across runs of .NET). The 64-bit
    /// seed is folded to System.Random's 32 bits (x ^ x >> 32), which leaves seeds below 2³¹ as they were.</summary>
    public static List<T> Shuffle<T>(IEnumerable<T> items, ulong seed)
    {
        var list = items.ToList();
        var rng = new Random(unchecked((int)(seed ^ (seed >> 32))));
        for (int i = list.Count - 1; i > 0; i--)
        {
            int j = rng.Next(i + 1);
            (list[i], list[j]) = (list[j], list[i]);
        }
        return list;
    }

    /// <summary>Tokenizes an example. Completions are tokenized on their own and appended to the prompt ids.</summary>
    public static TokenizedExample Tokenize(PreferenceExample e, Gpt2Tokenizer tok, TruncationOptions trunc, int? toxicTokenId = null)
    {
        var prompt = tok.EncodeWithSpecialTokens(e.Prompt);
        if (prompt.Length == 0) prompt = [tok.EosTokenId];
        prompt = PromptTruncation.KeepLast(prompt, trunc.MaxPromptTokens, tok);
        int room = Math.Min(trunc.MaxCompletionTokens, trunc.MaxLength - prompt.Length);
        if (room < 1)
        {
            prompt = PromptTruncation.KeepLast(prompt, trunc.MaxLength - 1, tok);
            room = 1;
        }
        int[] Completion(string s, string field)
        {
            var ids = tok.Encode(s);
            if (ids.Length == 0) throw new InvalidInputException($"{e.Where}: field '{field}' is empty");
            return ids.Length > room ? ids[..room] : ids;
        }
        var chosen = Completion(e.Chosen, "chosen");
        var rejected = Completion(e.Rejected, "rejected");
        int[]? toxic = e.Toxic is null ? null : Completion(e.Toxic, "toxic");
        int[]? toxicPrompt = null;
        if (toxicTokenId is int t) toxicPrompt = [.. prompt, t]; // the control token opens the reply, as in the SFT dialogues
        return new TokenizedExample(prompt, chosen, rejected, toxic, toxicPrompt, e.Where, e.Desirable);
    }


    /// <summary>Builds a right-padded batch; the completion mask covers exactly the completion tokens (never prompt or padding).</summary>
    public static SequenceBatch Build(IReadOnlyList<(int[] Prompt, int[] Completion)> seqs, int padId, Device? device = null)
    {
        int b = seqs.Count;
        int t = seqs.Max(s => s.Prompt.Length + s.Completion.Length);
        var ids = new long[b * t];
        var att = new long[b * t];
        var cm = new float[b * (t - 1)];
        for (int i = 0; i < b; i++)
        {
            var (p, c) = seqs[i];
            for (int j = 0; j < t; j++)
            {
                int len = p.Length + c.Length;
                ids[i * t + j] = j < p.Length ? p[j] : j < len ? c[j - p.Length] : padId;
                att[i * t + j] = j < len ? 1 : 0;
                if (j >= p.Length && j < len) cm[i * (t - 1) + j - 1] = 1f;
            }
        }
        device ??= torch.CPU;
        return new SequenceBatch(torch.tensor(ids, [b, t], device: device), torch.tensor(att, [b, t], device: device),
            torch.tensor(cm, [b, t - 1], device: device));
    }

    /// <summary>Stable hash of tokenized data + truncation settings (part of the reference cache key).</summary>
    public static string Hash(IEnumerable<TokenizedExample> examples, TruncationOptions trunc)
    {
        using var h = IncrementalHash.CreateHash(HashAlgorithmName.SHA256);
        void Add(int[]? a)
        {
            if (a is null) { h.AppendData(BitConverter.GetBytes(-1)); return; }
            h.AppendData(BitConverter.GetBytes(a.Length));
            foreach (var x in a) h.AppendData(BitConverter.GetBytes(x));
        }
        h.AppendData(System.Text.Encoding.UTF8.GetBytes($"{trunc.MaxPromptTokens}/{trunc.MaxCompletionTokens}/{trunc.MaxLength}"));
        foreach (var e in examples)
        {
            Add(e.Prompt); Add(e.Chosen); Add(e.Rejected); Add(e.Toxic); Add(e.ToxicPrompt);
            if (e.Desirable is bool d) h.AppendData([(byte)(d ? 2 : 1)]);
        }
        return Convert.ToHexString(h.GetHashAndReset()).ToLowerInvariant();
    }
}
