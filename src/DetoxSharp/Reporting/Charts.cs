using ScottPlot;

namespace DetoxSharp.Reporting;

/// <summary>A rendered chart: the same plot as SVG (inlined in the HTML) and PNG (for slides and READMEs).</summary>
public sealed record Figure(string Name, string Title, string Caption, string Svg, byte[] Png);

public sealed record Series(string Label, double[] X, double[] Y);

public sealed record BarSeries(string Label, double[] Values, double[]? Errors = null);

public sealed record ColoredPoint(double X, double Y, double Color);

public sealed record CategoryPoints(string Category, double[] X, double[] Y, string[]? Labels = null);

sealed class ColorAxisSource(IColormap cmap, double lo, double hi) : IHasColorAxis
{
    public IColormap Colormap { get; set; } = cmap;
    public ScottPlot.Range GetRange() => new(lo, hi);
}

/// <summary>The chart kinds the study report needs, drawn with ScottPlot.</summary>
public static class Charts
{
    public const int Width = 720, Height = 400;

    static Figure Render(Plot p, string name, string title, string caption)
    {
        var svg = p.GetSvgXml(Width, Height);
        var png = p.GetImageBytes(Width, Height, ImageFormat.Png);
        return new Figure(name, title, caption, svg, png);
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

    /// <summary>Lines with markers (training curves vs step; per-layer quantities vs layer).</summary>
    internal static Figure Lines(string name, string title, string caption, string xLabel, string yLabel, IReadOnlyList<Series> series, bool integerX = false)
    {
        var p = New(title, xLabel, yLabel);
        for (int i = 0; i < series.Count; i++)
        {
            var s = p.Add.Scatter(series[i].X, series[i].Y, C(i));
            s.LegendText = series[i].Label;
            s.MarkerSize = series[i].X.Length > 60 ? 0 : 5;
            s.LineWidth = 2;
        }
        if (integerX) p.Axes.Bottom.TickGenerator = new ScottPlot.TickGenerators.NumericAutomatic { IntegerTicksOnly = true };
        if (series.Count > 1) p.ShowLegend(Alignment.UpperRight);
        return Render(p, name, title, caption);
    }

    /// <summary>Bars grouped by category (one colour per series), with optional error bars (± std).</summary>
    public static Figure GroupedBars(string name, string title, string caption, string yLabel, IReadOnlyList<string> groups, IReadOnlyList<BarSeries> series)
    {
        var p = New(title, "", yLabel);
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
        }
        p.Axes.Bottom.SetTicks(Enumerable.Range(0, groups.Count).Select(i => (double)i).ToArray(), groups.ToArray());
        p.Axes.Margins(bottom: 0);
        if (series.Count > 1) p.ShowLegend(Alignment.UpperRight);
        return Render(p, name, title, caption);
    }

    /// <summary>Scatter coloured by a continuous value (viridis: dark = low, yellow = high), with a colour bar.</summary>
    internal static Figure ScatterByValue(string name, string title, string caption, string xLabel, string yLabel, string colorLabel,
        IReadOnlyList<(string Label, IReadOnlyList<ColoredPoint> Points)> groups)
    {
        var p = New(title, xLabel, yLabel);
        var all = groups.SelectMany(g => g.Points).Select(q => q.Color).Where(double.IsFinite).ToArray();
        double lo = all.Length > 0 ? all.Min() : 0, hi = all.Length > 0 ? all.Max() : 1;
        var cmap = new ScottPlot.Colormaps.Viridis();
        MarkerShape[] shapes = [MarkerShape.FilledCircle, MarkerShape.FilledTriangleUp, MarkerShape.FilledSquare, MarkerShape.FilledDiamond];
        for (int gi = 0; gi < groups.Count; gi++)
        {
            foreach (var q in groups[gi].Points)
            {
                var m = p.Add.Marker(q.X, q.Y, shapes[gi % shapes.Length], 7, cmap.GetColor(hi > lo ? (q.Color - lo) / (hi - lo) : 0.5));
            }
            var legend = p.Add.Marker(double.NaN, double.NaN, shapes[gi % shapes.Length], 7, Colors.Gray);
            legend.LegendText = groups[gi].Label;
        }
        var heat = p.Add.ColorBar(new ColorAxisSource(cmap, lo, hi));
        heat.Label = $"{colorLabel} ({lo:G3} … {hi:G3})";
        p.ShowLegend(Alignment.UpperRight);
        return Render(p, name, title, caption);
    }

    /// <summary>Scatter coloured by category (the regime map), points optionally labelled.</summary>
    public static Figure ScatterByCategory(string name, string title, string caption, string xLabel, string yLabel, IReadOnlyList<CategoryPoints> groups)
    {
        var p = New(title, xLabel, yLabel);
        for (int i = 0; i < groups.Count; i++)
        {
            var g = groups[i];
            var s = p.Add.ScatterPoints(g.X, g.Y, C(i));
            s.MarkerSize = 9;
            s.LegendText = g.Category;
            if (g.Labels is { } labels)
                for (int j = 0; j < labels.Length; j++)
                {
                    var t = p.Add.Text(labels[j], g.X[j], g.Y[j]);
                    t.LabelFontSize = 10;
                    t.OffsetX = 6;
                }
        }
        p.ShowLegend(Alignment.UpperLeft);
        return Render(p, name, title, caption);
    }
}
