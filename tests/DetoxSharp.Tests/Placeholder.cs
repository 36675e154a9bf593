namespace DetoxSharp.Tests;
public class Smoke
{
    [Fact]
    public void SaveLoadGenerate()
    {
        var m = new DetoxSharp.Models.Gpt2Model(new DetoxSharp.Models.Gpt2Config { NEmbd = 16, NLayer = 2, NHead = 2, NPositions = 64 });
        var dir = Path.Combine(Path.GetTempPath(), "detox-smoke");
        DetoxSharp.Checkpoints.HfCheckpoint.Save(m, DetoxSharp.Text.Gpt2Tokenizer.Default(), dir, overwrite: true);
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
