using System.Globalization;
using System.Text.Json.Nodes;
using ScottPlot;

namespace DetoxSharp.Reporting;

/// <summary>A rendered chart: an interactive plotly.js figure for the HTML page and the same plot drawn by ScottPlot as
/// SVG (the page's no-script fallback and figures/NAME.svg) and PNG (figures/NAME.png, for slides and READMEs).</summary>
/// <param name="Name">File name stem and HTML id (unique within a report).</param>
/// <param name="Title">Title shown above the caption.</param>
/// <param name="Caption">What the chart shows and where its numbers come from.</param>
/// <param name="Svg">The static SVG rendering.</param>
/// <param name="Png">The static PNG rendering.</param>
public sealed record Figure(string Name, string Title, string Caption, string Svg, byte[] Png)
{
    /// <summary>The plotly.js figure ({"data": traces, "layout": …}) as JSON; null for a figure with only the static
    /// rendering.</summary>
    public string? Plotly { get; init; }
}

/// <summary>One line of a line chart.</summary>
/// <param name="Label">Legend text.</param>
/// <param name="X">X values.</param>
/// <param name="Y">Y values (NaN: no point).</param>
public sealed record Series(string Label, double[] X, double[] Y);

/// <summary>One colour of a grouped bar chart.</summary>
/// <param name="Label">Legend text.</param>
/// <param name="Values">One value per group (NaN: no bar).</param>
/// <param name="Errors">Error-bar half widths per group (null: none).</param>
public sealed record BarSeries(string Label, double[] Values, double[]? Errors = null);

/// <summary>A point of a scatter coloured by a continuous value.</summary>
/// <param name="X">X value.</param>
/// <param name="Y">Y value.</param>
/// <param name="Color">The value mapped to colour.</param>
public sealed record ColoredPoint(double X, double Y, double Color);

/// <summary>The points of one category of a scatter coloured by category.</summary>
/// <param name="Category">Legend text.</param>
/// <param name="X">X values.</param>
/// <param name="Y">Y values.</param>
/// <param name="Labels">Point names (shown on hover; null: none).</param>
public sealed record CategoryPoints(string Category, double[] X, double[] Y, string[]? Labels = null);

/// <summary>The same metric logged by several seeds of one run (one training curve per seed).</summary>
/// <param name="Label">What the seeds have in common (e.g. the method), the legend's group.</param>
/// <param name="Seeds">One series per seed, each labelled with its seed (X = step).</param>
public sealed record SeededSeries(string Label, IReadOnlyList<Series> Seeds);

/// <summary>Per-step statistics over seeds: at every step that some seed logged, the mean, minimum and maximum of the
/// seeds that logged it, and how many did.</summary>
/// <param name="X">Steps, ascending.</param>
/// <param name="Mean">Mean over the seeds at each step.</param>
/// <param name="Min">Minimum over the seeds.</param>
/// <param name="Max">Maximum over the seeds.</param>
/// <param name="N">Number of seeds with a finite value at each step.</param>
public sealed record SeedBand(double[] X, double[] Mean, double[] Min, double[] Max, int[] N);

sealed class ColorAxisSource(IColormap cmap, double lo, double hi) : IHasColorAxis
{
    public IColormap Colormap { get; set; } = cmap;
    public ScottPlot.Range GetRange() => new(lo, hi);
}

/// <summary>The chart kinds the study report needs: each drawn as an interactive plotly.js figure (hover, zoom, legend
/// toggles) and as a static ScottPlot rendering.</summary>
public static class Charts
{
    /// <summary>Width of the static renderings in pixels.</summary>
    public const int Width = 720;
    /// <summary>Height of the static renderings in pixels.</summary>
    public const int Height = 400;
    /// <summary>The EMA weight of <see cref="TrainingCurves"/>: s_t = w·s_(t−1) + (1 − w)·y_t (TensorBoard's slider).</summary>
    public const double DefaultSmoothing = 0.6;

    static readonly string[] Palette = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22", "#17becf"];

    static Figure Render(Plot p, string name, string title, string caption, JsonObject plotly)
    {
        var svg = p.GetSvgXml(Width, Height);
        var png = p.GetImageBytes(Width, Height, ImageFormat.Png);
        return new Figure(name, title, caption, svg, png) { Plotly = plotly.ToJsonString() };
    }

    static Plot New(string title, string x, string y)
    {
        var p = new Plot();
        p.Title(title);
        p.XLabel(x);
        p.YLabel(y);
        return p;
    }

    static Color C(int i) => new ScottPlot.Palettes.Category10().GetColor(i);

    static string Hex(int i) => Palette[i % Palette.Length];

