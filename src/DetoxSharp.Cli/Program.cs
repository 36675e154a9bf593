using DetoxSharp.Cli;

return DetoxCli.Run(args, Console.Out, Console.Error);
