using System.Text.Json.Nodes;
using DetoxSharp.Data;
using DetoxSharp.Interpretability;
using DetoxSharp.Training;

namespace DetoxSharp.Study;

/// <summary>Paper step 0, the data and the model: the world (or the real data files) and the pretrained model.</summary>
public static partial class StudyStages
{
    static void World(StageContext c)
    {
        JsonObject files;
        double? noise = null;
        int? flipped = null;
        if (IsToy(c))
        {
            var w = Read<WorldSection>(c, "world");
            var paths = ToyWorldFiles.Write(Path.Combine(c.OutputDir, "world"), w.SeedOrDefault, w.SizeOrDefault);
            files = new JsonObject
            {
                ["comments"] = paths.Comments, ["challenge_prompts"] = paths.ChallengePrompts, ["neutral_prompts"] = paths.NeutralPrompts,
                ["perplexity_text"] = paths.WikiText, ["f1_prompts"] = paths.F1Pairs, ["preference_prompts"] = paths.PreferencePrompts,
                ["dialogues"] = paths.Dialogues, ["train"] = paths.Train, ["valid"] = paths.Valid,
            };
            // "toxic token" for the vector table and the logit lens: the world's own lexicon, single words only (the
            // phrases' other words — "hunt you down" — are not toxic on their own)
            var words = Path.Combine(c.OutputDir, "world", "toxic_words.txt");
            ToxicWordList.Save(words, ToyWorldLexicon.ToxicWords);
            files["toxic_words"] = words;
            var manifest = JsonNode.Parse(File.ReadAllText(paths.Manifest)) as JsonObject;
            noise = manifest?["label_noise"] is JsonValue n && n.TryGetValue<double>(out var ln) ? ln : null;
            flipped = manifest?["label_noise_flipped"] is JsonValue fl && fl.TryGetValue<int>(out var fc) ? fc : null;
        }
        else
        {
            var d = Read<DataSection>(c, "data");
            files = new JsonObject();
            foreach (var (key, p) in d.Files().Append(("toxic_words", d.ToxicWords)))
            {
                if (p is null && key == "toxic_words") continue; // optional: without it finding (b) is "not measured"
                if (p is null) throw new InvalidInputException($"config: data.{key} is required");
                if (!File.Exists(p)) throw new InvalidInputException($"config: data.{key}: {p}: file not found");
                files[key] = Path.GetFullPath(p);
            }
        }
        // stage outputs are moved into place after the stage: store paths relative to the final stage directory
        var data = Relocate(files, c);
        data["label_noise"] = noise;
        data["label_noise_flipped"] = flipped;
        WriteJson(Path.Combine(c.OutputDir, "data.json"), data);
    }

    static void Pretrain(StageContext c)
    {
        string modelDir;
        if (IsToy(c))
        {
            var o = Read<ToyPretrainOptions>(c, "pretrain") with { Size = Read<WorldSection>(c, "world").SizeOrDefault, Device = c.Device };
            var summary = ToyPretraining.Run(c.OutputDir, o,
                new Progress<TrainingProgress>(sp => c.Report?.Invoke(sp.Step / (double)Math.Max(1, sp.TotalSteps), $"step {sp.Step}/{sp.TotalSteps}")),
                cancel: c.Cancellation);
            WriteJson(Path.Combine(c.OutputDir, "pretrain.json"), summary);
            modelDir = FinalPath(c, Path.Combine(c.OutputDir, "model"));
        }
        else
        {
            modelDir = Path.GetFullPath(Read<DataSection>(c, "data").BaseModel ?? throw new InvalidInputException("config: data.base_model is required"));
            using var m = Load(c, modelDir); // validates the checkpoint now rather than stages later
        }
        AtomicFile.WriteAllText(Path.Combine(c.OutputDir, "model_dir.txt"), modelDir);
    }
}
