using DetoxSharp.Cli;

// `detox study` runs stages on two threads at once. TorchSharp passes temporary Scalars (e.g. the α of every `a + b`)
// to native code without keeping them alive, so a garbage collection that another thread triggers during such a call
// can finalize the Scalar while libtorch reads it: "Exception raised from toFloat" or SIGSEGV (seen four times on
// 2026-12-01, docs/notes/study.md). A large gen-0 budget makes collections ≈ 50× rarer; the runtime reads it only from
// the environment at start-up, so the study re-executes itself once with it set (DETOX_GC_GEN0 overrides the size,
// "off" keeps the runtime's default). The same re-execution (execve, same process) sets glibc's transparent-huge-page
// malloc tunable for every command (MallocTunables: glibc reads GLIBC_TUNABLES only at start-up; DETOX_DEFAULT_ALLOCATOR=1
// opts out).
ReExecution.ReExecuteIfNeeded(args);

// before any tensor exists: libtorch reads its allocator settings at the first allocation (NativeSetup)
DetoxSharp.NativeSetup.Init();
// MKL's fp32 GEMM kernels by instruction set on AMD CPUs too (NativeSetup.InitMkl; loads libtorch, so after the re-execution)
DetoxSharp.NativeSetup.InitMkl();
// one stage of a parallel study in a process of its own (StageProcesses; not a user command)
if (args is [StageProcesses.ChildVerb, var stageContext]) return StageProcesses.ChildMain(stageContext, Console.Out, Console.Error);
return DetoxCli.Run(args, Console.Out, Console.Error);
