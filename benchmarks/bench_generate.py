"""pigpt's generate / beam_search against transformers' generate, same random GPT-2 small weights.

    python benchmarks/bench_generate.py                 # the full run: 16-token prompt, 128 new tokens
    python benchmarks/bench_generate.py --quick         # a smaller run while developing
    python benchmarks/bench_generate.py --bf16          # also pigpt in bfloat16 (vs transformers float32)

Cases: greedy batch 1; sampling batch 1; n = 8 and n = 64 rollouts of one prompt (temperature 1, no
truncation, in both); beam search with 4 beams. Stop tokens are off in both so that every run generates
exactly the same number of tokens. Prints tokens/s for both and the ratio, and the batch-1 step time
against the memory-bandwidth bound (weight bytes read per token / measured copy bandwidth).
Timings are wall-clock medians of --repeats runs, both libraries measured in this one process, their runs
interleaved (pigpt, transformers, pigpt, ...) so that a noisy neighbour on a shared machine slows both
rather than one; the ratio is the median of the per-pair ratios.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from decoding import SamplingParams, beam_search, generate  # noqa: E402
from model import GPT  # noqa: E402


def parse_args():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--prompt-len", type=int, default=16)
    ap.add_argument("--new-tokens", type=int, default=128)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=3, help="timed runs per case (median reported)")
    ap.add_argument("--cases", default="greedy,sample,n8,n64,beam4")
    ap.add_argument("--bf16", action="store_true", help="also time pigpt in bfloat16")
    ap.add_argument("--no-hf", action="store_true", help="skip transformers (pigpt only)")
    ap.add_argument("--quick", action="store_true", help="32 new tokens, 1 repeat: a quick check")
    args = ap.parse_args()
    if args.quick:
        args.new_tokens, args.repeats = 32, 1
    return args


def build_models(dtype=torch.float32):
    """Random GPT-2 small (124M) in transformers, saved and loaded into pigpt: the same weights in both."""
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    hf = GPT2LMHeadModel(GPT2Config()).eval()
    hf.generation_config.eos_token_id = None  # never stop early: every run makes the same number of tokens
    hf.generation_config.pad_token_id = 50256
    with tempfile.TemporaryDirectory() as d:
        hf.save_pretrained(d)
        gpt = GPT.from_pretrained(d).eval()
    return hf, gpt


CASES = {  # name: (rows, kind, n)
    "greedy": ("greedy batch 1", "greedy", 1),
    "sample": ("sampling batch 1", "sample", 1),
    "n8": ("sampling n = 8", "sample", 8),
    "n64": ("sampling n = 64", "sample", 64),
    "beam4": ("beam search 4", "beam", 4),
}


def run_hf(hf, prompt, kind, n, T):
    kw = dict(max_new_tokens=T, min_new_tokens=T, attention_mask=torch.ones_like(prompt))
    if kind == "greedy":
        return hf.generate(prompt, do_sample=False, **kw)
    if kind == "sample":
        return hf.generate(prompt, do_sample=True, temperature=1.0, top_k=0, top_p=1.0, num_return_sequences=n,
                           **kw)
    return hf.generate(prompt, do_sample=False, num_beams=n, early_stopping=False, **kw)


def run_pigpt(gpt, prompt, kind, n, T):
    p = [prompt[0].tolist()]
    if kind == "beam":
        return beam_search(gpt, p, num_beams=n, max_new_tokens=T, stop_token_ids=())
    temperature = 0.0 if kind == "greedy" else 1.0
    return generate(gpt, p, SamplingParams(temperature=temperature, max_new_tokens=T, n=n, seed=0,
                                           stop_token_ids=()))


def timed(fn, repeats):
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def timed_pairs(fns, repeats):
    """Interleaved runs of each fn (None: skipped) -> (median time of each, median of time[0] / time[i])."""
    times = [[] for _ in fns]
    for _ in range(repeats):
        for i, fn in enumerate(fns):
            if fn is not None:
                times[i].append(timed(fn, 1))
    med = [statistics.median(t) if t else float("nan") for t in times]
    ratio = [statistics.median(a / b for a, b in zip(times[0], t)) if t and times[0] else float("nan") for t in times]
    return med, ratio


def copy_bandwidth(nbytes=256 * 2**20, repeats=10) -> float:
    """Copy bandwidth in bytes/s, counting bytes read + written (the best of `repeats`: a busy neighbour
    on a shared machine only ever lowers it)."""
    src = torch.ones(nbytes // 4)
    dst = torch.empty_like(src)
    dst.copy_(src)
    best = min(timed(lambda: dst.copy_(src), 1) for _ in range(repeats))
    return 2 * nbytes / best


def weight_bytes_per_token(gpt) -> int:
    """Bytes of weights a decode step must read: every parameter but the position table (one row of it)."""
    return sum(p.numel() * p.element_size() for n, p in gpt.named_parameters() if "wpe" not in n)


def main():
    args = parse_args()
    torch.set_num_threads(args.threads)
    T = args.new_tokens
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, cpu count {os.cpu_count()}; "
          f"prompt {args.prompt_len} tokens, {T} new tokens, median of {args.repeats}")
    hf, gpt = build_models()
    prompt = torch.randint(0, 50257, (1, args.prompt_len), generator=torch.Generator().manual_seed(0))
    bf16 = None
    if args.bf16:
        bf16 = GPT(gpt.config).eval()
        bf16.load_state_dict(gpt.state_dict())
        bf16 = bf16.to(torch.bfloat16)

    rows = []
    for key in args.cases.split(","):
        name, kind, n = CASES[key]
        tokens = T * (1 if kind == "beam" else n)  # beam search yields one sequence of T tokens
        fns = [None if args.no_hf else (lambda: run_hf(hf, prompt, kind, n, T)),
               lambda: run_pigpt(gpt, prompt, kind, n, T),
               None if bf16 is None else (lambda: run_pigpt(bf16, prompt, kind, n, T))]
        with torch.inference_mode():
            run_pigpt(gpt, prompt, kind, n, 4)  # warm-ups: allocations, the lazy weight copies
            if not args.no_hf:
                run_hf(hf, prompt, kind, n, 4)
            if bf16 is not None:
                run_pigpt(bf16, prompt, kind, n, 4)
            (t_hf, t_ours, t_bf), (_, x_ours, x_bf) = timed_pairs(fns, args.repeats)
        rows.append((name, tokens / t_hf, tokens / t_ours, tokens / t_bf, 1000 * t_ours / T, 1000 * t_hf / T,
                     x_ours, x_bf))
        r = rows[-1]
        print(f"  {name:18s} transformers {r[1]:8.1f} tok/s  pigpt {r[2]:8.1f} tok/s  ratio {x_ours:5.2f}x"
              + (f"  pigpt-bf16 {r[3]:8.1f} tok/s ({x_bf:5.2f}x)" if bf16 is not None else ""),
              flush=True)

    print("\n| case | transformers tok/s | pigpt tok/s | ratio | ms/step pigpt | ms/step transformers |"
          + (" pigpt bf16 tok/s | bf16 ratio |" if bf16 is not None else ""))
    print("|---|---|---|---|---|---|" + ("---|---|" if bf16 is not None else ""))
    for name, hf_tps, ours, bf, ms, ms_hf, x_ours, x_bf in rows:
        line = f"| {name} | {hf_tps:.1f} | {ours:.1f} | {x_ours:.2f}x | {ms:.1f} | {ms_hf:.1f} |"
        if bf16 is not None:
            line += f" {bf:.1f} | {x_bf:.2f}x |"
        print(line)

    bw = copy_bandwidth()
    wb = weight_bytes_per_token(gpt)
    bound_ms = 1000 * wb / bw
    print(f"\nmemory-bandwidth bound, batch 1: {wb / 1e6:.0f} MB of float32 weights per token / "
          f"{bw / 1e9:.1f} GB/s copy bandwidth = {bound_ms:.1f} ms a step ({1000 / bound_ms:.1f} tok/s)")
    for name, _, ours, bf, *_ in rows:
        if name.endswith("batch 1"):
            print(f"  {name}: pigpt {1000 / ours:.1f} ms a token = {100 * bound_ms * ours / 1000:.0f}% of the bound"
                  + (f"; bf16 {1000 / bf:.1f} ms (bf16 bound {bound_ms / 2:.1f} ms)" if bf16 is not None else ""))


if __name__ == "__main__":
    main()
