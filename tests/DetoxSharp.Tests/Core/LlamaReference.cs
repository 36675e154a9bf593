namespace DetoxSharp.Tests.Core;

/// <summary>
/// A plain-C# double-precision Llama/Mistral/Qwen2 forward pass, written from the formulas of transformers'
/// modeling_llama.py (not from the model code under test): RMSNorm, rotate-half RoPE with θ and the llama3 frequency
/// rule, grouped-query attention with an optional sliding window (a key k is visible to query q iff k ≤ q and
/// q − k &lt; window), SwiGLU MLP. Weights come as row-major double arrays keyed by transformers' tensor names.
/// </summary>
sealed class LlamaReference
{
    public required int Vocab, D, Layers, Heads, KvHeads, HeadDim, Mlp;
    public required double Eps, Theta;
    public bool QkvBias, Tied;
    public int? Window;
    /// <summary>(factor, low_freq_factor, high_freq_factor, original_max_position_embeddings) of rope_scaling llama3.</summary>
    public (double Factor, double Low, double High, double Old)? Llama3;
    public required Dictionary<string, double[]> W;

    double[] InvFreq()
    {
        var inv = new double[HeadDim / 2];
        for (int i = 0; i < inv.Length; i++)
        {
            inv[i] = Math.Pow(Theta, -2.0 * i / HeadDim);
            if (Llama3 is var (f, lo, hi, old))
            {
                double wl = 2 * Math.PI / inv[i];
                if (wl > old / lo) inv[i] /= f;                      // long wavelengths: interpolate by the factor
                else if (wl >= old / hi)                              // between: blend linearly in old/wavelen
                {
                    double s = (old / wl - lo) / (hi - lo);
                    inv[i] = (1 - s) * inv[i] / f + s * inv[i];
                }
            }
        }
        return inv;
    }

    static double[] MatVec(double[] w, int rows, int cols, double[] x, double[]? bias = null)
    {
        var y = new double[rows];
        for (int r = 0; r < rows; r++)
        {
            double s = bias?[r] ?? 0;
            for (int c = 0; c < cols; c++) s += w[r * cols + c] * x[c];
            y[r] = s;
        }
        return y;
    }

    double[] RmsNorm(double[] x, double[] w)
    {
        double ms = x.Sum(v => v * v) / x.Length;
        double r = 1 / Math.Sqrt(ms + Eps);
        return x.Select((v, i) => v * r * w[i]).ToArray();
    }

    void Rotate(double[] vec, int offset, int pos, double[] inv)
    {
        int half = HeadDim / 2;
        for (int i = 0; i < half; i++)
        {
            double a = pos * inv[i], c = Math.Cos(a), s = Math.Sin(a);
            double x1 = vec[offset + i], x2 = vec[offset + half + i];
            vec[offset + i] = x1 * c - x2 * s;
            vec[offset + half + i] = x2 * c + x1 * s;
        }
    }

    /// <summary>Logits [T][vocab] of one unpadded sequence.</summary>
    public double[][] Logits(IReadOnlyList<int> ids)
    {
        int t = ids.Count;
        var inv = InvFreq();
        var x = ids.Select(id => W["model.embed_tokens.weight"].Skip(id * D).Take(D).ToArray()).ToArray();
        for (int l = 0; l < Layers; l++)
        {
            string p = $"model.layers.{l}.";
            var qs = new double[t][]; var ks = new double[t][]; var vs = new double[t][];
            for (int i = 0; i < t; i++)
            {
                var h = RmsNorm(x[i], W[p + "input_layernorm.weight"]);
                qs[i] = MatVec(W[p + "self_attn.q_proj.weight"], Heads * HeadDim, D, h, QkvBias ? W[p + "self_attn.q_proj.bias"] : null);
                ks[i] = MatVec(W[p + "self_attn.k_proj.weight"], KvHeads * HeadDim, D, h, QkvBias ? W[p + "self_attn.k_proj.bias"] : null);
                vs[i] = MatVec(W[p + "self_attn.v_proj.weight"], KvHeads * HeadDim, D, h, QkvBias ? W[p + "self_attn.v_proj.bias"] : null);
                for (int hh = 0; hh < Heads; hh++) Rotate(qs[i], hh * HeadDim, i, inv);
                for (int hh = 0; hh < KvHeads; hh++) Rotate(ks[i], hh * HeadDim, i, inv);
            }
            var next = new double[t][];
            for (int i = 0; i < t; i++)
            {
                var z = new double[Heads * HeadDim];
                for (int hh = 0; hh < Heads; hh++)
                {
                    int kv = hh / (Heads / KvHeads);
                    var keys = Enumerable.Range(0, i + 1).Where(j => Window is not int w || i - j < w).ToList();
                    var scores = keys.Select(j =>
                    {
                        double s = 0;
                        for (int e = 0; e < HeadDim; e++) s += qs[i][hh * HeadDim + e] * ks[j][kv * HeadDim + e];
                        return s / Math.Sqrt(HeadDim);
                    }).ToArray();
                    double mx = scores.Max();
                    var wts = scores.Select(s => Math.Exp(s - mx)).ToArray();
                    double sum = wts.Sum();
                    for (int n = 0; n < keys.Count; n++)
                        for (int e = 0; e < HeadDim; e++) z[hh * HeadDim + e] += wts[n] / sum * vs[keys[n]][kv * HeadDim + e];
                }
                var o = MatVec(W[p + "self_attn.o_proj.weight"], D, Heads * HeadDim, z);
                var mid = x[i].Select((v, e) => v + o[e]).ToArray();
                var h2 = RmsNorm(mid, W[p + "post_attention_layernorm.weight"]);
                var g = MatVec(W[p + "mlp.gate_proj.weight"], Mlp, D, h2);
                var u = MatVec(W[p + "mlp.up_proj.weight"], Mlp, D, h2);
                var act = g.Select((gv, n) => gv / (1 + Math.Exp(-gv)) * u[n]).ToArray();
                var m = MatVec(W[p + "mlp.down_proj.weight"], D, Mlp, act);
                next[i] = mid.Select((v, e) => v + m[e]).ToArray();
            }
            x = next;
        }
        var head = Tied ? W["model.embed_tokens.weight"] : W["lm_head.weight"];
        return x.Select(xi => MatVec(head, Vocab, D, RmsNorm(xi, W["model.norm.weight"]))).ToArray();
    }

    /// <summary>log p(ids[t+1] | ids[≤t]) for t = 0..T-2.</summary>
    public double[] TokenLogProbs(IReadOnlyList<int> ids)
    {
        var logits = Logits(ids);
        return Enumerable.Range(0, ids.Count - 1).Select(t =>
        {
            double mx = logits[t].Max();
            double lse = mx + Math.Log(logits[t].Sum(v => Math.Exp(v - mx)));
            return logits[t][ids[t + 1]] - lse;
        }).ToArray();
    }

    /// <summary>Greedy continuation (argmax, full recomputation each step).</summary>
    public int[] Greedy(IReadOnlyList<int> prompt, int n)
    {
        var seq = prompt.ToList();
        for (int i = 0; i < n; i++)
        {
            var last = Logits(seq)[^1];
            int best = 0;
            for (int v = 1; v < last.Length; v++) if (last[v] > last[best]) best = v;
            seq.Add(best);
        }
        return seq.Skip(prompt.Count).ToArray();
    }
}
