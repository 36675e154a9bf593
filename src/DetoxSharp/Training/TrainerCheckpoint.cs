using DetoxSharp.Data;
using System.Text.Json;
using System.Text.Json.Nodes;
using DetoxSharp.Checkpoints;
using DetoxSharp.Models;
using DetoxSharp.Text;
using TorchSharp;
using static TorchSharp.torch;

namespace DetoxSharp.Training;

/// <summary>
/// A resumable training checkpoint: the model as a normal Hugging Face directory (model/), the optimizer state
/// (optimizer.bin), torch's RNG state (rng.bin) and the trainer's own state (trainer_state.json: step, data position,
/// shuffle seed, best validation loss …). Written under a temporary name and renamed, so a crash mid-save leaves the
/// previous checkpoint intact. Resuming restores all of it, so the resumed run ends with the same weights.
/// </summary>
public static class TrainerCheckpoint
{
    /// <summary>Key under which the optimizer's kind (its TorchSharp type name) is recorded in trainer_state.json:
    /// optimizer.bin has no self-description, and TorchSharp reads another optimizer's state as garbage or fails.</summary>
    const string OptimizerKey = "optimizer_kind";
    const string ChecksumKey = "sha256";
    /// <summary>The files whose SHA-256 a checkpoint records: the optimizer state, the RNG state and every safetensors
    /// file of the weights (one file, shards, or a LoRA run's adapter_model.safetensors).</summary>
    static IEnumerable<string> Checksummed(string dir) =>
        new[] { "optimizer.bin", "rng.bin" }.Concat(Directory.EnumerateFiles(Path.Combine(dir, "model"), "*.safetensors")
            .Select(f => "model/" + Path.GetFileName(f)).Order(StringComparer.Ordinal));

    /// <summary>A checksum key read back from trainer_state.json names one of those files and nothing else (no other
    /// folder, no "..").</summary>
    static bool IsChecksummedName(string f) =>
        f is "optimizer.bin" or "rng.bin"
        || (f.StartsWith("model/", StringComparison.Ordinal) && f.EndsWith(".safetensors", StringComparison.Ordinal)
            && Path.GetFileName(f) == f["model/".Length..] && !f.Contains(".."));

    static string Sha256(string path)
    {
        using var f = File.OpenRead(path);
        return Convert.ToHexStringLower(System.Security.Cryptography.SHA256.HashData(f));
    }

    /// <summary>Writes a resumable checkpoint (atomically): the model as a Hugging Face checkpoint, the optimizer state, torch's RNG state and <paramref name="trainerState"/>.</summary>
    /// <param name="dir">The checkpoint directory.</param>
    /// <param name="model">The model.</param>
    /// <param name="tokenizer">Its tokenizer (null: none written).</param>
    /// <param name="optimizer">The optimizer whose state is saved.</param>
    /// <param name="trainerState">The trainer's state (step, settings, …).</param>
    public static void Save(string dir, ICausalLM model, Gpt2Tokenizer? tokenizer, TorchSharp.Modules.OptimizerHelper optimizer, JsonObject trainerState)
    {
        var state = (JsonObject)trainerState.DeepClone();
        state[OptimizerKey] = optimizer.GetType().Name;
        AtomicDirectory.Write(dir, tmp =>
        {
            HfCheckpoint.Save(model, tokenizer, Path.Combine(tmp, "model"), overwrite: true);
            optimizer.save_state_dict(Path.Combine(tmp, "optimizer.bin"));
            using (var rng = torch.get_rng_state())
                File.WriteAllBytes(Path.Combine(tmp, "rng.bin"), rng.bytes.ToArray());
            // no format here has a checksum: a flipped byte inside optimizer.bin, rng.bin or the weights would load
            // silently, so their SHA-256 goes into trainer_state.json and is checked on resume
            var sums = new JsonObject();
            foreach (var f in Checksummed(tmp)) sums[f] = Sha256(Path.Combine(tmp, f));
            state[ChecksumKey] = sums;
            File.WriteAllText(Path.Combine(tmp, "trainer_state.json"), state.ToJsonString(new JsonSerializerOptions { WriteIndented = true }));
        });
    }

    /// <summary>Whether <paramref name="dir"/> holds a checkpoint, after repairing an interrupted save of it
    /// (<see cref="AtomicDirectory.Recover"/>: a kill between the swap's two renames leaves it as .NAME.old-*).</summary>
    public static bool Exists(string dir)
    {
        AtomicDirectory.Recover(dir);
        return File.Exists(Path.Combine(dir, "trainer_state.json"));
    }

