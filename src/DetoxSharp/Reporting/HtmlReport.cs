using System.Globalization;
using System.Net;
using System.Text;
using DetoxSharp.Data;

namespace DetoxSharp.Reporting;

/// <summary>A table for the report: shown as HTML, also written as CSV (same cells).</summary>
/// <param name="Name">File name stem (tables/NAME.csv) and HTML id.</param>
/// <param name="Title">Title in the caption.</param>
/// <param name="Columns">Column headers.</param>
/// <param name="Rows">Cells, one list per row.</param>
/// <param name="Caption">What the table shows and where its numbers come from.</param>
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
/// A self-contained HTML report in one file: inline CSS, interactive plotly.js charts (plotly.js inlined once per page,
/// nothing fetched at view time; each chart's static SVG inside &lt;noscript&gt;), each figure also written as
/// figures/NAME.svg and .png and each table as tables/NAME.csv next to report.html. The page also parses as XML.
/// </summary>
/// <param name="title">The page title (and its heading).</param>
public sealed class HtmlReport(string title)
{
    readonly List<(string Id, string Title, StringBuilder Body)> _sections = [];
    readonly List<Figure> _figures = [];
    readonly List<Table> _tables = [];

    /// <summary>The figures added so far, in order.</summary>
    public IReadOnlyList<Figure> Figures => _figures;
    /// <summary>The tables added so far, in order.</summary>
    public IReadOnlyList<Table> Tables => _tables;

    /// <summary>Applied to every text the page shows (paragraphs, table cells, captions, chart labels) and to the
    /// tables' CSV files, e.g. to write names in one notation; null leaves text as it is.</summary>
    public Func<string, string>? TextFilter { get; init; }

    string T(string s) => TextFilter is null ? s : TextFilter(s);

    string E(string s) => WebUtility.HtmlEncode(T(s));

    /// <summary>Starts a section (an h2 with an entry in the table of contents); later content goes into it.</summary>
    /// <param name="id">The section's HTML id (link target).</param>
    /// <param name="sectionTitle">Its heading.</param>
    public HtmlReport Section(string id, string sectionTitle)
    {
        _sections.Add((id, sectionTitle, new StringBuilder()));
        return this;
    }

    StringBuilder Cur => _sections.Count > 0 ? _sections[^1].Body : throw new InvalidOperationException("add a section first");

    /// <summary>A sub-heading (h3) in the current section.</summary>
    /// <param name="text">The heading.</param>
    public HtmlReport Heading(string text) { Cur.Append("<h3>").Append(E(text)).Append("</h3>\n"); return this; }

    /// <summary>A paragraph of plain text (HTML-escaped).</summary>
    /// <param name="text">The text.</param>
    public HtmlReport Paragraph(string text) { Cur.Append("<p>").Append(E(text)).Append("</p>\n"); return this; }

    /// <summary>A bulleted list of plain-text items.</summary>
    /// <param name="items">The items.</param>
    public HtmlReport Bullets(IEnumerable<string> items)
    {
        Cur.Append("<ul>");
        foreach (var i in items) Cur.Append("<li>").Append(E(i)).Append("</li>");
        Cur.Append("</ul>\n");
        return this;
    }

    /// <summary>A note that a part of the report has no data in this run (and which stage would produce it).</summary>
    /// <param name="what">The note.</param>
    public HtmlReport Missing(string what) { Cur.Append("<p class=\"missing\">").Append(E(what)).Append("</p>\n"); return this; }

    /// <summary>A banner shown above everything (before the table of contents).</summary>
    /// <param name="text">The banner text.</param>
    public HtmlReport Notice(string text) { _notices.Add(text); return this; }

    readonly List<string> _notices = [];

    /// <summary>Preformatted text (configuration files, JSON).</summary>
    /// <param name="text">The text.</param>
    public HtmlReport Pre(string text) { Cur.Append("<pre>").Append(E(text)).Append("</pre>\n"); return this; }

