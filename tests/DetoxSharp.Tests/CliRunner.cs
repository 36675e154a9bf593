namespace DetoxSharp.Tests;

/// <summary>Runs the <c>detox</c> command line in-process, as the CLI tests do: exit code, standard output and standard error.</summary>
static class CliRunner
{
    public static (int Rc, string Out, string Err) Run(params string[] args)
    {
        var o = new StringWriter();
        var e = new StringWriter();
        int rc = DetoxSharp.Cli.DetoxCli.Run(args, o, e);
        return (rc, o.ToString(), e.ToString());
    }
}
