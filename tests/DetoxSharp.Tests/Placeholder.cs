namespace DetoxSharp.Tests;
public class Smoke
{
    static DetoxSharp.Text.Gpt2Tokenizer TokWithToxic() { var t = DetoxSharp.Text.Gpt2Tokenizer.Default(); t.AddSpecialToken("[TOXIC]"); return t; }

    [Fact]
    public void SaveLoadGenerate()
    {
        var m = new DetoxSharp.Models.Gpt2Model(new DetoxSharp.Models.Gpt2Config { NEmbd = 16, NLayer = 2, NHead = 2, NPositions = 64 });
        m.ResizeVocabulary(50258);
        Assert.Equal(50258, m.state_dict()["wte.weight"].shape[0]);
        Assert.Single(m.named_parameters().Where(p => p.name == "wte.weight"));
        var dir = Path.Combine(Path.GetTempPath(), "detox-smoke");
        DetoxSharp.Checkpoints.HfCheckpoint.Save(m, TokWithToxic(), dir, overwrite: true);
        var w = new StringWriter(); var e = new StringWriter();
        int rc = DetoxSharp.Cli.DetoxCli.Run(["score", "--model", dir, "--text", "Hello world, this is a test.", "--json"], w, e);
        Console.WriteLine(w + "\n" + e);
        Assert.Equal(0, rc);
        rc = DetoxSharp.Cli.DetoxCli.Run(["generate", "--model", dir, "--prompt", "Hello world", "--json"], w, e);
        Console.WriteLine(w + "\n" + e);
        Assert.Equal(0, rc);
        rc = DetoxSharp.Cli.DetoxCli.Run(["info", "--model", dir], w, e);
        Console.WriteLine(w + "\n" + e);
        rc = DetoxSharp.Cli.DetoxCli.Run(["info", "--modelx", dir], w, e);
        Console.WriteLine(rc + w.ToString() + "\n" + e);
    }
}
static class H { }
