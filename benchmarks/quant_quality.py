"""How far int8 (and bfloat16) weights move a model from its float32 self, on real text.

    python benchmarks/quant_quality.py default          # any GPT.from_pretrained directory
    python benchmarks/quant_quality.py random                 # GPT-2 small's shape, random weights (wte x5)

The text is English: docstrings of ~45 standard-library modules (the interpreter's own, so no download).
For each precision it prints the perplexity on --windows windows of --ctx tokens (full forwards, or with
--decode token by token through the KV cache, the CPU decode kernels' path), the mean and max KL from
float32 (nats per position), the largest |d log-prob| over the whole vocabulary and at the text's own next
tokens, the share of positions whose argmax is unchanged, and, from --prompts 8-token prompts taken from the
same text, how many greedy continuations of --new tokens are identical to float32's (through
decoding.generate, so through the decode path a sampler uses). The table in model/quant.py comes from here.
"""

import argparse
import copy
import importlib
import inspect
import math

from pigpt import benchmarking as harness

import torch  # noqa: E402

from pigpt.decoding import SamplingParams, generate  # noqa: E402
from pigpt.model import GPT, GPTConfig, get_tokenizer  # noqa: E402

MODULES = ["os", "json", "re", "collections", "functools", "itertools", "pathlib", "subprocess", "argparse",
           "logging", "unittest", "email", "http.client", "urllib.request", "textwrap", "string", "heapq",
           "bisect", "random", "statistics", "decimal", "fractions", "datetime", "calendar", "csv", "sqlite3",
           "threading", "queue", "asyncio", "socket", "shutil", "tempfile", "glob", "fnmatch", "pickle", "copy",
           "inspect", "dataclasses", "enum", "typing", "abc", "contextlib", "difflib", "zipfile", "tarfile"]


def english_text() -> str:
    docs = []
    for name in MODULES:
        m = importlib.import_module(name)
        for obj in [m] + [getattr(m, a) for a in sorted(dir(m)) if not a.startswith("_")]:
            d = inspect.getdoc(obj)
            if d and len(d) > 200 and d not in docs:
                docs.append(d)
    return "\n\n".join(docs)


def load(name: str) -> GPT:
    if name != "random":
        return GPT.from_pretrained(name)
    torch.manual_seed(0)
    gpt = GPT(GPTConfig()).eval()
    with torch.no_grad():
        gpt.transformer.wte.weight.mul_(5)  # tests/conftest.py's scaling: peaked, model-like distributions
    return gpt


@torch.inference_mode()
def log_probs(gpt, windows, decode: bool):
    """(n, ctx, V) log-probs: full forwards of 8 windows (the torch path: prefill), or with `decode` one token
    at a time through a KV cache, as many windows at once as the CPU decode kernels take (their path)."""
    if not decode:
        return torch.cat([gpt(windows[i:i + 8]).float().log_softmax(-1) for i in range(0, len(windows), 8)])
    from pigpt.model import cpu_decode

    rows = cpu_decode.MAX_ROWS["int8" if gpt.quantized else str(gpt.dtype).removeprefix("torch.")]
    out = []
    for i in range(0, len(windows), rows):
        w = windows[i:i + rows]
        cache = gpt.new_cache(len(w), w.shape[1])
        out.append(torch.cat([gpt(w[:, t:t + 1], cache) for t in range(w.shape[1])], 1).float().log_softmax(-1))
    return torch.cat(out)


def continuations(gpt, prompts, new: int, decode: bool):
    """Greedy continuations; with `decode`, in groups small enough for the CPU decode kernels."""
    from pigpt.model import cpu_decode

    rows = cpu_decode.MAX_ROWS["int8" if gpt.quantized else str(gpt.dtype).removeprefix("torch.")] if decode else 1000
    params = SamplingParams(temperature=0.0, max_new_tokens=new)
    return [r[0].tokens for i in range(0, len(prompts), rows) for r in generate(gpt, prompts[i:i + rows], params)]


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("model", help="a GPT.from_pretrained directory, or 'random'")
    ap.add_argument("--ctx", type=int, default=128)
    ap.add_argument("--windows", type=int, default=64)
    ap.add_argument("--prompts", type=int, default=100)
    ap.add_argument("--new", type=int, default=32)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--decode", action="store_true",
                    help="log-probs from decode steps (the CPU decode kernels' path) rather than full forwards")
    args = ap.parse_args()
    harness.setup_threads(args.threads)
    ids = get_tokenizer().encode(english_text())
    ref = load(args.model)
    ctx = min(args.ctx, ref.config.block_size)
    n = min(args.windows, len(ids) // ctx)
    windows = torch.tensor(ids[: n * ctx]).view(n, ctx)
    print(f"{args.model}: {n} windows of {ctx} tokens of stdlib docstrings ({len(ids):,} tokens in all)")
    models = {"float32": ref, "bfloat16": copy.deepcopy(ref).to(torch.bfloat16),
              "int8": copy.deepcopy(ref).quantize("int8")}
    lp = {k: log_probs(g, windows, args.decode) for k, g in models.items()}
    nxt = windows[:, 1:, None]
    prompts = [ids[i * 97: i * 97 + 8] for i in range(args.prompts)]
    greedy = {k: continuations(g, prompts, args.new, args.decode) for k, g in models.items()}
    rows = []
    for k in models:
        at_text = lp[k][:, :-1].gather(-1, nxt)
        kl = (lp["float32"].exp() * (lp["float32"] - lp[k])).sum(-1)
        same = sum(a == b for a, b in zip(greedy["float32"], greedy[k]))
        rows.append([k, f"{math.exp(-at_text.mean().item()):.2f}", f"{kl.mean().item():.1e}", f"{kl.max().item():.1e}",
                     f"{(lp[k] - lp['float32']).abs().max().item():.3f}",
                     f"{(at_text - lp['float32'][:, :-1].gather(-1, nxt)).abs().max().item():.3f}",
                     f"{(lp[k].argmax(-1) == lp['float32'].argmax(-1)).float().mean().item():.1%}",
                     f"{same}/{len(prompts)}"])
    print(harness.markdown_table(["weights", "perplexity", "mean KL", "max KL", "max dlogp (vocab)",
                                  "max dlogp (text)", "same argmax", "identical greedy"], rows))


if __name__ == "__main__":
    main()
