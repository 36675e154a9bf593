using DetoxSharp.Data;
using DetoxSharp.Training;

namespace DetoxSharp.Tests.Toy;

public class DatasetReaderTests
{
    static string Write(string name, string content)
    {
        var dir = Path.Combine(Path.GetTempPath(), $"detox-readers-{Guid.NewGuid():N}");
        Directory.CreateDirectory(dir);
        var p = Path.Combine(dir, name);
        File.WriteAllText(p, content);
        return p;
    }

    static void Fails(Action a, string path, string expected)
    {
        var e = Assert.Throws<InvalidInputException>(a);
        Assert.Contains(path + (expected.StartsWith(':') ? "" : ": "), e.Message);
        Assert.Contains(expected, e.Message);
    }

    [Fact]
    public void JigsawCsvReadsQuotedFieldsAndFractions()
    {
        var p = Write("c.csv", "id,comment_text,toxic\n1,\"hello, \"\"you\"\"\nthere\",0\n2,you idiot,1\n3,meh,0.7\n");
        var r = DatasetReaders.ReadJigsawCsv(p);
        Assert.Equal(3, r.Count);
        Assert.Equal("hello, \"you\"\nthere", r[0].Text);
        Assert.Equal([false, true, true], r.Select(x => x.Toxic));
    }

    [Fact]
    public void BadCsvFilesNameFileAndLine()
    {
        var missing = Write("m.csv", "id,text,toxic\n1,hello,0\n");
        Fails(() => DatasetReaders.ReadJigsawCsv(missing), missing + ":1", "comment_text");
        var noLabel = Write("n.csv", "id,comment_text\n1,hello\n");
        Fails(() => DatasetReaders.ReadJigsawCsv(noLabel), noLabel + ":1", "toxic");
        var badLabel = Write("b.csv", "id,comment_text,toxic\n1,hello,0\n2,bye,maybe\n");
        Fails(() => DatasetReaders.ReadJigsawCsv(badLabel), badLabel + ":3", "maybe");
        var shortRow = Write("s.csv", "id,comment_text,toxic\n1,hello,0\n2,bye\n");
        Fails(() => DatasetReaders.ReadJigsawCsv(shortRow), shortRow + ":3", "fields");
        var empty = Write("e.csv", "");
        Fails(() => DatasetReaders.ReadJigsawCsv(empty), empty, "empty");
        var headerOnly = Write("h.csv", "id,comment_text,toxic\n");
        Fails(() => DatasetReaders.ReadJigsawCsv(headerOnly), headerOnly, "no data rows");
    }

    [Fact]
    public void BadJsonlFilesNameFileAndLine()
    {
        var malformed = Write("p.jsonl", "{\"prompt\":{\"text\":\"a\"},\"challenging\":true}\n{\"prompt\":{\"text\":\n");
        Fails(() => DatasetReaders.ReadPrompts(malformed), malformed + ":2", "malformed JSON");
        var noText = Write("q.jsonl", "{\"prompt\":{\"txt\":\"a\"}}\n");
        Fails(() => DatasetReaders.ReadPrompts(noText), noText + ":1", "prompt.text");
        var noGold = Write("f.jsonl", "{\"prompt\":\"a\",\"gold\":\"b\"}\n\n{\"prompt\":\"a\"}\n");
        Fails(() => DatasetReaders.ReadF1Pairs(noGold), noGold + ":3", "gold");
        var empty = Write("e.jsonl", "\n\n");
        Fails(() => DatasetReaders.ReadF1Pairs(empty), empty, "empty");
        var noCompletion = Write("s.jsonl", "{\"prompt\":\"a\",\"completion\":\"b\"}\n{\"prompt\":\"a\"}\n");
        Fails(() => SftData.Read(noCompletion), noCompletion + ":2", "completion");
        var dialogue = Write("d.jsonl", "{\"prompt\":\"a\",\"response\":\"b\",\"toxic\":\"yes\"}\n");
        Fails(() => DatasetReaders.ReadDialogues(dialogue), dialogue + ":1", "toxic");
        var emptyText = Write("t.txt", "  \n");
        Fails(() => DatasetReaders.ReadDocuments(emptyText), emptyText, "empty");
    }

    [Fact]
    public void PromptReaderAcceptsRealRtpLines()
    {
        var p = Write("rtp.jsonl",
            "{\"filename\":\"x.txt\",\"begin\":0,\"end\":10,\"challenging\":false,\"prompt\":{\"text\":\"Corruption involving\",\"toxicity\":0.29},\"continuation\":{\"text\":\" the\"}}\n" +
            "{\"challenging\":true,\"prompt\":{\"text\":\"You are\",\"toxicity\":0.1}}\n");
        Assert.Equal(2, DatasetReaders.ReadPrompts(p).Count);
        var ch = Assert.Single(DatasetReaders.ReadPrompts(p, challengingOnly: true));
        Assert.Equal("You are", ch.Text);
    }
}
