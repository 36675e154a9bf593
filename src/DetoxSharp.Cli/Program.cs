using DetoxSharp.Cli;

// before any tensor exists: libtorch reads its allocator settings at the first allocation (NativeSetup)
DetoxSharp.NativeSetup.Init();
return DetoxCli.Run(args, Console.Out, Console.Error);
