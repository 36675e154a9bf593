using System.CommandLine;
using System.Text.Json.Nodes;
using DetoxSharp.Generation;

namespace DetoxSharp.Cli.Commands;

public static class GenerateCommand
{
    static readonly GenerationOptions Defaults = new();

    public static Command Create()
    {
        var model = CommonOptions.Model();
        var prompt = new Option<string>("--prompt") { Description = "prompt text", Required = true };
        var maxNew = Bind.To("--max-new-tokens", new GenerationOptions(), o => o.MaxNewTokens);
        var greedy = new Option<bool>("--greedy") { Description = "greedy decoding (the default unless a sampling option is given)" };
        var temperature = Bind.Key(new Option<double?>("--temperature") { Description = "sampling temperature (enables sampling)" }, "temperature");
        var topK = Bind.Key(new Option<int?>("--top-k") { Description = "keep the k most likely tokens when sampling" }, "top_k");
        var topP = Bind.Key(new Option<double?>("--top-p") { Description = "nucleus sampling mass" }, "top_p");
        var seed = new Option<long?>("--seed") { Description = "random seed for sampling" };
        var json = CommonOptions.Json();
        var device = CommonOptions.Device();
        var dtype = CommonOptions.DType();
        var pickle = CommonOptions.AllowPickle();
        var steer = MethodOptions.Steer();
        var dexperts = MethodOptions.DExperts();
        var alpha = MethodOptions.Alpha();
        var cmd = new Command("generate", "Continue a prompt (greedy by default; sampling with --temperature/--top-k/--top-p; --steer or --dexperts for the inference-time detoxification methods).")
            { model, prompt, maxNew, greedy, temperature, topK, topP, seed, json, device, dtype, pickle, steer, dexperts, alpha };
        cmd.SetAction(p =>
        {
            bool sampling = p.GetValue(temperature) is not null || p.GetValue(topK) is not null || p.GetValue(topP) is not null;
            if (sampling && p.GetValue(greedy)) throw new InvalidInputException("--greedy cannot be combined with --temperature/--top-k/--top-p");
            var opts = new GenerationOptions
            {
                MaxNewTokens = p.GetValue(maxNew),
                Greedy = !sampling,
                Temperature = p.GetValue(temperature) ?? Defaults.Temperature,
                TopK = p.GetValue(topK) ?? Defaults.TopK,
                TopP = p.GetValue(topP) ?? Defaults.TopP,
                Seed = p.GetValue(seed),
            };
            opts.Validate();
            var experts = MethodOptions.ParseDExperts(p.GetValue(dexperts), p.GetValue(alpha));
            var steering = p.GetValue(steer) is string sv ? DetoxSharp.Editing.Steering.Load(sv) : null;
            using var m = CommonOptions.LoadModel(p.GetValue(model)!, p.GetValue(device)!, p.GetValue(dtype)!, p.GetValue(pickle));
            using var expert = experts is { } e1 ? CommonOptions.LoadModel(e1.Expert, p.GetValue(device)!, p.GetValue(dtype)!, p.GetValue(pickle)) : null;
            using var anti = experts is { } e2 ? CommonOptions.LoadModel(e2.Anti, p.GetValue(device)!, p.GetValue(dtype)!, p.GetValue(pickle)) : null;
            using var steered = steering?.Apply(m.Model);
            var text = p.GetValue(prompt)!;
            var ids = m.Tokenizer.EncodeWithSpecialTokens(text);
            if (ids.Length == 0) ids = [m.Model.EosTokenId];
            var outIds = Generator.Generate(m.Model, [ids], opts, expert is null ? null : new DExperts(expert.Model, anti!.Model, p.GetValue(alpha)))[0];
            var completion = m.Tokenizer.Decode(outIds);
            var o = p.InvocationConfiguration.Output;
            if (p.GetValue(json))
                o.WriteLine(new JsonObject
                {
                    ["prompt"] = text,
                    ["prompt_tokens"] = ids.Length,
                    ["completion"] = completion,
                    ["tokens"] = new JsonArray(outIds.Select(i => (JsonNode)JsonValue.Create(i)!).ToArray()),
                    ["greedy"] = opts.Greedy,
                }.ToJsonString());
            else o.WriteLine(text + completion);
            return 0;
        });
        return cmd;
    }
}
