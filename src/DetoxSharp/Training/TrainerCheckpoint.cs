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
    public static void Save(string dir, ICausalLM model, Gpt2Tokenizer? tokenizer, TorchSharp.Modules.OptimizerHelper optimizer, JsonObject trainerState)
    {
        AtomicDirectory.Write(dir, tmp =>
        {
            HfCheckpoint.Save(model, tokenizer, Path.Combine(tmp, "model"), overwrite: true);
            optimizer.save_state_dict(Path.Combine(tmp, "optimizer.bin"));
            using (var rng = torch.get_rng_state())
                File.WriteAllBytes(Path.Combine(tmp, "rng.bin"), rng.bytes.ToArray());
            File.WriteAllText(Path.Combine(tmp, "trainer_state.json"), trainerState.ToJsonString(new JsonSerializerOptions { WriteIndented = true }));
        });
    }

    public static bool Exists(string dir) => File.Exists(Path.Combine(dir, "trainer_state.json"));

    /// <summary>Restores weights into <paramref name="model"/>, the optimizer state and the RNG; returns the trainer state.</summary>
    public static JsonObject Load(string dir, ICausalLM model, TorchSharp.Modules.OptimizerHelper optimizer)
    {
        if (!Exists(dir)) throw new InvalidInputException($"{dir}: no training checkpoint (trainer_state.json missing)");
        using (var saved = HfCheckpoint.Load(Path.Combine(dir, "model"), new LoadOptions { DType = model.DType, Device = model.Device }))
        using (torch.no_grad())
        {
            var src = saved.Model.Module.state_dict();
            foreach (var (name, p) in model.Module.named_parameters()) p.copy_(src[name]);
        }
        optimizer.load_state_dict(Path.Combine(dir, "optimizer.bin"));
        var bytes = File.ReadAllBytes(Path.Combine(dir, "rng.bin"));
        using (var rng = torch.get_rng_state())
        {
            rng.bytes = bytes;
            torch.set_rng_state(rng);
        }
        return JsonNode.Parse(File.ReadAllText(Path.Combine(dir, "trainer_state.json")))!.AsObject();
    }
}
