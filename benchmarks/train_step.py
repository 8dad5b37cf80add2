"""One training step of train.py's default preset: the fused head loss vs F.cross_entropy on full logits,
float32 vs bfloat16 autocast. Interleaved repetitions in one process; ratios against the plain float32 step.

    python benchmarks/train_step.py [--threads 2] [--reps 5] [--layers 4 --width 128 --context 128 --batch 16]

Prints ms per step (wall clock and this process's CPU time: the second is steadier on a shared machine),
tokens/s, and MFU against the best measured 1024^3 matmul in the same dtype.
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
from model import GPT, GPTConfig  # noqa: E402
from train import flops_per_token, measure_peak_flops  # noqa: E402
from training.loss import LossModel  # noqa: E402


def plain_loss(gpt):
    return lambda x, y: F.cross_entropy(gpt(x).float().flatten(0, 1), y.flatten())


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--reps", type=int, default=5)
    p.add_argument("--layers", type=int, default=4)
    p.add_argument("--width", type=int, default=128)
    p.add_argument("--context", type=int, default=128)
    p.add_argument("--batch", type=int, default=16)
    a = p.parse_args()
    torch.set_num_threads(a.threads)
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
            variants[(name, dtype)] = (gpt, loss_fn, opt)
    peaks = {dt: max(measure_peak_flops(torch.device("cpu"), dt) for _ in range(3))
             for dt in (torch.float32, torch.bfloat16)}
    wall = {k: [] for k in variants}
    cpu = {k: [] for k in variants}
    losses = {}
    for rep in range(a.reps + 1):  # the first round warms up
        for key, (gpt, loss_fn, opt) in variants.items():
            t0, c0 = time.perf_counter(), time.process_time()
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=key[1] == torch.bfloat16):
                loss = loss_fn(x, y)
            loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
            if rep:
                wall[key].append(time.perf_counter() - t0)
                cpu[key].append(time.process_time() - c0)
            losses[key] = loss.item()
    fpt = flops_per_token(next(iter(variants.values()))[0], a.context)
    tokens = a.batch * a.context
    base_w = statistics.median(wall[("plain", torch.float32)])
    base_c = statistics.median(cpu[("plain", torch.float32)])
    print(f"{a.layers} layers, width {a.width}, context {a.context}, batch {a.batch}; {a.threads} threads; "
          f"{fpt / 1e6:.1f} MFLOP/token; peak fp32 {peaks[torch.float32] / 1e9:.0f}, "
          f"bf16 {peaks[torch.bfloat16] / 1e9:.0f} GFLOP/s (1024^3 matmul, best of 12)")
    print(f"{'variant':<16}{'wall ms':>9}{'cpu ms':>9}{'tokens/s':>10}{'MFU':>7}{'speed-up':>10}{'loss':>9}")
    for key in variants:
        w, c = statistics.median(wall[key]), statistics.median(cpu[key])
        tps = tokens / w
        print(f"{key[0] + ' ' + str(key[1]).removeprefix('torch.'):<16}{w * 1e3:>9.0f}{c * 1e3:>9.0f}{tps:>10.0f}"
              f"{fpt * tps / peaks[key[1]]:>7.1%}{base_w / w:>9.2f}x{losses[key]:>9.4f}")
    print(f"(speed-up: plain float32 wall / variant wall; by CPU time the fused float32 step is "
          f"{base_c / statistics.median(cpu[('fused', torch.float32)]):.2f}x)")


if __name__ == "__main__":
    main()
