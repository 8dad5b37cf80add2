"""Speed: the model's FLOPs per token, a measured matmul peak, MFU, and the autocast dtype.

MFU (model FLOPs utilisation) is the model's FLOPs per second over the machine's peak. The peak is measured,
not looked up, so it is an estimate: the best of several matmuls of ~0.1 s each, in the training dtype. On
a machine shared with other work a probe that ran while it was busy reads low, which once made MFU read 93%;
so the probe is repeated at the end of the run, and any step that ran faster than the peak raises it (the
machine demonstrably did that much), which keeps MFU at or below 100%.
"""

from __future__ import annotations

import contextlib
import time

import torch

from .run import TrainError


def flops_per_token(gpt, block_size: int) -> float:
    """Forward + backward FLOPs per token: 6 per parameter (the tied head counted once) + attention."""
    c = gpt.config
    return 6 * gpt.num_params() + 12 * c.n_layer * c.n_embd * block_size


def measure_peak_flops(device: torch.device, dtype: torch.dtype, repeats: int = 5) -> float:
    """Best FLOP/s of `repeats` square matmuls in `dtype` (4096 on CUDA, 1536 on a CPU: ~0.1 s each here)."""
    n = 4096 if device.type == "cuda" else 1536
    gen = torch.Generator(device=device).manual_seed(0)  # not the global RNG: a resumed run restores that
    a, b = (torch.randn(n, n, device=device, dtype=dtype, generator=gen) for _ in range(2))
    a @ b  # warm-up: first-call set-up is no part of the peak
    best = float("inf")
    for _ in range(repeats):
        if device.type == "cuda":
            torch.cuda.synchronize()
        t = time.perf_counter()
        a @ b
        if device.type == "cuda":
            torch.cuda.synchronize()
        best = min(best, time.perf_counter() - t)
    return 2 * n**3 / best


class Peak:
    """The peak FLOP/s of one process: measured at start, raised by re-measuring (`remeasure`) and by any
    step that ran faster (`mfu`), so that the MFU it reports is never above 100%."""

    def __init__(self, device: torch.device, dtype: torch.dtype):
        self.device, self.dtype = device, dtype
        self.flops = measure_peak_flops(device, dtype)

    def remeasure(self) -> float:
        self.flops = max(self.flops, measure_peak_flops(self.device, self.dtype))
        return self.flops

    def mfu(self, flops_per_s: float, processes: int = 1) -> float:
        """flops_per_s (of all processes together) as a share of the peak."""
        self.flops = max(self.flops, flops_per_s / processes)
        return flops_per_s / (self.flops * processes)


def bf16_supported(device: torch.device) -> bool:
    return (torch.cuda.is_bf16_supported() if device.type == "cuda"
            else torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported())


def resolve_dtype(name: str, device: torch.device) -> str:
    """The autocast dtype. auto: bfloat16 on CUDA; on a CPU only where bf16 matmuls measure > 1.25x faster than
    float32 ones (AMX does; the avx512_bf16 CPU this was written on ran them at ~0.6x, see docs/training.md).
    The two are timed in turns, best of several each, so a busy moment doesn't decide."""
    bf16_ok = bf16_supported(device)
    if name == "bfloat16" and not bf16_ok:
        raise TrainError(f"--dtype bfloat16: this {device.type} has no bfloat16 support; use --dtype float32")
    if name != "auto":
        return name
    if not bf16_ok:
        return "float32"
    if device.type == "cuda":
        return "bfloat16"
    best = {torch.float32: 0.0, torch.bfloat16: 0.0}
    for _ in range(3):
        for dt in best:
            best[dt] = max(best[dt], measure_peak_flops(device, dt, repeats=2))
    return "bfloat16" if best[torch.bfloat16] > 1.25 * best[torch.float32] else "float32"


def autocast(device: torch.device, dtype: str):
    """torch.autocast in `dtype`, or nothing for float32 (master weights stay float32 either way)."""
    if dtype == "float32":
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=getattr(torch, dtype))


__all__ = ["flops_per_token", "measure_peak_flops", "Peak", "resolve_dtype", "bf16_supported", "autocast"]
