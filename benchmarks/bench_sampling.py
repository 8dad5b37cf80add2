"""Benchmark one sampling step: transformers' warper chain + multinomial (the reference) vs pigpt.

Columns: the reference (TemperatureLogitsWarper -> TopKLogitsWarper -> TopPLogitsWarper -> MinPLogitsWarper
-> TypicalLogitsWarper -> EpsilonLogitsWarper -> EtaLogitsWarper, those a setting uses, -> softmax -> torch.multinomial), pigpt's torch path, pigpt's
Triton kernel (CUDA only), FlashInfer (if installed, CUDA only), and a bare softmax pass over the same logits (the memory floor). Each cell is the median (or, with
--stat min, the minimum) of --repeats timed calls in this one process, so ratios are comparable even on a
noisy machine.

    python benchmarks/bench_sampling.py                        # full grid: B x V x logits x settings
    python benchmarks/bench_sampling.py --B 64 --V 50257 --repeats 5
    python benchmarks/bench_sampling.py --device cuda          # adds the Triton / FlashInfer columns

Writes a JSON of every cell and a PNG plot (--out, --png).
"""

import argparse
import json
import math
import os
from pathlib import Path

from pigpt import benchmarking as harness

import torch  # noqa: E402

from pigpt.kernels import sample_from_logits  # noqa: E402

SETTINGS = {  # name -> the sampler's settings (sample_from_logits' keywords; the rest at their defaults)
    "k50_p0.9": dict(top_k=50, top_p=0.9),
    "p0.9": dict(top_p=0.9),
    "k50": dict(top_k=50),
    "plain": dict(),
    "minp0.05": dict(min_p=0.05),  # llama.cpp's default min-p
    "eps3e-4": dict(epsilon_cutoff=3e-4),  # transformers' docs' suggested range
    "typical0.9": dict(typical_p=0.9),
    "eta3e-4": dict(eta_cutoff=3e-4),
}
DEFAULTS = dict(temperature=1.0, top_k=0, top_p=1.0, min_p=0.0, typical_p=1.0, epsilon_cutoff=0.0, eta_cutoff=0.0)
STAT = "median"
LOGITS = {  # name -> scale of N(0, 1) logits; 3 gives a ~2,200-token nucleus at p = 0.9, 1 ~30,000
    "peaked": 3.0,
    "flat": 1.0,
}


def reference_chain(x, temperature, top_k, top_p, min_p=0.0, typical_p=1.0, epsilon_cutoff=0.0, eta_cutoff=0.0):
    """transformers' warpers in generate()'s order, then softmax and multinomial."""
    from transformers.generation.logits_process import (
        EpsilonLogitsWarper, EtaLogitsWarper, MinPLogitsWarper, TemperatureLogitsWarper, TopKLogitsWarper,
        TopPLogitsWarper, TypicalLogitsWarper)

    s = x.float()
    if temperature != 1.0:
        s = TemperatureLogitsWarper(temperature)(None, s)
    if top_k:
        s = TopKLogitsWarper(top_k)(None, s)
    if top_p < 1.0:
        s = TopPLogitsWarper(top_p)(None, s)
    if min_p > 0:
        s = MinPLogitsWarper(min_p)(None, s)
    if typical_p < 1.0:
        s = TypicalLogitsWarper(typical_p)(None, s)
    if epsilon_cutoff > 0:
        s = EpsilonLogitsWarper(epsilon_cutoff)(None, s)
    if eta_cutoff > 0:
        s = EtaLogitsWarper(eta_cutoff, device=s.device)(None, s)
    return torch.multinomial(torch.softmax(s, -1), 1)[:, 0]


def flashinfer_fn():
    try:
        import flashinfer.sampling as fs
    except Exception:  # noqa: BLE001 (not installed, or built for another CUDA)
        return None

    def run(x, temperature, top_k, top_p, min_p=0.0, typical_p=1.0, epsilon_cutoff=0.0, eta_cutoff=0.0):
        s = x.float() / temperature
        if epsilon_cutoff > 0 or eta_cutoff > 0 or typical_p < 1.0:
            raise NotImplementedError("FlashInfer has no epsilon, eta or typical sampling")
        if min_p > 0:
            if top_k or top_p < 1.0:
                raise NotImplementedError("FlashInfer's min-p does not combine with top-k / top-p")
            return fs.min_p_sampling_from_probs(torch.softmax(s, -1), min_p)
        if top_k and top_p < 1.0:
            return fs.top_k_top_p_sampling_from_logits(s, top_k, top_p)
        probs = torch.softmax(s, -1)
        if top_k:
            return fs.top_k_sampling_from_probs(probs, top_k)
        if top_p < 1.0:
            return fs.top_p_sampling_from_probs(probs, top_p)
        return fs.sampling_from_probs(probs)
    return run


def timeit(fn, repeats, cuda):
    """Seconds per call (STAT of `repeats` calls, after one warm-up call)."""
    return harness.measure(fn, repeats, warmup=1, stat=STAT, sync=torch.cuda.synchronize if cuda else None)


