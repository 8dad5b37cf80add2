"""One GPT-2 small decode step: its linear layers (plain products against oneDNN's prepacked weights), or
with --decode the whole step (the CPU decode kernels against the torch path).

    python benchmarks/bench_linear.py                   # float32 and bfloat16, rows 1 .. 64
    python benchmarks/bench_linear.py --rows 1,8 --dtypes float32
    python benchmarks/bench_linear.py --decode          # float32, bfloat16, int8; rows 1, 2, 4, 8
    python benchmarks/bench_linear.py --decode --force-kernels --threads 1   # the kernels past their row limit
    python benchmarks/bench_linear.py --many-rows [--width 1600]   # prompt-sized products: kernels vs torch

Times the 48 block projections (12 x c_attn, attn.c_proj, c_fc, mlp.c_proj) and the tied LM head of a
decode step for M rows (one token each: M = n rollouts or beams), with random GPT-2 small-shaped weights:
- plain: what the model ran before packing: float32 `addmm` with the [in, out] Conv1D weights and the
  head's [C, V] transposed copy; bfloat16 `F.linear`, the faster bf16 layout there;
- packed: `model.packed.linear` on the blocked copies (`model.packed.reorder`), as the model runs them
  now at more than one row (and at every row count in bfloat16).
Runs are interleaved (plain, packed, plain, ...) and each ratio is the median over pairs, so a noisy
neighbour slows both. This is where the model's dispatch rule comes from: float32 at one row stays on
`addmm` (MKL's matrix-vector product is the faster one there).

--decode times whole decode steps of random GPT-2 small weights (a 16-token prompt, its KV shared by the
rows as n rollouts share it), the same model with `gpt.cpu_kernels` on and off, interleaved; it prints ms
per step (wall and this process's CPU time), the weight bytes read per step over the wall time, and the
median per-round speed-up. Rows above cpu_decode.MAX_ROWS run the torch path either way, unless
--force-kernels lifts the limits to 8 (how the limits were chosen: wall-time speed-up at 2 threads on a quiet
machine; see cpu_decode.MAX_ROWS).

--many-rows times one block's four products at prompt-sized row counts (default 9 .. 256) on GPT-2 small's widths
(--width 1600: XL's), through the kernels (cpu_decode.linear: kn_many_rows) and through the torch path the model
takes without them (float32: MKL's addmm on the [in, out] weight; bfloat16: widened to float32 where oneDNN has
no bfloat16 GEMM, else F.linear), interleaved; cpu_decode.MANY_ROWS comes from its speed-ups.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from pigpt.model import packed

BLOCK = [(768, 2304), (768, 768), (768, 3072), (3072, 768)] * 12  # [in, out] of each projection
VOCAB = 50257


def parse_args():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", default=None, help="default 1,2,4,8,16,64 (--decode: 1,2,4,8)")
    ap.add_argument("--dtypes", default=None, help="default float32,bfloat16 (--decode: also int8)")
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--decode", action="store_true", help="whole decode steps: CPU kernels vs torch path")
    ap.add_argument("--steps", type=int, default=16, help="--decode: decode steps per timed run")
    ap.add_argument("--force-kernels", action="store_true", help="--decode: the kernels at every row count")
    ap.add_argument("--many-rows", action="store_true", help="prompt-sized products: kernels vs torch path")
    ap.add_argument("--width", type=int, default=768, help="--many-rows: n_embd (768 small, 1600 XL)")
    args = ap.parse_args()
    args.rows = args.rows or ("1,2,4,8" if args.decode else "9,16,32,64,128,256" if args.many_rows
                              else "1,2,4,8,16,64")
    args.dtypes = args.dtypes or ("float32,bfloat16,int8" if args.decode else "float32,bfloat16")
    return args


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


def interleaved(ref, fast, xs, repeats: int) -> tuple[float, float, float]:
    """One warm-up call each, then `repeats` rounds of ref, fast: (median ref s, median fast s, median ratio)."""
    ref(xs), fast(xs)
    t_ref, t_fast = [], []
    for _ in range(repeats):
        t_ref.append(timed(ref, xs))
        t_fast.append(timed(fast, xs))
    ratio = statistics.median(a / b for a, b in zip(t_ref, t_fast))
    return statistics.median(t_ref), statistics.median(t_fast), ratio


def decode_model(dtype: str):
    from pigpt.model import GPT, GPTConfig

    torch.manual_seed(0)
    gpt = GPT(GPTConfig()).eval()  # GPT-2 small's shape
    return gpt.quantize("int8") if dtype == "int8" else gpt.to(getattr(torch, dtype))


def weight_bytes(gpt) -> int:
    """Bytes of weights a decode step reads: the block linears and the LM head (embeddings: one row each)."""
    from pigpt.model.gpt import Conv1D

    n = 0
    for m in gpt.modules():
        if isinstance(m, Conv1D):
            w = m.qweight if m.qweight is not None else m.weight
            n += w.numel() * w.element_size()
    head = gpt.lm_head_qweight if gpt.quantized else gpt.transformer.wte.weight
    return n + head.numel() * head.element_size()


def decode_steps(gpt, rows: int, steps: int):
    """A closure that prefills one 16-token prompt, shares it with `rows` rows, runs `steps` decode steps and
    returns the decode steps' (wall, CPU) seconds."""
    prompt = torch.randint(0, 50257, (1, 16), generator=torch.Generator().manual_seed(1))

    def run():
        with torch.inference_mode():
            cache = gpt.new_cache(1, 16 + steps)
            tok = gpt(prompt, cache, last_only=True)[:, -1].argmax(-1, keepdim=True)
            if rows > 1:
                cache = cache.share(torch.zeros(rows, dtype=torch.long))
            tok = tok.expand(rows, 1)
            c0, t0 = time.process_time(), time.perf_counter()
            for _ in range(steps):
                tok = gpt(tok, cache, last_only=True)[:, -1].argmax(-1, keepdim=True)
            return time.perf_counter() - t0, time.process_time() - c0

    return run