    static string Rgba(int i, double a)
    {
        var h = Hex(i);
        int v(int k) => int.Parse(h.AsSpan(1 + 2 * k, 2), NumberStyles.HexNumber, CultureInfo.InvariantCulture);
        return $"rgba({v(0)},{v(1)},{v(2)},{a.ToString("0.##", CultureInfo.InvariantCulture)})";
    }

    /// <summary>Numbers for the JSON spec (NaN and ±∞, which JSON lacks, become null: a gap).</summary>
    static JsonArray Nums(IEnumerable<double> v) => new(v.Select(d => double.IsFinite(d) ? JsonValue.Create(d) : null).ToArray<JsonNode?>());

    static JsonArray Strs(IEnumerable<string> v) => new(v.Select(s => (JsonNode?)JsonValue.Create(s)).ToArray());

    static JsonObject Layout(string title, string x, string y, bool legendOutside = true) => new()
    {
        ["title"] = new JsonObject { ["text"] = title, ["font"] = new JsonObject { ["size"] = 15 } },
        ["xaxis"] = new JsonObject { ["title"] = new JsonObject { ["text"] = x }, ["automargin"] = true },
        ["yaxis"] = new JsonObject { ["title"] = new JsonObject { ["text"] = y }, ["automargin"] = true },
        ["hovermode"] = "closest",
        ["height"] = 440,
        ["margin"] = new JsonObject { ["l"] = 60, ["r"] = 20, ["t"] = 50, ["b"] = 50 },
        ["legend"] = legendOutside
            ? new JsonObject { ["orientation"] = "h", ["y"] = -0.18, ["yanchor"] = "top" }
            : new JsonObject(),
    };

    static JsonObject Spec(JsonArray data, JsonObject layout) => new() { ["data"] = data, ["layout"] = layout };

    /// <summary>Lines with markers (training curves vs step; per-layer quantities vs layer).</summary>
    /// <param name="name">File name stem.</param>
    /// <param name="title">Chart title.</param>
    /// <param name="caption">Caption.</param>
    /// <param name="xLabel">X axis label.</param>
    /// <param name="yLabel">Y axis label.</param>
    /// <param name="series">The lines.</param>
    /// <param name="integerX">Integer ticks on the x axis (layers, k).</param>
    internal static Figure Lines(string name, string title, string caption, string xLabel, string yLabel, IReadOnlyList<Series> series, bool integerX = false)
    {
        var p = New(title, xLabel, yLabel);
        var data = new JsonArray();
        for (int i = 0; i < series.Count; i++)
        {
            var s = p.Add.Scatter(series[i].X, series[i].Y, C(i));
            s.LegendText = series[i].Label;
            s.MarkerSize = series[i].X.Length > 60 ? 0 : 5;
            s.LineWidth = 2;
            data.Add(new JsonObject
            {
                ["type"] = "scatter", ["mode"] = series[i].X.Length > 60 ? "lines" : "lines+markers", ["name"] = series[i].Label,
                ["x"] = Nums(series[i].X), ["y"] = Nums(series[i].Y), ["line"] = new JsonObject { ["color"] = Hex(i), ["width"] = 2 },
            });
        }
        if (integerX) p.Axes.Bottom.TickGenerator = new ScottPlot.TickGenerators.NumericAutomatic { IntegerTicksOnly = true };
        if (series.Count > 1) p.ShowLegend(Alignment.UpperRight);
        var layout = Layout(title, xLabel, yLabel);
        if (integerX) ((JsonObject)layout["xaxis"]!)["dtick"] = 1;
        return Render(p, name, title, caption, Spec(data, layout));
    }