def bench_cell(B, V, kind, setting, args, methods):
    g = torch.Generator().manual_seed(B * 7 + V)
    x = (torch.randn(B, V, generator=g) * LOGITS[kind]).to(args.device)
    kw = {**DEFAULTS, **SETTINGS[setting]}
    cuda = args.device == "cuda"
    seed = torch.arange(B, device=args.device)
    row = {"B": B, "V": V, "logits": kind, "setting": setting, "bytes": x.numel() * x.element_size()}
    row["softmax_s"] = timeit(lambda: torch.softmax(x, -1), args.repeats, cuda)
    for name, fn in methods.items():
        if name == "reference":
            call = lambda: reference_chain(x, **kw)  # noqa: E731
        elif name in ("torch", "triton"):
            call = lambda n=name: sample_from_logits(x, **kw, seed=seed, position=0, backend=n)  # noqa: E731
        else:
            call = lambda: fn(x, **kw)  # noqa: E731
        reps = max(1, args.repeats // 2) if name == "reference" and B * V > 64 * 50257 else args.repeats
        try:
            row[f"{name}_s"] = timeit(call, reps, cuda)
        except Exception as e:  # noqa: BLE001 (an optional column must not end the run)
            if name in ("reference", "torch"):
                raise
            print(f"  {name} failed: {type(e).__name__}: {e}", flush=True)
            row[f"{name}_s"] = float("nan")
    return row


def print_row(row, methods):
    gbps = lambda s: row["bytes"] / s / 1e9  # noqa: E731
    ref = row["reference_s"]
    cells = [f"{row['setting']:>9} {row['logits']:>6} B={row['B']:<4} V={row['V']:<6}",
             f"softmax {row['softmax_s'] * 1e6:9.0f}us {gbps(row['softmax_s']):6.1f}GB/s"]
    for name in methods:
        s = row[f"{name}_s"]
        cells.append(f"{name} {s * 1e6:9.0f}us {gbps(s):6.2f}GB/s x{ref / s:6.2f} ref "
                     f"{s / row['softmax_s']:6.1f}x softmax")
    print(" | ".join(cells), flush=True)


def plot(rows, methods, path, meta=None):
    plt = harness.pyplot()
    us_per_row = lambda r, name: math.nan if r[f"{name}_s"] is None else r[f"{name}_s"] * 1e6 / r["B"]  # noqa: E731

    settings = list(dict.fromkeys(r["setting"] for r in rows))
    Vs = sorted({r["V"] for r in rows})
    V = 50257 if 50257 in Vs else Vs[0]
    fig, axes = plt.subplots(1, len(settings), figsize=(4.2 * len(settings), 3.6), squeeze=False)
    for ax, setting in zip(axes[0], settings):
        for kind, style in (("peaked", "-"), ("flat", "--")):
            sel = sorted((r for r in rows if r["setting"] == setting and r["logits"] == kind and r["V"] == V),
                         key=lambda r: r["B"])
            if not sel:
                continue
            Bs = [r["B"] for r in sel]
            for i, name in enumerate([*methods, "softmax"]):
                ax.plot(Bs, [us_per_row(r, name) for r in sel], style, color=f"C{i}", marker="o",
                        ms=3, label=f"{name} ({kind})")
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_title(f"{setting}, V={V}")
        ax.set_xlabel("batch B")
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel("microseconds per row")
    if meta:
        load = meta.get("loadavg", [float("nan")])[0]
        fig.suptitle(f"one sampling step, {meta.get('gpu', meta['device'])}, {meta['threads']} threads, "
                     f"{meta.get('stat', 'median')} of {meta['repeats']}, load average {load:.1f}", fontsize=9)
    axes[0][-1].legend(fontsize=6)
    harness.save_figure(fig, path)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--B", type=int, nargs="+", default=[1, 8, 64, 256])
    ap.add_argument("--V", type=int, nargs="+", default=[32000, 50257, 128256])
    ap.add_argument("--logits", nargs="+", default=list(LOGITS), choices=list(LOGITS))
    ap.add_argument("--settings", nargs="+", default=list(SETTINGS), choices=list(SETTINGS))
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--stat", choices=["median", "min"], default="median",
                    help="min is steadier on a machine shared with other jobs")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--threads", type=int, default=min(2, os.cpu_count() or 1))
    harness.add_output_args(ap, "bench_sampling")
    ap.add_argument("--replot", metavar="JSON", help="only redraw the PNG from an earlier run's JSON")
    args = ap.parse_args()
    if args.replot:
        data = json.loads(Path(args.replot).read_text())
        plot(data["rows"], data["meta"]["methods"], args.png, data["meta"])
        print(f"wrote {args.png}")
        return
    harness.setup_threads(args.threads)
    global STAT
    STAT = args.stat

    methods = {"reference": reference_chain, "torch": None}
    if args.device == "cuda":
        methods["triton"] = None
        if (fi := flashinfer_fn()) is not None:
            methods["flashinfer"] = fi
    print(f"device={args.device} threads={args.threads} torch={torch.__version__} stat={args.stat} "
          f"loadavg={os.getloadavg()[0]:.1f} columns={list(methods)}")
    rows = []
    for setting in args.settings:
        for kind in args.logits:
            for V in args.V:
                for B in args.B:
                    rows.append(bench_cell(B, V, kind, setting, args, methods))
                    print_row(rows[-1], methods)
    meta = harness.environment(device=args.device, stat=args.stat, repeats=args.repeats, methods=list(methods),
                               peak_rss_mb=harness.peak_rss_mb())
    if args.device == "cuda":
        meta["gpu"] = torch.cuda.get_device_name()
    harness.write_json(args.out, rows, meta)
    if args.png:
        plot(rows, methods, args.png, meta)
    print(f"wrote {args.out} and {args.png}")


if __name__ == "__main__":
    main()
