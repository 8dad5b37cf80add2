"""The linear layers of one GPT-2 small decode step: plain products against oneDNN's prepacked weights.

    python benchmarks/bench_linear.py                   # float32 and bfloat16, rows 1 .. 64
    python benchmarks/bench_linear.py --rows 1,8 --dtypes float32

Times the 48 block projections (12 x c_attn, attn.c_proj, c_fc, mlp.c_proj) and the tied LM head of a
decode step for M rows (one token each: M = n rollouts or beams), with random GPT-2 small-shaped weights:
- plain: what the model ran before packing: float32 `addmm` with the [in, out] Conv1D weights and the
  head's [C, V] transposed copy; bfloat16 `F.linear`, the faster bf16 layout there;
- packed: `model.packed.linear` on the blocked copies (`model.packed.reorder`), as the model runs them
  now at more than one row (and at every row count in bfloat16).
Runs are interleaved (plain, packed, plain, ...) and each ratio is the median over pairs, so a noisy
neighbour slows both. This is where the model's dispatch rule comes from: float32 at one row stays on
`addmm` (MKL's matrix-vector product is the faster one there).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from model import packed  # noqa: E402

BLOCK = [(768, 2304), (768, 768), (768, 3072), (3072, 768)] * 12  # [in, out] of each projection
VOCAB = 50257


def parse_args():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", default="1,2,4,8,16,64")
    ap.add_argument("--dtypes", default="float32,bfloat16")
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--threads", type=int, default=2)
    return ap.parse_args()


def make_layers(dtype):
    g = torch.Generator().manual_seed(0)
    w_in_out = [(torch.randn(a, b, generator=g) * 0.02).to(dtype) for a, b in BLOCK]
    bias = [torch.zeros(b, dtype=dtype) for _, b in BLOCK]
    wte = (torch.randn(VOCAB, 768, generator=g) * 0.02).to(dtype)  # [V, C], as stored
    return w_in_out, bias, wte


def step_fns(dtype):
    """(plain, packed): each runs one decode step's linear layers on inputs {in_features: (M, in)}."""
    w, bias, wte = make_layers(dtype)
    blocked = [packed.reorder(x.t()) for x in w]
    head_blocked = packed.reorder(wte)
    if dtype == torch.float32:
        head_t = wte.t().contiguous()

        def plain(xs):
            for x, b in zip(w, bias):
                torch.addmm(b, xs[x.shape[0]], x)
            return xs[768] @ head_t
    else:
        w_out_in = [x.t().contiguous() for x in w]

        def plain(xs):
            for x, b in zip(w_out_in, bias):
                F.linear(xs[x.shape[1]], x, b)
            return F.linear(xs[768], wte)

    def fast(xs):
        for x, p, b in zip(w, blocked, bias):
            packed.linear(xs[x.shape[0]], p, b)
        return packed.linear(xs[768], head_blocked, None)

    return plain, fast


def timed(fn, xs):
    t0 = time.perf_counter()
    fn(xs)
    return time.perf_counter() - t0


def main():
    args = parse_args()
    torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; GPT-2 small decode-step linears "
          f"(48 block projections + LM head), median of {args.repeats} interleaved runs")
    print("\n| dtype | rows | plain ms | packed ms | packed speed-up |")
    print("|---|---:|---:|---:|---:|")
    for name in args.dtypes.split(","):
        dtype = getattr(torch, name)
        if not packed.available(dtype):
            print(f"| {name} | - | - | - | oneDNN linear not available in this build / on this CPU |")
            continue
        plain, fast = step_fns(dtype)
        for M in (int(r) for r in args.rows.split(",")):
            g = torch.Generator().manual_seed(M)
            xs = {k: torch.randn(M, k, generator=g).to(dtype) for k in (768, 3072)}
            plain(xs), fast(xs)  # warm-up
            t_plain, t_fast = [], []
            for _ in range(args.repeats):
                t_plain.append(timed(plain, xs))
                t_fast.append(timed(fast, xs))
            ratio = statistics.median(a / b for a, b in zip(t_plain, t_fast))
            print(f"| {name} | {M} | {1e3 * statistics.median(t_plain):.1f} | {1e3 * statistics.median(t_fast):.1f} "
                  f"| {ratio:.2f}x |", flush=True)


if __name__ == "__main__":
    main()