    /// <summary>Bars grouped by category (one colour per series), with optional error bars (± std).</summary>
    /// <param name="name">File name stem.</param>
    /// <param name="title">Chart title.</param>
    /// <param name="caption">Caption.</param>
    /// <param name="yLabel">Y axis label.</param>
    /// <param name="groups">The categories along the x axis.</param>
    /// <param name="series">The bars, one value per category each.</param>
    public static Figure GroupedBars(string name, string title, string caption, string yLabel, IReadOnlyList<string> groups, IReadOnlyList<BarSeries> series)
    {
        var p = New(title, "", yLabel);
        var data = new JsonArray();
        double width = 0.8 / Math.Max(1, series.Count);
        for (int k = 0; k < series.Count; k++)
        {
            var bars = new List<Bar>();
            for (int g = 0; g < groups.Count; g++)
            {
                double v = series[k].Values[g];
                if (!double.IsFinite(v)) continue;
                bars.Add(new Bar
                {
                    Position = g + (k - (series.Count - 1) / 2.0) * width, Value = v, Size = width * 0.95, FillColor = C(k),
                    Error = series[k].Errors is { } e && double.IsFinite(e[g]) ? e[g] : 0,
                });
            }
            var b = p.Add.Bars(bars);
            b.LegendText = series[k].Label;
            var trace = new JsonObject
            {
                ["type"] = "bar", ["name"] = series[k].Label, ["x"] = Strs(groups), ["y"] = Nums(series[k].Values),
                ["marker"] = new JsonObject { ["color"] = Hex(k) },
            };
            if (series[k].Errors is { } errs)
                trace["error_y"] = new JsonObject { ["type"] = "data", ["array"] = Nums(errs), ["visible"] = true };
            data.Add(trace);
        }
        p.Axes.Bottom.SetTicks(Enumerable.Range(0, groups.Count).Select(i => (double)i).ToArray(), groups.ToArray());
        p.Axes.Margins(bottom: 0);
        if (series.Count > 1) p.ShowLegend(Alignment.UpperRight);
        var layout = Layout(title, "", yLabel);
        layout["barmode"] = "group";
        return Render(p, name, title, caption, Spec(data, layout));
    }

    /// <summary>Scatter coloured by a continuous value (viridis: dark = low, yellow = high), with a colour bar.</summary>
    /// <param name="name">File name stem.</param>
    /// <param name="title">Chart title.</param>
    /// <param name="caption">Caption.</param>
    /// <param name="xLabel">X axis label.</param>
    /// <param name="yLabel">Y axis label.</param>
    /// <param name="colorLabel">What the colour shows.</param>
    /// <param name="groups">Point groups, told apart by marker shape.</param>
    internal static Figure ScatterByValue(string name, string title, string caption, string xLabel, string yLabel, string colorLabel,
        IReadOnlyList<(string Label, IReadOnlyList<ColoredPoint> Points)> groups)
    {
        var p = New(title, xLabel, yLabel);
        var all = groups.SelectMany(g => g.Points).Select(q => q.Color).Where(double.IsFinite).ToArray();
        double lo = all.Length > 0 ? all.Min() : 0, hi = all.Length > 0 ? all.Max() : 1;
        var cmap = new ScottPlot.Colormaps.Viridis();
        MarkerShape[] shapes = [MarkerShape.FilledCircle, MarkerShape.FilledTriangleUp, MarkerShape.FilledSquare, MarkerShape.FilledDiamond];
        string[] symbols = ["circle", "triangle-up", "square", "diamond"];
        var data = new JsonArray();
        for (int gi = 0; gi < groups.Count; gi++)
        {
            foreach (var q in groups[gi].Points)
                p.Add.Marker(q.X, q.Y, shapes[gi % shapes.Length], 7, cmap.GetColor(hi > lo ? (q.Color - lo) / (hi - lo) : 0.5));
            var legend = p.Add.Marker(double.NaN, double.NaN, shapes[gi % shapes.Length], 7, Colors.Gray);
            legend.LegendText = groups[gi].Label;
            var pts = groups[gi].Points;
            data.Add(new JsonObject
            {
                ["type"] = "scatter", ["mode"] = "markers", ["name"] = groups[gi].Label,
                ["x"] = Nums(pts.Select(q => q.X)), ["y"] = Nums(pts.Select(q => q.Y)),
                ["marker"] = new JsonObject
                {
                    ["symbol"] = symbols[gi % symbols.Length], ["size"] = 8, ["color"] = Nums(pts.Select(q => q.Color)),
                    ["colorscale"] = "Viridis", ["cmin"] = lo, ["cmax"] = hi, ["showscale"] = gi == 0,
                    ["colorbar"] = new JsonObject { ["title"] = new JsonObject { ["text"] = colorLabel } },
                },
                ["hovertemplate"] = $"x %{{x:.4g}}<br>y %{{y:.4g}}<br>{colorLabel} %{{marker.color:.4g}}<extra>{groups[gi].Label}</extra>",
            });
        }
        var heat = p.Add.ColorBar(new ColorAxisSource(cmap, lo, hi));
        heat.Label = $"{colorLabel} ({lo:G3} … {hi:G3})";
        p.ShowLegend(Alignment.UpperRight);
        return Render(p, name, title, caption, Spec(data, Layout(title, xLabel, yLabel)));
    }

