// Tests seed libtorch's global RNG (torch.manual_seed) to build their tiny models; test classes running in parallel
// would consume each other's random numbers and make those models, and so the assertions, depend on timing.
[assembly: CollectionBehavior(DisableTestParallelization = true)]