def main_decode(args):
    from pigpt.model import cpu_decode

    if args.force_kernels:
        cpu_decode.MAX_ROWS.update({k: 8 for k in cpu_decode.MAX_ROWS})
        cpu_decode.MAX_ROWS_BF16_WIDEN = 8
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; GPT-2 small decode steps (random weights, "
          f"16-token prompt, {args.steps} steps a run), kernels vs torch path, median of {args.repeats} interleaved "
          f"runs; CPU kernels: {cpu_decode.status()}")
    print("\n| dtype | rows | torch path ms/step | kernels ms/step | CPU ms/step (torch / kernels) | kernels GB/s "
          "| speed-up |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for dtype in args.dtypes.split(","):
        gpt = decode_model(dtype)
        nbytes = weight_bytes(gpt)
        for rows in (int(r) for r in args.rows.split(",")):
            run = decode_steps(gpt, rows, args.steps)
            times = {True: [], False: []}  # kernels on / off: (wall, cpu) per run
            for r in range(args.repeats + 1):  # the first round warms up (builds the kernels' plan)
                for on in (True, False):
                    gpt.cpu_kernels = on
                    t = run()
                    if r:
                        times[on].append(t)
            wall = {on: 1e3 * statistics.median(w for w, _ in times[on]) / args.steps for on in times}
            cpu = {on: 1e3 * statistics.median(c for _, c in times[on]) / args.steps for on in times}
            ratio = statistics.median(b[0] / a[0] for a, b in zip(times[True], times[False]))
            widen = dtype == "bfloat16" and cpu_decode.load() is not None and not cpu_decode.has_avx512bf16()
            used = cpu_decode.load() is not None and rows <= (cpu_decode.MAX_ROWS_BF16_WIDEN if widen
                                                              else cpu_decode.MAX_ROWS[dtype])
            note = "" if used else " (torch path: above the row limit)" if cpu_decode.load() else " (no kernels)"
            print(f"| {dtype} | {rows} | {wall[False]:.1f} | {wall[True]:.1f} | {cpu[False]:.1f} / {cpu[True]:.1f} "
                  f"| {nbytes / wall[True] / 1e6:.1f} | {ratio:.2f}x{note} |", flush=True)


def main_many_rows(args):
    from pigpt.model import cpu_decode

    if cpu_decode.load() is None:
        print(f"no CPU kernels here: {cpu_decode.status()}")
        return
    C = args.width
    shapes = [(C, 3 * C), (C, C), (C, 4 * C), (4 * C, C)]
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; one block's products of width {C} at "
          f"prompt-sized row counts, kernels (kn_many_rows) vs torch path, median of {args.repeats} interleaved runs; "
          f"MANY_ROWS here: {cpu_decode.MANY_ROWS or 'none'}")
    print("\n| dtype | rows | torch path ms | kernels ms | speed-up |")
    print("|---|---:|---:|---:|---:|")
    for name in args.dtypes.split(","):
        dtype = getattr(torch, name)
        g = torch.Generator().manual_seed(0)
        ws = [((torch.randn(k, n, generator=g) * 0.02).to(dtype), torch.zeros(n, dtype=dtype)) for k, n in shapes]
        widen = packed.widened(ws[0][0])

        def torch_path(xs):
            for (w, b), x in zip(ws, xs):
                if dtype == torch.float32:
                    torch.addmm(b, x, w)
                elif widen:
                    torch.addmm(b.float(), x.float(), w.float()).to(dtype)
                else:
                    F.linear(x, w.t(), b)

        def kernels(xs):
            for (w, b), x in zip(ws, xs):
                cpu_decode.linear(x.float(), w, cpu_decode.KN, None, b).to(dtype)

        for M in (int(r) for r in args.rows.split(",")):
            xs = [torch.randn(M, k, generator=g).to(dtype) for k, _ in shapes]
            t_torch, t_kern, ratio = interleaved(torch_path, kernels, xs, args.repeats)
            print(f"| {name}{' (widened)' if widen else ''} | {M} | {1e3 * t_torch:.2f} | {1e3 * t_kern:.2f} | "
                  f"{ratio:.2f}x |", flush=True)


def main():
    args = parse_args()
    torch.set_num_threads(args.threads)
    if args.decode:
        return main_decode(args)
    if args.many_rows:
        return main_many_rows(args)
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
            t_plain, t_fast, ratio = interleaved(plain, fast, xs, args.repeats)
            print(f"| {name} | {M} | {1e3 * t_plain:.1f} | {1e3 * t_fast:.1f} | {ratio:.2f}x |", flush=True)


if __name__ == "__main__":
    main()