    /// <summary>Adds a figure to the current section: the interactive plotly.js chart when the figure has one (its
    /// static SVG inside &lt;noscript&gt; for browsers without scripts), otherwise the inline SVG.</summary>
    /// <param name="f">The figure (its name must be new in this report).</param>
    public HtmlReport Add(Figure f)
    {
        if (_figures.Any(x => x.Name == f.Name)) throw new ArgumentException($"figure '{f.Name}' added twice");
        f = f with { Svg = T(f.Svg), Plotly = f.Plotly is null ? null : T(f.Plotly) };
        _figures.Add(f);
        var svg = f.Svg;
        int start = svg.IndexOf("<svg", StringComparison.Ordinal);
        if (start > 0) svg = svg[start..];
        Cur.Append($"<figure id=\"fig-{E(f.Name)}\">");
        if (f.Plotly is { } spec)
            Cur.Append($"<div class=\"plot\" id=\"plot-{E(f.Name)}\"></div><script type=\"application/json\" class=\"plotly-spec\" data-target=\"plot-{E(f.Name)}\">")
               .Append(SafeJson(spec)).Append("</script><noscript>").Append(svg).Append("</noscript>");
        else Cur.Append(svg);
        Cur.Append($"<figcaption><b>{E(f.Title)}.</b> {E(f.Caption)} <span class=\"files\">(figures/{E(f.Name)}.svg, .png)</span></figcaption></figure>\n");
        return this;
    }

    /// <summary>JSON inside a script element of a page that also parses as XML: no &lt;, &gt; or &amp; (escaped as
    /// \u003C …, which JSON reads back unchanged).</summary>
    static string SafeJson(string json) => json.Replace("<", "\\u003C").Replace(">", "\\u003E").Replace("&", "\\u0026");

    /// <summary>Adds a table to the current section. Cells that hold a number (with "±", "(n=…)", "%") do not wrap.</summary>
    /// <param name="t">The table (its name must be new in this report).</param>
    public HtmlReport Add(Table t)
    {
        if (_tables.Any(x => x.Name == t.Name)) throw new ArgumentException($"table '{t.Name}' added twice");
        if (TextFilter is not null)
            t = t with { Columns = t.Columns.Select(T).ToList(), Rows = t.Rows.Select(r => (IReadOnlyList<string>)r.Select(T).ToList()).ToList() };
        _tables.Add(t);
        // the caption above the scrolling box, so a table wider than the page scrolls without taking its caption along
        Cur.Append($"<p class=\"tcaption\" id=\"tab-{E(t.Name)}\"><b>{E(t.Title)}.</b> {E(t.Caption)} <span class=\"files\">(tables/{E(t.Name)}.csv)</span></p>")
           .Append("<div class=\"table-wrap\"><table><thead><tr>");
        foreach (var c in t.Columns) Cur.Append("<th>").Append(E(c)).Append("</th>");
        Cur.Append("</tr></thead><tbody>");
        foreach (var r in t.Rows)
        {
            Cur.Append("<tr>");
            foreach (var c in r) Cur.Append(NumberCell.IsMatch(c) ? "<td class=\"num\">" : "<td>").Append(E(c)).Append("</td>");
            Cur.Append("</tr>");
        }
        Cur.Append("</tbody></table></div>\n");
        return this;
    }

    static readonly System.Text.RegularExpressions.Regex NumberCell = new(@"^[-+–−]?[0-9][0-9.,eE+\-]*( ± [0-9][0-9.,eE+\-]*)?( \(n=[0-9]+\))?%?$");

    /// <summary>The plotly.js bundled into this assembly at build time (taken from the Plotly.NET package).</summary>
    public static string PlotlyJs => _plotlyJs.Value;

    static readonly Lazy<string> _plotlyJs = new(() =>
    {
        using var s = typeof(HtmlReport).Assembly.GetManifestResourceStream("DetoxSharp.Reporting.plotly.min.js")
            ?? throw new InvalidOperationException("plotly.js is missing from the DetoxSharp assembly (the build embeds it from the Plotly.NET package)");
        using var r = new StreamReader(s, Encoding.UTF8);
        return r.ReadToEnd();
    });

    /// <summary>plotly.js made safe inside CDATA: "]]&gt;" occurs once, in code (a[b[c]]&gt;&gt;13), where a space changes
    /// nothing; control characters (invalid in XML) occur only inside string literals, where \uXXXX means the same.</summary>
    static string XmlSafeScript(string js)
    {
        var sb = new StringBuilder(js.Length + 64);
        foreach (var c in js.Replace("]]>", "]] >"))
            if (c < ' ' && c is not ('\t' or '\n' or '\r')) sb.Append("\\u").Append(((int)c).ToString("x4", CultureInfo.InvariantCulture));
            else sb.Append(c);
        return sb.ToString();
    }