    /// <summary>Scatter coloured by category (the regime map). Point names are shown on hover in the interactive figure;
    /// the static rendering numbers the points and lists the names in the caption's key, so labels never overlap or
    /// run off the plot.</summary>
    /// <param name="name">File name stem.</param>
    /// <param name="title">Chart title.</param>
    /// <param name="caption">Caption (a key of the numbered points is appended when points are named).</param>
    /// <param name="xLabel">X axis label.</param>
    /// <param name="yLabel">Y axis label.</param>
    /// <param name="groups">The categories and their points.</param>
    public static Figure ScatterByCategory(string name, string title, string caption, string xLabel, string yLabel, IReadOnlyList<CategoryPoints> groups)
    {
        var p = New(title, xLabel, yLabel);
        var data = new JsonArray();
        var key = new List<string>();
        int number = 0;
        for (int i = 0; i < groups.Count; i++)
        {
            var g = groups[i];
            var s = p.Add.ScatterPoints(g.X, g.Y, C(i));
            s.MarkerSize = 9;
            s.LegendText = g.Category;
            var trace = new JsonObject
            {
                ["type"] = "scatter", ["mode"] = "markers", ["name"] = g.Category, ["x"] = Nums(g.X), ["y"] = Nums(g.Y),
                ["marker"] = new JsonObject { ["color"] = Hex(i), ["size"] = 10 },
            };
            if (g.Labels is { } labels)
            {
                var numbers = new List<string>();
                for (int j = 0; j < labels.Length; j++)
                {
                    number++;
                    var t = p.Add.Text(number.ToString(CultureInfo.InvariantCulture), g.X[j], g.Y[j]);
                    t.LabelFontSize = 10;
                    t.OffsetX = 5;
                    t.OffsetY = -5;
                    key.Add($"{number} = {labels[j]}");
                    numbers.Add(number.ToString(CultureInfo.InvariantCulture));
                }
                trace["text"] = Strs(labels);
                trace["hovertemplate"] = "%{text}<br>x %{x:.4g}<br>y %{y:.4g}<extra>" + g.Category + "</extra>";
            }
            data.Add(trace);
        }
        p.Axes.Margins(left: 0.08, right: 0.12, bottom: 0.08, top: 0.12);
        p.ShowLegend(Alignment.UpperLeft);
        var full = key.Count > 0 ? caption + " Points in the static image: " + string.Join("; ", key) + "." : caption;
        return Render(p, name, title, full, Spec(data, Layout(title, xLabel, yLabel)));
    }

    /// <summary>Exponential moving average as TensorBoard smooths: s_0 = y_0, s_t = w·s_(t−1) + (1 − w)·y_t; a non-finite
    /// y_t is skipped (s_t = s_(t−1), NaN before the first finite value).</summary>
    /// <param name="y">The raw values in step order.</param>
    /// <param name="weight">w in [0, 1): 0 = no smoothing.</param>
    public static double[] Ema(IReadOnlyList<double> y, double weight)
    {
        if (weight is < 0 or >= 1) throw new ArgumentOutOfRangeException(nameof(weight), weight, "the EMA weight must be in [0, 1)");
        var s = new double[y.Count];
        double last = double.NaN;
        for (int t = 0; t < y.Count; t++)
        {
            if (double.IsFinite(y[t])) last = double.IsNaN(last) ? y[t] : weight * last + (1 - weight) * y[t];
            s[t] = last;
        }
        return s;
    }

    /// <summary>Mean, minimum and maximum over seeds at every step that some seed logged (seeds without a finite value
    /// at a step are left out of it).</summary>
    /// <param name="seeds">One series per seed.</param>
    public static SeedBand Band(IReadOnlyList<Series> seeds)
    {
        var xs = seeds.SelectMany(s => s.X).Distinct().Order().ToArray();
        var lookup = seeds.Select(s =>
        {
            var d = new Dictionary<double, double>();
            for (int i = 0; i < s.X.Length; i++) d[s.X[i]] = s.Y[i];
            return d;
        }).ToList();
        var mean = new double[xs.Length];
        var min = new double[xs.Length];
        var max = new double[xs.Length];
        var n = new int[xs.Length];
        for (int i = 0; i < xs.Length; i++)
        {
            var v = lookup.Select(d => d.TryGetValue(xs[i], out var y) ? y : double.NaN).Where(double.IsFinite).ToArray();
            n[i] = v.Length;
            mean[i] = v.Length > 0 ? v.Average() : double.NaN;
            min[i] = v.Length > 0 ? v.Min() : double.NaN;
            max[i] = v.Length > 0 ? v.Max() : double.NaN;
        }
        return new SeedBand(xs, mean, min, max, n);
    }

