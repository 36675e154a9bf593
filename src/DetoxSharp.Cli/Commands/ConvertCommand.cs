using System.CommandLine;
using DetoxSharp.Data;

namespace DetoxSharp.Cli.Commands;

/// <summary>`detox convert pairs-to-kto`: data-format conversions between the preference methods.</summary>
public static class ConvertCommand
{
    public static Command Create()
    {
        var input = new Option<string>("--data") { Description = "pairs (JSONL or Parquet): prompt/chosen/rejected as strings or TRL message lists (prompt optional: the shared start), or prompt_text/unpert_gen_text/pert_gen_text", Required = true };
        var output = new Option<string>("--out") { Description = "output JSONL (prompt, completion, label; conversational pairs give message lists)", Required = true };
        var toKto = new Command("pairs-to-kto", "Unpair preference pairs into KTO records as TRL does: each chosen completion with label true, then each rejected one with label false.")
            { input, output };
        toKto.SetAction(p =>
        {
            var records = PreferenceData.PairsToKto(p.GetValue(input)!, w => p.InvocationConfiguration.Error.WriteLine("detox: warning: " + w));
            int pairs = records.Count / 2;
            JsonlReader.Write(p.GetValue(output)!, records);
            p.InvocationConfiguration.Output.WriteLine($"{records.Count} KTO records ({pairs} desirable, {pairs} undesirable) -> {p.GetValue(output)}");
            return 0;
        });
        return new Command("convert", "Convert data between the preference methods' formats.") { toKto };
    }
}
