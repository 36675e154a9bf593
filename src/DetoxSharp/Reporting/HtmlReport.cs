using System.Globalization;
using System.Net;
using System.Text;
using DetoxSharp.Data;

namespace DetoxSharp.Reporting;

/// <summary>A table for the report: shown as HTML, also written as CSV (same cells).</summary>
public sealed record Table(string Name, string Title, IReadOnlyList<string> Columns, IReadOnlyList<IReadOnlyList<string>> Rows, string Caption = "")
{
    /// <summary>RFC 4180 CSV: fields with a comma, quote or line break are quoted, quotes doubled; "\n" line ends.</summary>
    public string ToCsv()
    {
        static string Q(string f) => f.IndexOfAny([',', '"', '\n', '\r']) >= 0 ? "\"" + f.Replace("\"", "\"\"") + "\"" : f;
        var sb = new StringBuilder();
        sb.Append(string.Join(",", Columns.Select(Q))).Append('\n');
        foreach (var r in Rows) sb.Append(string.Join(",", r.Select(Q))).Append('\n');
        return sb.ToString();
    }
}

/// <summary>
/// A self-contained HTML report: inline CSS, figures as inline SVG (no scripts, no external files needed), each
/// figure also written as figures/NAME.svg and .png and each table as tables/NAME.csv next to report.html.
/// </summary>
public sealed class HtmlReport(string title)
{
    readonly List<(string Id, string Title, StringBuilder Body)> _sections = [];
    readonly List<Figure> _figures = [];
    readonly List<Table> _tables = [];

    public IReadOnlyList<Figure> Figures => _figures;
    public IReadOnlyList<Table> Tables => _tables;

    static string E(string s) => WebUtility.HtmlEncode(s);

    public HtmlReport Section(string id, string sectionTitle)
    {
        _sections.Add((id, sectionTitle, new StringBuilder()));
        return this;
    }

    StringBuilder Cur => _sections.Count > 0 ? _sections[^1].Body : throw new InvalidOperationException("add a section first");

    public HtmlReport Paragraph(string text) { Cur.Append("<p>").Append(E(text)).Append("</p>\n"); return this; }

    public HtmlReport Bullets(IEnumerable<string> items)
    {
        Cur.Append("<ul>");
        foreach (var i in items) Cur.Append("<li>").Append(E(i)).Append("</li>");
        Cur.Append("</ul>\n");
        return this;
    }

    /// <summary>A note that a part of the report has no data in this run (and which stage would produce it).</summary>
    public HtmlReport Missing(string what) { Cur.Append("<p class=\"missing\">").Append(E(what)).Append("</p>\n"); return this; }

    /// <summary>A banner shown above everything (before the table of contents).</summary>
    public HtmlReport Notice(string text) { _notices.Add(text); return this; }

    readonly List<string> _notices = [];

    public HtmlReport Pre(string text) { Cur.Append("<pre>").Append(E(text)).Append("</pre>\n"); return this; }

    public HtmlReport Add(Figure f)
    {
        if (_figures.Any(x => x.Name == f.Name)) throw new ArgumentException($"figure '{f.Name}' added twice");
        _figures.Add(f);
        var svg = f.Svg;
        int start = svg.IndexOf("<svg", StringComparison.Ordinal);
        if (start > 0) svg = svg[start..];
        Cur.Append($"<figure id=\"fig-{E(f.Name)}\">").Append(svg)
           .Append($"<figcaption><b>{E(f.Title)}.</b> {E(f.Caption)} <span class=\"files\">(figures/{E(f.Name)}.svg, .png)</span></figcaption></figure>\n");
        return this;
    }

    public HtmlReport Add(Table t)
    {
        if (_tables.Any(x => x.Name == t.Name)) throw new ArgumentException($"table '{t.Name}' added twice");
        _tables.Add(t);
        Cur.Append($"<table id=\"tab-{E(t.Name)}\"><caption><b>{E(t.Title)}.</b> {E(t.Caption)} <span class=\"files\">(tables/{E(t.Name)}.csv)</span></caption><thead><tr>");
        foreach (var c in t.Columns) Cur.Append("<th>").Append(E(c)).Append("</th>");
        Cur.Append("</tr></thead><tbody>");
        foreach (var r in t.Rows)
        {
            Cur.Append("<tr>");
            foreach (var c in r) Cur.Append("<td>").Append(E(c)).Append("</td>");
            Cur.Append("</tr>");
        }
        Cur.Append("</tbody></table>\n");
        return this;
    }

    const string Css = """
        body{font-family:system-ui,-apple-system,Segoe UI,Helvetica,Arial,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;color:#222;line-height:1.45}
        h1{border-bottom:2px solid #444}h2{margin-top:2em;border-bottom:1px solid #ccc}
        nav ul{columns:2}table{border-collapse:collapse;margin:1em 0;font-size:.92em}caption{text-align:left;padding:.3em 0;caption-side:top}
        th,td{border:1px solid #bbb;padding:.25em .6em;vertical-align:top}th{background:#f0f0f0}tbody tr:nth-child(even){background:#fafafa}
        figure{margin:1.2em 0}figure svg{max-width:100%;height:auto;border:1px solid #eee}figcaption{font-size:.92em;color:#333}
        .files{color:#888;font-size:.85em}.missing{color:#a33;font-style:italic}.notice{background:#fff3cd;border:1px solid #e0c36a;padding:.6em;font-weight:bold}pre{background:#f6f6f6;padding:.6em;overflow-x:auto;font-size:.85em}
        """;

    public string ToHtml()
    {
        var sb = new StringBuilder();
        sb.Append("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"/><title>").Append(E(title)).Append("</title><style>")
          .Append(Css).Append("</style></head><body>\n<h1>").Append(E(title)).Append("</h1>\n");
        foreach (var n in _notices) sb.Append("<p class=\"notice\">").Append(E(n)).Append("</p>\n");
        sb.Append("<nav><ul>");
        foreach (var s in _sections) sb.Append($"<li><a href=\"#{E(s.Id)}\">{E(s.Title)}</a></li>");
        sb.Append("</ul></nav>\n");
        foreach (var s in _sections) sb.Append($"<section id=\"{E(s.Id)}\"><h2>{E(s.Title)}</h2>\n").Append(s.Body).Append("</section>\n");
        sb.Append("</body></html>\n");
        return sb.ToString();
    }

    /// <summary>Writes report.html, figures/*.svg|png and tables/*.csv into a directory (each file atomically).</summary>
    public void Write(string dir)
    {
        Directory.CreateDirectory(dir);
        foreach (var f in _figures)
        {
            AtomicFile.WriteAllText(Path.Combine(dir, "figures", f.Name + ".svg"), f.Svg);
            AtomicFile.WriteBytes(Path.Combine(dir, "figures", f.Name + ".png"), s => s.Write(f.Png));
        }
        foreach (var t in _tables) AtomicFile.WriteAllText(Path.Combine(dir, "tables", t.Name + ".csv"), t.ToCsv());
        AtomicFile.WriteAllText(Path.Combine(dir, "report.html"), ToHtml());
    }
}
