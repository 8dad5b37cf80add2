"""What batch invariance costs: decode with `gpt.batch_invariant = True` against the same model's default kernels.

    python benchmarks/bench_invariant.py                    # the shipped model and random GPT-2 small, float32
    python benchmarks/bench_invariant.py --models shipped --repeats 5

Each case is one `generate` call (a 16-token prompt, --new-tokens tokens, temperature 1, no stops) at batch 1,
n = 8 and n = 64 rollouts of one prompt, run alternately in the default mode and the invariant mode (two model
objects with the same weights, one with `batch_invariant = True`, in one process), so a noisy neighbour slows
both; the ratio is the median of the per-round ratios (invariant speed / default speed). The
default mode is whatever pigpt runs on this machine: the CPU decode kernels at a few rows where the CPU has
AVX-512, oneDNN's prepacked products, MKL. Also checks, for every case, that the invariant mode's rollouts are
the same bits as those of the same seeds drawn one at a time. Writes a JSON and a PNG (--out, --png).
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import torch

from pigpt import benchmarking as harness
from pigpt.decoding import SamplingParams, generate
from pigpt.model import GPT
from pigpt.model.checkpoint import SHIPPED

CASES = {"batch 1": 1, "n = 8": 8, "n = 64": 64}


def random_gpt2_small(directory: Path) -> Path:
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    GPT2LMHeadModel(GPT2Config()).save_pretrained(directory)
    return directory


def bench_model(name: str, gpt: GPT, inv: GPT, a) -> list[dict]:
    prompt = [list(range(100, 116))]
    rows = []
    for label, n in CASES.items():
        params = SamplingParams(temperature=1.0, max_new_tokens=a.new_tokens, n=n, seed=1, stop_token_ids=())

        res = harness.interleave({"default": lambda params=params: generate(gpt, prompt, params),
                                  "invariant": lambda params=params: generate(inv, prompt, params)},
                                 repeats=a.repeats, warmup=1)
        tokens = n * a.new_tokens
        row = dict(model=name, case=label, n=n, tokens=tokens,
                   default_tok_s=tokens / res.median("default"), invariant_tok_s=tokens / res.median("invariant"),
                   ratio=res.ratio("invariant", "default"), times=res.times)
        batch = generate(inv, prompt, params)[0]  # the guarantee, checked on what was timed: seeds one at a time
        alone = [generate(inv, prompt, SamplingParams(temperature=1.0, max_new_tokens=a.new_tokens, n=1, seed=r.seed,
                                                      stop_token_ids=()))[0][0] for r in batch[:min(n, 4)]]
        row["same_bits"] = all(x.tokens == y.tokens and x.logprobs == y.logprobs for x, y in zip(alone, batch))
        rows.append(row)
        print(f"{name:>22}  {label:>7}: default {row['default_tok_s']:7.1f} tok/s, invariant "
              f"{row['invariant_tok_s']:7.1f} tok/s, invariant / default {row['ratio']:.2f}x"
              f"{'' if row['same_bits'] else '  (NOT the same bits alone and in the batch!)'}", flush=True)
    return rows


def main(argv=None) -> list[dict]:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", default="shipped,small", help="comma-separated: shipped, small (default both)")
    ap.add_argument("--new-tokens", type=int, default=32)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    harness.add_output_args(ap, "bench_invariant")
    a = ap.parse_args(argv)
    harness.setup_threads(a.threads)
    meta = harness.environment(new_tokens=a.new_tokens, repeats=a.repeats)
    print(f"torch {meta['torch']}, {meta['threads']} threads, {meta['cpu']}, load average "
          f"{' '.join(f'{x:.1f}' for x in meta['loadavg'])}; float32, {a.new_tokens} new tokens, "
          f"{a.repeats} rounds", flush=True)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for m in a.models.split(","):
            if m == "shipped":
                path, name = SHIPPED["default"], "shipped 6 x 256"
            elif m == "small":
                path, name = random_gpt2_small(Path(tmp) / "small"), "random GPT-2 small"
            else:
                raise SystemExit(f"--models: unknown model {m!r}; use shipped, small")
            gpt, inv = (GPT.from_pretrained(path, dtype=torch.float32, batch_invariant=on).eval() for on in (False, True))
            rows += bench_model(name, gpt, inv, a)
    meta["loadavg_end"] = __import__("os").getloadavg()
    harness.write_json(a.out, rows, meta)
    if a.png:
        groups = [f"{r['model']}\n{r['case']}" for r in rows]
        harness.bar_chart(a.png, groups, {"default": [r["default_tok_s"] for r in rows],
                                          "batch-invariant": [r["invariant_tok_s"] for r in rows]},
                          ylabel="tokens / s", title="decode, float32: the default kernels vs batch-invariant")
    print(f"wrote {a.out}" + (f" and {a.png}" if a.png else ""))
    return rows


if __name__ == "__main__":
    main()