    /// <summary>Restores weights into <paramref name="model"/>, the optimizer state and the RNG; returns the trainer
    /// state. Every file is checked before anything is restored: a corrupt or mismatched checkpoint is an
    /// <see cref="InvalidInputException"/> naming the file, and the model, optimizer and RNG are then untouched.</summary>
    public static JsonObject Load(string dir, ICausalLM model, TorchSharp.Modules.OptimizerHelper optimizer)
    {
        if (!Exists(dir)) throw new InvalidInputException($"{dir}: no training checkpoint (trainer_state.json missing)");
        var statePath = Path.Combine(dir, "trainer_state.json");
        var state = StrictJson.ParseFileObject(statePath, "trainer_state.json");
        string? savedKind = StrictJson.OptionalString(state, OptimizerKey, statePath);
        // a checkpoint from before the trainers used fused optimizers holds TorchSharp's state of the same algorithm
        bool legacy = optimizer is FusedOptimizer fused && savedKind == fused.TorchSharpKind;
        if (savedKind is string kind && kind != optimizer.GetType().Name && !legacy)
            throw new InvalidInputException($"{statePath}: the checkpoint was trained with {kind}, this run uses {optimizer.GetType().Name} (--optimizer); resume with the same optimizer or start a new run");
        var optPath = Path.Combine(dir, "optimizer.bin");
        var rngPath = Path.Combine(dir, "rng.bin");
        foreach (var f in new[] { optPath, rngPath })
            if (!File.Exists(f)) throw new InvalidInputException($"{f}: missing from the checkpoint");
        if (state[ChecksumKey] is JsonNode sumsNode)
        {
            if (sumsNode is not JsonObject sums) throw new InvalidInputException($"{statePath}: \"{ChecksumKey}\" must be an object");
            foreach (var (f, expected) in sums)
            {
                if (!IsChecksummedName(f)) continue;
                var file = Path.Combine(dir, f);
                if (!File.Exists(file)) throw new InvalidInputException($"{file}: missing from the checkpoint");
                if (StrictJson.String(expected, statePath, $"{ChecksumKey}.{f}") != Sha256(file))
                    throw new InvalidInputException($"{file}: corrupt (its SHA-256 differs from the one trainer_state.json recorded when the checkpoint was written)");
            }
        }
        var bytes = File.ReadAllBytes(rngPath);
        using (var current = torch.get_rng_state())
            if (bytes.Length != current.bytes.Length)
                throw new InvalidInputException($"{rngPath}: corrupt RNG state ({bytes.Length} bytes, expected {current.bytes.Length})");
        using (var saved = HfCheckpoint.Load(Path.Combine(dir, "model"), new LoadOptions { DType = model.DType, Device = model.Device }))
        {
            // the optimizer is loaded before the weights are copied, so a failure leaves the model as it was
            try { if (legacy) ((FusedOptimizer)optimizer).LoadTorchSharpState(optPath); else optimizer.load_state_dict(optPath); }
            // a corrupt length field can also make the reader allocate an absurd array (OutOfMemoryException)
            catch (Exception e) when (e is not InvalidInputException)
            { throw new InvalidInputException($"{optPath}: cannot be read as the state of this {optimizer.GetType().Name} optimizer (corrupt, or written for other parameters): {e.Message.Split('\n')[0]}"); }
            using (torch.no_grad())
            {
                var src = saved.Model.Module.state_dict();
                foreach (var (name, p) in model.Module.named_parameters())
                {
                    if (!src.TryGetValue(name, out var t) || !t.shape.SequenceEqual(p.shape))
                        throw new InvalidInputException($"{dir}/model: tensor {name} does not match the model being trained");
                    p.copy_(t);
                }
            }
        }
        using (var rng = torch.get_rng_state())
        {
            rng.bytes = bytes;
            try { torch.set_rng_state(rng); }
            catch (Exception e) when (e is not OutOfMemoryException)
            { throw new InvalidInputException($"{rngPath}: corrupt RNG state ({e.Message.Split('\n')[0]})"); }
        }
        return state;
    }

    /// <summary>A required integer of a loaded trainer state (a missing or mistyped one names the checkpoint).</summary>
    public static int Int(JsonObject state, string key, string dir) =>
        StrictJson.OptionalInt(state, key, Path.Combine(dir, "trainer_state.json"))
        ?? throw new InvalidInputException($"{Path.Combine(dir, "trainer_state.json")}: missing \"{key}\"");
}
