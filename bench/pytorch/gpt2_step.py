#!/usr/bin/env python3
"""The PyTorch side of bench/side-by-side.sh: the same GPT-2 step DetoxSharp's benchmark times, in plain PyTorch.

Model: GPT-2 (pre-LayerNorm blocks, learned positions, Conv1D weights stored [in, out] as in Hugging Face, tied LM
head, gelu_new), random weights, fp32, train mode without dropout. Measures, with torch.set_num_threads(threads):
  forward  - no-grad forward of a [batch, T] block of random tokens (logits for every position), tokens/s;
  sft step - forward + next-token cross-entropy + backward + AdamW step, tokens/s.
Warm-up: one call each (allocations, AdamW state). Prints one JSON object on stdout.

Needs only torch (Debian: apt-get install python3-torch). No transformers package: the model is written out here so
both sides run the same arithmetic.
"""
import argparse
import json
import math
import time

import torch
import torch.nn.functional as F

CONFIGS = {
    "124m": dict(vocab=50257, d=768, layers=12, heads=12, ctx=1024),
    "355m": dict(vocab=50257, d=1024, layers=24, heads=16, ctx=1024),
    "toy": dict(vocab=2000, d=128, layers=4, heads=4, ctx=256),
}


class Conv1D(torch.nn.Module):
    """Hugging Face's Conv1D: y = x @ W + b with W stored [in, out]."""

    def __init__(self, n_in, n_out):
        super().__init__()
        self.weight = torch.nn.Parameter(torch.randn(n_in, n_out) * 0.02)
        self.bias = torch.nn.Parameter(torch.zeros(n_out))

    def forward(self, x):
        shape = x.shape[:-1] + (self.weight.shape[1],)
        return torch.addmm(self.bias, x.reshape(-1, x.shape[-1]), self.weight).view(shape)


class Block(torch.nn.Module):
    def __init__(self, d, heads):
        super().__init__()
        self.heads = heads
        self.ln_1 = torch.nn.LayerNorm(d, eps=1e-5)
        self.c_attn = Conv1D(d, 3 * d)
        self.attn_proj = Conv1D(d, d)
        self.ln_2 = torch.nn.LayerNorm(d, eps=1e-5)
        self.c_fc = Conv1D(d, 4 * d)
        self.mlp_proj = Conv1D(4 * d, d)

    def forward(self, x, causal):
        b, t, d = x.shape
        hd = d // self.heads
        q, k, v = self.c_attn(self.ln_1(x)).split(d, dim=2)
        q, k, v = (z.view(b, t, self.heads, hd).transpose(1, 2) for z in (q, k, v))
        if hasattr(F, "scaled_dot_product_attention"):  # PyTorch >= 2.0
            a = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        else:  # PyTorch 1.x (Debian 12's python3-torch): the explicit form, as HF's GPT-2 of that era
            w = (q @ k.transpose(-1, -2)) / math.sqrt(hd)
            w = w.masked_fill(~causal[:t, :t], float("-inf")).softmax(-1)
            a = w @ v
        x = x + self.attn_proj(a.transpose(1, 2).reshape(b, t, d))
        h = F.gelu(self.c_fc(self.ln_2(x)), approximate="tanh")
        return x + self.mlp_proj(h)


class GPT2(torch.nn.Module):
    def __init__(self, vocab, d, layers, heads, ctx):
        super().__init__()
        self.wte = torch.nn.Parameter(torch.randn(vocab, d) * 0.02)
        self.wpe = torch.nn.Parameter(torch.randn(ctx, d) * 0.01)
        self.blocks = torch.nn.ModuleList(Block(d, heads) for _ in range(layers))
        self.ln_f = torch.nn.LayerNorm(d, eps=1e-5)
        self.register_buffer("causal", torch.ones(ctx, ctx, dtype=torch.bool).tril())

    def forward(self, ids):
        t = ids.shape[1]
        x = self.wte[ids] + self.wpe[:t]
        for blk in self.blocks:
            x = blk(x, self.causal)
        return self.ln_f(x) @ self.wte.t()  # tied LM head


def sft_step(model, opt, ids):
    logits = model(ids)
    v = logits.shape[-1]
    loss = F.cross_entropy(logits[:, :-1].reshape(-1, v), ids[:, 1:].reshape(-1))
    opt.zero_grad(set_to_none=False)
    loss.backward()
    opt.step()
    return loss.item()


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", choices=CONFIGS, default="124m")
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--seq", type=int, default=128)
    ap.add_argument("--forward-reps", type=int, default=3)
    ap.add_argument("--sft-steps", type=int, default=3)
    ap.add_argument("--warmup", type=int, default=1, help="untimed forwards and SFT steps before the timed ones (>= 1)")
    ap.add_argument("--threads", type=int, default=0, help="0 = os.cpu_count()")
    a = ap.parse_args()
    if a.warmup < 1:
        ap.error("--warmup must be >= 1")
    import os

    threads = a.threads or os.cpu_count()
    torch.set_num_threads(threads)
    torch.manual_seed(0)
    model = GPT2(**CONFIGS[a.config])
    params = sum(p.numel() for p in model.parameters())
    ids = torch.randint(0, CONFIGS[a.config]["vocab"], (a.batch, a.seq))
    tokens = a.batch * a.seq

    model.eval()
    with torch.no_grad():
        for _ in range(a.warmup):
            model(ids)  # warm-up
        t0 = time.perf_counter()
        for _ in range(a.forward_reps):
            model(ids)
        fwd = tokens * a.forward_reps / (time.perf_counter() - t0)

    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-5)
    for _ in range(a.warmup):
        sft_step(model, opt, ids)  # warm-up (the first allocates AdamW state)
    t0 = time.perf_counter()
    losses = [sft_step(model, opt, ids) for _ in range(a.sft_steps)]
    sec = time.perf_counter() - t0
    print(json.dumps({
        "impl": "pytorch", "version": torch.__version__, "threads": torch.get_num_threads(), "config": a.config,
        "params": params, "batch": a.batch, "seq": a.seq, "warmup": a.warmup, "forward_tok_s": fwd, "sft_tok_s": tokens * a.sft_steps / sec,
        "sft_s_per_step": sec / a.sft_steps, "losses": losses,
        "mkldnn": torch.backends.mkldnn.is_available(), "openmp": torch.backends.openmp.is_available(),
    }))


if __name__ == "__main__":
    main()
