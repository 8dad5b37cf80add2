"""One training step of train.py's default preset: the fused head loss vs F.cross_entropy on full logits,
float32 vs bfloat16 autocast. Interleaved repetitions in one process; ratios against the plain float32 step.

    python benchmarks/train_step.py [--threads 2] [--reps 5] [--layers 4 --width 128 --context 128 --batch 16]

Prints ms per step (wall clock and this process's CPU time: the second is steadier on a shared machine),
tokens/s, and MFU against the best measured 1024^3 matmul in the same dtype. Writes a JSON of every step
time and a PNG (--out, --png).
"""

from __future__ import annotations

import argparse

from pigpt import benchmarking as harness

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from pigpt.model import GPT, GPTConfig  # noqa: E402
from pigpt.training.perf import flops_per_token, measure_peak_flops  # noqa: E402
from pigpt.training.loss import LossModel  # noqa: E402


def plain_loss(gpt):
    return lambda x, y: F.cross_entropy(gpt(x).float().flatten(0, 1), y.flatten())


def main(argv=None):
    p = argparse.ArgumentParser()
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--reps", type=int, default=5)
    p.add_argument("--layers", type=int, default=4)
    p.add_argument("--width", type=int, default=128)
    p.add_argument("--context", type=int, default=128)
    p.add_argument("--batch", type=int, default=16)
    harness.add_output_args(p, "train_step")
    a = p.parse_args(argv)
    harness.setup_threads(a.threads)
    cfg = GPTConfig(block_size=a.context, n_layer=a.layers, n_head=max(1, a.width // 32), n_embd=a.width)
    gen = torch.Generator().manual_seed(0)
    x = torch.randint(0, cfg.vocab_size, (a.batch, a.context), generator=gen)
    y = torch.randint(0, cfg.vocab_size, (a.batch, a.context), generator=gen)
    variants = {}
    for dtype in (torch.float32, torch.bfloat16):
        for name in ("plain", "fused"):
            torch.manual_seed(0)
            gpt = GPT(cfg).train()
            loss_fn = plain_loss(gpt) if name == "plain" else LossModel(gpt)
            opt = torch.optim.AdamW(gpt.parameters(), lr=1e-4, fused=True)
            variants[f"{name} {str(dtype).removeprefix('torch.')}"] = (gpt, loss_fn, opt, dtype)
    peaks = {dt: max(measure_peak_flops(torch.device("cpu"), dt) for _ in range(3))
             for dt in (torch.float32, torch.bfloat16)}
    losses = {}

    def step(key):
        _, loss_fn, opt, dtype = variants[key]
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=dtype == torch.bfloat16):
            loss = loss_fn(x, y)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        losses[key] = loss.item()

    # One untimed round warms every variant up, then reps interleaved rounds (plain, fused, ..., plain, ...).
    res = harness.interleave({key: (lambda k=key: step(k)) for key in variants}, a.reps, warmup=1)
    fpt = flops_per_token(next(iter(variants.values()))[0], a.context)
    tokens = a.batch * a.context
    base = "plain float32"
    print(f"{a.layers} layers, width {a.width}, context {a.context}, batch {a.batch}; {a.threads} threads; "
          f"{fpt / 1e6:.1f} MFLOP/token; peak fp32 {peaks[torch.float32] / 1e9:.0f}, "
          f"bf16 {peaks[torch.bfloat16] / 1e9:.0f} GFLOP/s (1024^3 matmul, best of 12)")
    print(f"{'variant':<16}{'wall ms':>9}{'cpu ms':>9}{'tokens/s':>10}{'MFU':>7}{'speed-up':>10}{'loss':>9}")
    rows = []
    for key, (*_, dtype) in variants.items():
        w, c = res.median(key), res.cpu_median(key)
        tps = tokens / w
        rows.append({"variant": key, "wall_s": res.times[key], "cpu_s": res.cpu[key], "tokens_s": tps,
                     "mfu": fpt * tps / peaks[dtype], "speedup": res.ratio(key, base), "loss": losses[key]})
        print(f"{key:<16}{w * 1e3:>9.0f}{c * 1e3:>9.0f}{tps:>10.0f}{rows[-1]['mfu']:>7.1%}"
              f"{rows[-1]['speedup']:>9.2f}x{losses[key]:>9.4f}")
    print(f"(speed-up: the median over rounds of plain float32 wall / variant wall; by CPU time the fused "
          f"float32 step is {res.cpu_median(base) / res.cpu_median('fused float32'):.2f}x)")
    meta = harness.environment(layers=a.layers, width=a.width, context=a.context, batch=a.batch, reps=a.reps,
                               flops_per_token=fpt, peak_flops={str(k): v for k, v in peaks.items()},
                               peak_rss_mb=harness.peak_rss_mb())
    harness.write_json(a.out, rows, meta)
    if a.png:
        harness.bar_chart(a.png, [r["variant"] for r in rows], {"tokens/s": [r["tokens_s"] for r in rows]},
                          "tokens / s", f"training step, {a.layers} layers x {a.width}, batch {a.batch} x "
                          f"{a.context}, {a.threads} threads, load average {meta['loadavg'][0]:.1f}")
    print(f"wrote {a.out}" + (f" and {a.png}" if a.png else ""))
    return rows


if __name__ == "__main__":
    main()