    /// <summary>Draws every chart from its JSON spec (with ?section=ID in the address only that section is shown). The body's data-js-errors counts script errors (also listed in
    /// #js-errors) and data-charts-rendered the charts plotly drew, so a headless browser's DOM dump can be checked.</summary>
    const string InitScript = """
        (function () {
          var errors = [];
          function note(m) {
            errors.push(String(m));
            document.body.setAttribute('data-js-errors', String(errors.length));
            var p = document.getElementById('js-errors');
            p.textContent = 'Script errors: ' + errors.join(' | ');
            p.style.display = 'block';
          }
          window.addEventListener('error', function (e) { note(e.message); });
          // report.html?section=ID shows only that section (for screenshots and printing one part)
          var only = new URLSearchParams(location.search).get('section');
          if (only) document.querySelectorAll('section, nav').forEach(function (x) { if (x.id !== only) x.style.display = 'none'; });
          var specs = document.querySelectorAll('script.plotly-spec');
          var pending = specs.length, rendered = 0;
          function done() { pending--; if (pending === 0) document.body.setAttribute('data-charts-rendered', String(rendered)); }
          if (typeof Plotly === 'undefined') { note('plotly.js did not load'); return; }
          specs.forEach(function (s) {
            var div = document.getElementById(s.getAttribute('data-target'));
            try {
              var spec = JSON.parse(s.textContent);
              Plotly.newPlot(div, spec.data, spec.layout, { responsive: true, displaylogo: false }).then(function () {
                if (div.querySelector('svg.main-svg')) { div.setAttribute('data-rendered', '1'); rendered++; }
                else note('no chart drawn in ' + div.id);
                done();
              }, function (e) { note(div.id + ': ' + e); done(); });
            } catch (e) { note(div.id + ': ' + e); done(); }
          });
        })();
        """;

    const string Css = """
        body{font-family:system-ui,-apple-system,Segoe UI,Helvetica,Arial,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;color:#222;line-height:1.45}
        h1{border-bottom:2px solid #444}h2{margin-top:2em;border-bottom:1px solid #ccc}
        nav ul{columns:2}table{border-collapse:collapse;margin:1em 0;font-size:.92em}caption{text-align:left;padding:.3em 0;caption-side:top}
        th,td{border:1px solid #bbb;padding:.25em .6em;vertical-align:top}th{background:#f0f0f0}tbody tr:nth-child(even){background:#fafafa}
        figure{margin:1.2em 0}figure svg{max-width:100%;height:auto;border:1px solid #eee}figcaption{font-size:.92em;color:#333}
        .plot{width:100%;min-height:440px;border:1px solid #eee}.plot svg{border:0}td.num{white-space:nowrap}.table-wrap{overflow-x:auto;max-width:100%;margin-bottom:1em}.table-wrap table{margin-top:.2em}.tcaption{margin:1em 0 0;font-size:.92em}
        #js-errors{display:none;color:#a33;background:#fdd;padding:.6em}h3{margin-top:1.5em}
        .files{color:#888;font-size:.85em}.missing{color:#a33;font-style:italic}.notice{background:#fff3cd;border:1px solid #e0c36a;padding:.6em;font-weight:bold}pre{background:#f6f6f6;padding:.6em;overflow-x:auto;font-size:.85em}
        """;

    /// <summary>The page as one HTML string.</summary>
    public string ToHtml()
    {
        var sb = new StringBuilder();
        sb.Append("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"/><title>").Append(E(title)).Append("</title><style>")
          .Append(Css).Append("</style></head><body data-js-errors=\"0\">\n<h1>").Append(E(title)).Append("</h1>\n");
        foreach (var n in _notices) sb.Append("<p class=\"notice\">").Append(E(n)).Append("</p>\n");
        sb.Append("<nav><ul>");
        foreach (var s in _sections) sb.Append($"<li><a href=\"#{E(s.Id)}\">{E(s.Title)}</a></li>");
        sb.Append("</ul></nav>\n");
        foreach (var s in _sections) sb.Append($"<section id=\"{E(s.Id)}\"><h2>{E(s.Title)}</h2>\n").Append(s.Body).Append("</section>\n");
        if (_figures.Any(f => f.Plotly is not null))
        {
            // CDATA keeps the page parseable as XML; in HTML the markers are JavaScript comments. plotly.js contains "]]>"
            // once, in code (a[b[c]]>>13), where a space changes nothing.
            sb.Append("<pre id=\"js-errors\"></pre>\n<script>/*<![CDATA[*/\n").Append(XmlSafeScript(PlotlyJs))
              .Append("\n/*]]>*/</script>\n<script>/*<![CDATA[*/\n").Append(InitScript).Append("\n/*]]>*/</script>\n");
        }
        sb.Append("</body></html>\n");
        return sb.ToString();
    }

    /// <param name="dir">The directory (created if missing).</param>
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
