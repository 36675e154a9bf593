using System.Text.Json.Nodes;
using DetoxSharp.Checkpoints;
using DetoxSharp.Models;
using DetoxSharp.Text;
using TorchSharp;

namespace DetoxSharp.Tests.Evaluation;

/// <summary>Files the evaluation tests share: a tiny random GPT-2 checkpoint and an RTP-style prompts file.</summary>
static class EvalFiles
{
    public static string TinyGpt2(string dir, int seed)
    {
        torch.manual_seed(seed);
        using var m = new Gpt2Model(new Gpt2Config { NEmbd = 16, NLayer = 2, NHead = 2, NPositions = 64 });
        HfCheckpoint.Save(m, Gpt2Tokenizer.Default(), dir);
        return dir;
    }

    public static string Prompts(string path, IEnumerable<string> texts)
    {
        File.WriteAllLines(path, texts.Select(t => new JsonObject { ["prompt"] = new JsonObject { ["text"] = t } }.ToJsonString()));
        return path;
    }
}