    /// <summary>One metric over training steps for several runs, each with several seeds. Each seed's curve is smoothed
    /// with <see cref="Ema"/>; the bold line is the mean of the smoothed seeds and the shaded band their minimum to
    /// maximum. Every seed's raw curve and the raw mean are in the legend, hidden until clicked.</summary>
    /// <param name="name">File name stem.</param>
    /// <param name="title">Chart title.</param>
    /// <param name="caption">Caption (the smoothing and band are appended).</param>
    /// <param name="yLabel">Y axis label (the metric).</param>
    /// <param name="runs">The runs, one colour each.</param>
    /// <param name="smoothing">EMA weight (0: none).</param>
    public static Figure TrainingCurves(string name, string title, string caption, string yLabel, IReadOnlyList<SeededSeries> runs, double smoothing = DefaultSmoothing)
    {
        var p = New(title, "step", yLabel);
        var data = new JsonArray();
        for (int i = 0; i < runs.Count; i++)
        {
            var run = runs[i];
            var smoothed = run.Seeds.Select(s => new Series(s.Label, s.X, Ema(s.Y, smoothing))).ToList();
            var band = Band(smoothed);
            var raw = Band(run.Seeds);
            string group = "run" + i.ToString(CultureInfo.InvariantCulture);
            if (run.Seeds.Count > 1)
            {
                data.Add(new JsonObject
                {
                    ["type"] = "scatter", ["mode"] = "lines", ["x"] = Nums(band.X), ["y"] = Nums(band.Min), ["name"] = $"{run.Label} min (EMA)",
                    ["legendgroup"] = group + "band", ["showlegend"] = false, ["line"] = new JsonObject { ["width"] = 0, ["color"] = Hex(i) },
                    ["hoverinfo"] = "skip",
                });
                data.Add(new JsonObject
                {
                    ["type"] = "scatter", ["mode"] = "lines", ["x"] = Nums(band.X), ["y"] = Nums(band.Max),
                    ["name"] = $"{run.Label} min–max of {run.Seeds.Count} seeds (EMA)", ["legendgroup"] = group + "band",
                    ["fill"] = "tonexty", ["fillcolor"] = Rgba(i, 0.2), ["line"] = new JsonObject { ["width"] = 0, ["color"] = Hex(i) },
                    ["hoverinfo"] = "skip",
                });
                var lo = p.Add.Scatter(band.X, band.Min, C(i).WithAlpha(0.5));
                lo.MarkerSize = 0; lo.LineWidth = 1; lo.LinePattern = LinePattern.Dotted;
                var hi = p.Add.Scatter(band.X, band.Max, C(i).WithAlpha(0.5));
                hi.MarkerSize = 0; hi.LineWidth = 1; hi.LinePattern = LinePattern.Dotted;
            }
            var meanName = run.Seeds.Count > 1 ? $"{run.Label} mean of {run.Seeds.Count} seeds (EMA)" : $"{run.Label} {run.Seeds[0].Label} (EMA)";
            data.Add(new JsonObject
            {
                ["type"] = "scatter", ["mode"] = "lines", ["x"] = Nums(band.X), ["y"] = Nums(band.Mean), ["name"] = meanName,
                ["legendgroup"] = group + "mean", ["line"] = new JsonObject { ["width"] = 2.5, ["color"] = Hex(i) },
            });
            var m = p.Add.Scatter(band.X, band.Mean, C(i));
            m.MarkerSize = 0; m.LineWidth = 2; m.LegendText = meanName;
            if (run.Seeds.Count > 1)
                data.Add(new JsonObject
                {
                    ["type"] = "scatter", ["mode"] = "lines", ["x"] = Nums(raw.X), ["y"] = Nums(raw.Mean), ["name"] = $"{run.Label} mean (raw)",
                    ["visible"] = "legendonly", ["line"] = new JsonObject { ["width"] = 1.5, ["color"] = Hex(i), ["dash"] = "dash" },
                });
            foreach (var s in run.Seeds)
                data.Add(new JsonObject
                {
                    ["type"] = "scatter", ["mode"] = "lines", ["x"] = Nums(s.X), ["y"] = Nums(s.Y), ["name"] = $"{run.Label} {s.Label} (raw)",
                    ["visible"] = "legendonly", ["opacity"] = 0.7, ["line"] = new JsonObject { ["width"] = 1, ["color"] = Hex(i), ["dash"] = "dot" },
                });
        }
        if (runs.Count > 0) p.ShowLegend(Alignment.UpperRight);
        var full = $"{caption} Lines: each seed smoothed with an exponential moving average (weight {smoothing.ToString("0.##", CultureInfo.InvariantCulture)}), then averaged over seeds; band: minimum to maximum of the smoothed seeds. Click a legend entry to show a seed's raw values or the raw mean.";
        return Render(p, name, title, full, Spec(data, Layout(title, "step", yLabel)));
    }
}
