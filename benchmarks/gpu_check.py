"""Everything a GPU session should run, in one command: the GPU tests, the sampling kernel's speed, generate's.

    python benchmarks/gpu_check.py                  # on a CUDA machine: ~5 minutes, all three steps
    python benchmarks/gpu_check.py --dry-run        # the same code on tiny sizes (CPU: Triton's interpreter)
    python benchmarks/gpu_check.py --steps sampling --bandwidth 4300

Steps, each on its own: a step that fails prints one line saying so and the next step runs; the exit status
is 1 if any step failed, and every result is written either way (the JSON after each step).
  1. tests     `pytest -q -k "triton or cuda"` in a subprocess: the Triton kernel compiled and run on the
               GPU against the torch path; pass / fail counts.
  2. sampling  one sampling call (pigpt.kernels.sample_from_logits) at B in {1, 8, 64, 256} x V = 50257 float32
               logits (N(0, 3^2): a ~2,200-token nucleus at p = 0.9), temperature 1, per case in CASES:
               the Triton kernel, pigpt's torch path on the same device, transformers' warpers + softmax +
               torch.multinomial, FlashInfer's sampling kernels where `flashinfer` imports; beside each the
               memory-read floor, one pass over the logits at the device's bandwidth (a large device-to-device
               copy, counted as bytes read + written, or --bandwidth). Whether the kernel and the torch path
               drew the same tokens is recorded too.
  3. generate  pigpt's generate against transformers' generate on the same device, random GPT-2 small weights
               saved once by transformers and loaded by both (benchmarks/bench_generate.py builds and runs
               them): sampling batch 1, n = 8, n = 64 rollouts of a 16-token prompt, 128 new tokens, float32
               and bfloat16; tokens/s and pigpt / transformers.
Engines run interleaved (pigpt.benchmarking.interleave); on a GPU each call is timed with CUDA events.

--dry-run: tiny sizes (B in {1, 3}, V = 1000, a 2-layer model, 4 new tokens, one timed round), on the GPU
if there is one, else on the CPU with the Triton kernel through the interpreter and FlashInfer skipped; the
tests step runs only the interpreter-choice tests. It shows the script works, not how fast anything is.

Writes <out>/gpu_check.json, <out>/gpu_check.png and <out>/pytest.log (--out, default bench_out/gpu_check).
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib.util
import math
import os
import re
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path

from pigpt import benchmarking as harness
from pigpt.kernels.interpreter import choose_interpreter, interpreting

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent  # the checkout: the tests live there, not in the installed package
STEPS = ("tests", "sampling", "generate")
SAMPLING_ENGINES = ("triton", "torch", "transformers", "flashinfer")
GENERATE_ENGINES = ("pigpt", "transformers")

# name -> sampling parameters, given to every engine as keywords. A new case is one more line here (each
# engine must take its keywords: bench_sampling.reference_chain and flashinfer_fn are the peers' adapters).
CASES = {
    "untruncated": dict(temperature=1.0, top_k=0, top_p=1.0),
    "top-k 50": dict(temperature=1.0, top_k=50, top_p=1.0),
    "top-p 0.9": dict(temperature=1.0, top_k=0, top_p=0.9),
    "top-k 50 + top-p 0.9": dict(temperature=1.0, top_k=50, top_p=0.9),
    "min-p 0.05": dict(temperature=1.0, top_k=0, top_p=1.0, min_p=0.05),
    "epsilon 3e-4": dict(temperature=1.0, top_k=0, top_p=1.0, epsilon_cutoff=3e-4),
    "typical 0.9": dict(temperature=1.0, top_k=0, top_p=1.0, typical_p=0.9),
    "eta 3e-4": dict(temperature=1.0, top_k=0, top_p=1.0, eta_cutoff=3e-4),
}


@dataclasses.dataclass
class Sizes:
    Bs: tuple[int, ...]
    V: int
    repeats: int  # interleaved timed rounds (sampling)
    warmup: int  # untimed rounds, after each engine's first call (which checks that it runs)
    tiny_model: bool
    prompt_len: int
    new_tokens: int
    gen_repeats: int
    gen_warmup: int
    copy_mb: int  # the bandwidth copy
    pytest_args: tuple[str, ...]
    pytest_timeout: int


FULL = Sizes(Bs=(1, 8, 64, 256), V=50257, repeats=20, warmup=2, tiny_model=False, prompt_len=16, new_tokens=128,
             gen_repeats=3, gen_warmup=1, copy_mb=2048, pytest_args=("-k", "triton or cuda"), pytest_timeout=300)
# the dry run's one untimed generate round (gen_warmup=1): without it the first case's figure is the first call's
# (plans built, kernels compiled), not a step's
DRY = Sizes(Bs=(1, 3), V=1000, repeats=1, warmup=0, tiny_model=True, prompt_len=8, new_tokens=4, gen_repeats=1,
            gen_warmup=1, copy_mb=64, pytest_args=("tests/test_kernels_triton.py", "-k", "interpreter"),
            pytest_timeout=120)


class UsageError(Exception):
    pass


def sibling(name: str):
    """Another script of benchmarks/ as a module, loaded from its file (no sys.path edit): the engines and
    references it defines stay in one place."""
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, HERE / f"{name}.py")
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
    return sys.modules[name]


def sync(device):
    import torch

    if torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)


# -- step 1: the tests -----------------------------------------------------------------------------------
def parse_pytest_summary(text: str) -> dict[str, int]:
    """Counts from pytest's last summary line ('3 passed, 1 failed, 2 errors in 4.5s'): name -> count."""
    lines = [ln for ln in text.strip().splitlines() if re.search(r"\d+ (passed|failed|error|skipped|deselected)", ln)]
    counts = {}
    for n, word in re.findall(r"(\d+) (\w+)", lines[-1] if lines else ""):
        counts[{"error": "errors", "warning": "warnings"}.get(word, word)] = int(n)
    return counts


def uncollected_modules(log: str) -> list[str]:
    """'tests/test_x.py (ModuleNotFoundError: ...)' for each test module pytest could not import."""
    found = []
    for m in re.finditer(r"ERROR collecting (\S+)", log):
        why = re.search(r"^E\s+(.+)$", log[m.end():], re.M)
        found.append(f"{m.group(1)} ({why.group(1).strip() if why else 'see the log'})")
    return found


def step_tests(sizes: Sizes, out: Path, device) -> dict:
    # --continue-on-collection-errors: a test module whose imports fail on this machine (trl, absent from a
    # GPU image, say) is listed, not fatal; the selected tests of the other modules still run.
    cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "--continue-on-collection-errors",
           *sizes.pytest_args]
    try:
        r = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=sizes.pytest_timeout)
        log, rc = r.stdout + r.stderr, r.returncode
    except subprocess.TimeoutExpired as e:  # keep what it printed: the tests that did finish
        log = "".join(x.decode() if isinstance(x, bytes) else (x or "") for x in (e.stdout, e.stderr))
        log += f"\n[gpu_check: pytest stopped after {sizes.pytest_timeout} s]\n"
        rc = None
    (out / "pytest.log").write_text(log)
    counts = parse_pytest_summary(log)
    uncollected = uncollected_modules(log)
    res = {"command": " ".join(["pytest", *cmd[3:]]), "returncode": rc, "counts": counts,
           "uncollected_modules": uncollected, "failed_tests": re.findall(r"^FAILED (\S+)", log, re.M),
           "tail": log[-2000:]}
    if rc is None:
        raise StepFailed(f"pytest ran past {sizes.pytest_timeout} s (see {out / 'pytest.log'})", res)
    ran = counts.get("passed", 0) + counts.get("failed", 0)
    if counts.get("failed") or ran == 0 or counts.get("errors", 0) > len(uncollected):
        raise StepFailed(f"pytest: {summary_of(counts)} (see {out / 'pytest.log'})", res)
    return res


def summary_of(counts: dict) -> str:
    return ", ".join(f"{v} {k}" for k, v in counts.items() if k != "warnings") or "no summary line"


class StepFailed(Exception):
    """A step that ran but failed: its results still go in the JSON."""

    def __init__(self, message, results):
        super().__init__(message)
        self.results = results


# -- step 2: the sampling op -----------------------------------------------------------------------------
def copy_bandwidth(device, mbytes: int, repeats: int = 5) -> float:
    """Bytes/s moved by a device-to-device copy of `mbytes` MB, counting bytes read and written (the best of
    `repeats` after a warm-up: interference only ever lowers it)."""
    import torch

    n = mbytes * 2**20 // 4
    src = torch.ones(n, device=device)
    dst = torch.empty_like(src)
    res = harness.interleave({"copy": harness.device_timed(lambda: dst.copy_(src), device)}, repeats, warmup=1)
    return 2 * n * 4 / min(res.times["copy"])


def sampling_engines(device) -> tuple[dict, dict]:
    """name -> fn(x, seed, **case) for every engine this machine has, and name -> note for those it hasn't."""
    from pigpt.kernels import sample_from_logits

    bench_sampling = sibling("bench_sampling")
    engines = {
        "triton": lambda x, seed, **c: sample_from_logits(x, seed=seed, backend="triton", **c),
        "torch": lambda x, seed, **c: sample_from_logits(x, seed=seed, backend="torch", **c),
        "transformers": lambda x, seed, **c: bench_sampling.reference_chain(x, **c),
    }
    notes = {}
    fi = bench_sampling.flashinfer_fn() if device.type == "cuda" else None
    if fi is not None:
        engines["flashinfer"] = lambda x, seed, **c: fi(x, **c)
    else:
        notes["flashinfer"] = "not on the CPU" if device.type != "cuda" else "flashinfer does not import here"
    return engines, notes


def sampling_cell(case: str, params: dict, B: int, V: int, engines: dict, sizes: Sizes, device,
                  bandwidth: float) -> dict:
    import torch

    g = torch.Generator().manual_seed(B * 7 + V)
    x = (torch.randn(B, V, generator=g) * sibling("bench_sampling").LOGITS["peaked"]).to(device)
    seed = torch.arange(B, device=device)
    nbytes = x.numel() * x.element_size()
    row = {"case": case, "params": params, "B": B, "V": V, "bytes": nbytes, "floor_s": nbytes / bandwidth,
           "engines": {}}
    fns, first = {}, {}
    for name, fn in engines.items():
        try:  # a first call, untimed: compiles, and an engine that cannot run this case (min-p in a peer
            # without it, say) leaves its error in the row
            first[name] = fn(x, seed, **params)
            sync(device)
            fns[name] = harness.device_timed(lambda fn=fn: fn(x, seed, **params), device)
        except Exception as e:  # noqa: BLE001
            row["engines"][name] = {"error": f"{type(e).__name__}: {e}"}
    res = harness.interleave(fns, sizes.repeats, warmup=sizes.warmup)
    for name in fns:
        s = res.median(name)
        row["engines"][name] = {"s": s, "times": res.times[name], "gb_s": nbytes / s / 1e9,
                                "x_floor": s / row["floor_s"]}
    row["speedup_vs_triton"] = {name: res.ratio("triton", name) for name in fns if name != "triton"}
    if "triton" in first and "torch" in first:  # both backends promise the same tokens for the same seeds
        row["same_tokens"] = bool(torch.equal(first["triton"][0].cpu(), first["torch"][0].cpu()))
    return row


def step_sampling(sizes: Sizes, device, bandwidth: float | None) -> dict:
    if bandwidth is None:
        bandwidth = copy_bandwidth(device, sizes.copy_mb)
        source = f"device-to-device copy of {sizes.copy_mb} MB, read + write"
    else:
        source = "--bandwidth"
    engines, notes = sampling_engines(device)
    res = {"bandwidth_gb_s": bandwidth / 1e9, "bandwidth_source": source, "notes": notes, "rows": []}
    for case, params in CASES.items():
        for B in sizes.Bs:
            row = sampling_cell(case, params, B, sizes.V, engines, sizes, device, bandwidth)
            res["rows"].append(row)
            print("  " + sampling_line(row), flush=True)
    errors = [f"{r['case']} B={r['B']} {n}: {e['error']}" for r in res["rows"] for n, e in r["engines"].items()
              if "error" in e and n in ("triton", "torch")]
    if errors:
        raise StepFailed(f"{len(errors)} pigpt cells failed, first: {errors[0]}", res)
    return res


def sampling_line(row) -> str:
    f = harness.fmt
    parts = [f"{row['case']:22s} B={row['B']:<4d}"]
    for name, e in row["engines"].items():
        parts.append(f"{name} " + (f(e["s"] * 1e6, '.0f', suffix='us') if "s" in e else "error"))
    parts.append(f"floor {row['floor_s'] * 1e6:.1f}us")
    if "same_tokens" in row:
        parts.append("same tokens" if row["same_tokens"] else "TOKENS DIFFER")
    return "  ".join(parts)


# -- step 3: generate ------------------------------------------------------------------------------------
GENERATE_CASES = ("sample", "n8", "n64")  # bench_generate.CASES: sampling batch 1, n = 8, n = 64


def step_generate(sizes: Sizes, device) -> dict:
    import torch

    gen = sibling("bench_generate")
    res = {"prompt_len": sizes.prompt_len, "new_tokens": sizes.new_tokens, "rows": []}
    errors = []
    with tempfile.TemporaryDirectory() as tmp:
        model_dir = Path(tmp) / "model"
        gen.save_model(model_dir, sizes.tiny_model)
        for precision in ("float32", "bfloat16"):
            try:
                pig = gen.load_pigpt(model_dir, precision).to(device)
                hf = gen.load_transformers(model_dir, precision).to(device)
            except Exception as e:  # noqa: BLE001
                errors.append(f"{precision}: loading: {type(e).__name__}: {e}")
                continue
            prompt = gen.make_prompt(sizes.prompt_len, pig.config.vocab_size).to(device)
            for key in GENERATE_CASES:
                label, kind, n = gen.CASES[key]
                row = {"case": key, "label": label, "precision": precision, "rows": n,
                       "tokens": n * sizes.new_tokens, "engines": {}}
                try:
                    run = {"pigpt": lambda: gen.run_pigpt(pig, prompt, kind, n, sizes.new_tokens),
                           "transformers": lambda: gen.run_hf(hf, prompt, kind, n, sizes.new_tokens)}
                    with torch.inference_mode():  # the calls only: the models were loaded outside it
                        r = harness.interleave({k: harness.device_timed(f, device) for k, f in run.items()},
                                               sizes.gen_repeats, warmup=sizes.gen_warmup)
                    for name in GENERATE_ENGINES:
                        row["engines"][name] = {"seconds": r.times[name], "tok_s": row["tokens"] / r.median(name)}
                    row["pigpt/transformers"] = r.ratio("pigpt", "transformers")
                except Exception as e:  # noqa: BLE001 (the next case may still run)
                    row["error"] = f"{type(e).__name__}: {e}"
                    errors.append(f"{label} {precision}: {row['error']}")
                res["rows"].append(row)
                print("  " + generate_line(row), flush=True)
            del pig, hf
            if torch.device(device).type == "cuda":
                torch.cuda.empty_cache()
    if errors:
        raise StepFailed(f"{len(errors)} generate cases failed, first: {errors[0]}", res)
    return res


def generate_line(row) -> str:
    if "error" in row:
        return f"{row['label']:18s} {row['precision']:8s} error: {row['error']}"
    e, f = row["engines"], harness.fmt
    return (f"{row['label']:18s} {row['precision']:8s} pigpt {f(e['pigpt']['tok_s'], '8.1f')} tok/s  "
            f"transformers {f(e['transformers']['tok_s'], '8.1f')} tok/s  "
            f"{f(row['pigpt/transformers'], '.2f', suffix='x')}")


# -- output ----------------------------------------------------------------------------------------------
def print_tables(results: dict) -> None:
    f = harness.fmt
    tests = results.get("tests", {})
    if tests.get("results"):
        print(f"\ntests ({tests['results']['command']}): {summary_of(tests['results']['counts'])}")
        for m in tests["results"]["uncollected_modules"]:
            print(f"  not importable here, not run: {m}")
        for t in tests["results"]["failed_tests"]:
            print(f"  FAILED {t}")
    samp = results.get("sampling", {}).get("results")
    if samp and samp["rows"]:
        names = [n for n in SAMPLING_ENGINES if any(n in r["engines"] for r in samp["rows"])]
        body = []
        for r in samp["rows"]:
            e = r["engines"]
            body.append([r["case"], r["B"], *(f(e[n].get("s", math.nan) * 1e6, ".1f") if n in e else "-" for n in names),
                         f(r["floor_s"] * 1e6, ".1f"),
                         f(e.get("triton", {}).get("x_floor"), ".1f", suffix="x"),
                         *(f(r["speedup_vs_triton"].get(n), ".2f", suffix="x") for n in names if n != "triton"),
                         {True: "yes", False: "NO"}.get(r.get("same_tokens"), "-")])
        print(f"\nsampling, V = {samp['rows'][0]['V']} float32 logits, microseconds per call "
              f"(bandwidth {samp['bandwidth_gb_s']:.0f} GB/s, {samp['bandwidth_source']}):")
        print(harness.markdown_table(
            ["case", "B", *(f"{n} us" for n in names), "floor us", "triton / floor",
             *(f"{n} time / triton" for n in names if n != "triton"), "triton = torch tokens"], body))
        for n, note in samp["notes"].items():
            print(f"  {n}: {note}")
    gen = results.get("generate", {}).get("results")
    if gen and gen["rows"]:
        body = [[r["label"], r["precision"], *(f(r["engines"].get(n, {}).get("tok_s")) for n in GENERATE_ENGINES),
                 f(r.get("pigpt/transformers"), ".2f", suffix="x")] for r in gen["rows"]]
        print(f"\ngenerate, prompt {gen['prompt_len']}, {gen['new_tokens']} new tokens, tokens/s:")
        print(harness.markdown_table(["case", "precision", "pigpt", "transformers", "pigpt / transformers"], body,
                                     "llrrr"))


def plot(results: dict, meta: dict, path: Path) -> Path:
    """Top row: one panel per sampling case (time per call against B, beside the floor); bottom: generate's
    tokens/s, and the steps' status. A step without results gets its status where its plot would be."""
    plt = harness.pyplot()
    samp = results.get("sampling", {}).get("results") or {"rows": []}
    cases = list(dict.fromkeys(r["case"] for r in samp["rows"]))
    ncol = max(4, len(cases))
    fig = plt.figure(figsize=(3.75 * ncol, 8.5))
    grid = fig.add_gridspec(2, ncol)
    if not cases:
        no_results(fig.add_subplot(grid[0, :]), results, "sampling")
    for i, case in enumerate(cases):
        ax = fig.add_subplot(grid[0, i])
        rows = sorted((r for r in samp["rows"] if r["case"] == case), key=lambda r: r["B"])
        Bs = [r["B"] for r in rows]
        for j, name in enumerate(SAMPLING_ENGINES):
            ys = [r["engines"].get(name, {}).get("s", math.nan) * 1e6 for r in rows]
            if any(not math.isnan(y) for y in ys):
                ax.plot(Bs, ys, marker="o", ms=4, color=f"C{j}", label=name)
        ax.plot(Bs, [r["floor_s"] * 1e6 for r in rows], "k--", lw=1, label="memory-read floor")
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xticks(Bs, [str(b) for b in Bs])
        ax.set_title(case, fontsize=10)
        ax.set_xlabel("batch B")
        ax.grid(alpha=0.3, which="both")
        if i == 0:
            ax.set_ylabel(f"microseconds per call (V = {rows[0]['V']})")
            ax.legend(fontsize=7)

    ax = fig.add_subplot(grid[1, :ncol - 1])
    gen = results.get("generate", {}).get("results") or {"rows": []}
    done = [r for r in gen["rows"] if "error" not in r]
    if done:
        groups = [f"{r['label']}\n{r['precision']}" for r in done]
        series = {n: [r["engines"][n]["tok_s"] for r in done] for n in GENERATE_ENGINES}
        harness.bar_chart(None, groups, series, "tokens / s", ax=ax,
                          title=f"generate: random GPT-2 {'tiny' if meta['sizes']['tiny_model'] else 'small'}, "
                                f"prompt {gen['prompt_len']}, {gen['new_tokens']} new tokens, median of "
                                f"{meta['sizes']['gen_repeats']} (above the bars: pigpt / transformers)")
        ax.set_xticks(range(len(groups)), groups, rotation=0, ha="center", fontsize=8)
        for j, r in enumerate(done):
            top = max(series[n][j] for n in GENERATE_ENGINES)
            ax.annotate(harness.fmt(r["pigpt/transformers"], ".2f", suffix="x"), (j, top), ha="center",
                        va="bottom", fontsize=8)
        ax.margins(y=0.15)
    else:
        no_results(ax, results, "generate")

    ax = fig.add_subplot(grid[1, ncol - 1])
    ax.axis("off")
    ax.text(0.0, 1.0, status_text(results, meta), ha="left", va="top", fontsize=8, family="monospace",
            transform=ax.transAxes)
    fig.suptitle(f"gpu_check{' --dry-run (a rehearsal at tiny sizes: no figure here means anything)' if meta['dry_run'] else ''}"
                 f": {meta['device_name']}, torch {meta['torch']}"
                 f"{', Triton interpreter' if meta['triton_interpreter'] else ''}, {meta['time']}", fontsize=11)
    return harness.save_figure(fig, path)


def no_results(ax, results, step) -> None:
    s = results.get(step)
    text = f"{step}: " + ("not run" if s is None else "FAILED, no results (the error is listed on the right)"
                          if not s["ok"] else "no results")
    ax.axis("off")
    ax.text(0.5, 0.5, text, ha="center", va="center", fontsize=10, transform=ax.transAxes)


def status_text(results, meta) -> str:
    lines = []
    for step in STEPS:
        s = results.get(step)
        lines.append(f"{step:9s} " + ("not run" if s is None else
                                      f"{'ok' if s['ok'] else 'FAILED'} ({s['seconds']:.0f} s)"))
    t = (results.get("tests") or {}).get("results")
    if t:
        lines += ["", "tests: " + summary_of(t["counts"])]
        lines += [f"  not importable: {m.split()[0]}" for m in t["uncollected_modules"][:4]]
        lines += [f"  FAILED {x.split('::')[-1][:34]}" for x in t["failed_tests"][:6]]
    samp = (results.get("sampling") or {}).get("results")
    if samp:
        lines += ["", f"bandwidth {samp['bandwidth_gb_s']:.0f} GB/s", f"  ({samp['bandwidth_source']})"]
        lines += [f"{n}: {note}" for n, note in samp["notes"].items()]
        diff = [f"{r['case']} B={r['B']}" for r in samp["rows"] if r.get("same_tokens") is False]
        lines.append("triton = torch tokens: " + ("every cell" if not diff else f"NOT in {len(diff)} cells"))
    failed = [f"{s}: {results[s]['error']}" for s in STEPS if s in results and not results[s]["ok"]]
    if failed:
        lines += ["", "failed:"] + [_wrap(x, 38) for x in failed]
    return "\n".join(lines)


def _wrap(text, width):
    import textwrap

    return "\n".join(textwrap.wrap(text[:300], width, subsequent_indent="  "))


# -- main ------------------------------------------------------------------------------------------------
def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dry-run", action="store_true", help="tiny sizes; without CUDA, the CPU and Triton's interpreter")
    ap.add_argument("--out", default=str(harness.OUT_DIR / "gpu_check"), help="folder for the JSON, PNG and pytest log")
    ap.add_argument("--bandwidth", type=float, metavar="GB/S",
                    help="the device's memory bandwidth for the floor (default: measured with a copy)")
    ap.add_argument("--steps", default=",".join(STEPS), help=f"which steps, comma-separated (default {','.join(STEPS)})")
    args = ap.parse_args(argv)
    args.steps = [s.strip() for s in args.steps.split(",") if s.strip()]
    bad = [s for s in args.steps if s not in STEPS]
    if bad or not args.steps:
        raise UsageError(f"--steps: unknown step {', '.join(bad) or '(none given)'}; choose from {', '.join(STEPS)}")
    if args.bandwidth is not None and not (args.bandwidth > 0 and math.isfinite(args.bandwidth)):
        raise UsageError(f"--bandwidth must be a positive number of GB/s, got {args.bandwidth}")
    return args


def main(argv=None) -> int:
    try:
        args = parse_args(argv)
    except UsageError as e:
        print(f"gpu_check: {e}", file=sys.stderr)
        return 2
    # Before anything imports triton: the interpreter where there is no CUDA (a TRITON_INTERPRET set by the
    # user is kept). Only the dry run may run without CUDA.
    import torch

    cuda = torch.cuda.is_available()
    if not cuda and not args.dry_run:
        print("gpu_check: no CUDA device here; run it on a GPU machine, or pass --dry-run for the small CPU "
              "rehearsal", file=sys.stderr)
        return 2
    choose_interpreter(cuda=cuda)
    device = torch.device("cuda" if cuda else "cpu")
    sizes = DRY if args.dry_run else FULL
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    json_path, png_path = out / "gpu_check.json", out / "gpu_check.png"
    harness.setup_threads(min(16, os.cpu_count() or 1) if cuda else min(2, os.cpu_count() or 1))

    meta = harness.environment(dry_run=args.dry_run, device=str(device), triton_interpreter=interpreting(),
                               device_name=torch.cuda.get_device_name() if cuda else harness.cpu_name(),
                               sizes=dataclasses.asdict(sizes), steps=args.steps)
    if cuda:
        meta["cuda"] = torch.version.cuda
    try:
        import triton

        meta["triton"] = triton.__version__
    except Exception:  # noqa: BLE001
        meta["triton"] = None
    print(f"gpu_check{' --dry-run' if args.dry_run else ''}: {meta['device_name']} ({device}), torch {meta['torch']}, "
          f"triton {meta['triton']}{', interpreter' if meta['triton_interpreter'] else ''}", flush=True)

    results: dict = {}
    t_start = time.perf_counter()
    run = {"tests": lambda: step_tests(sizes, out, device),
           "sampling": lambda: step_sampling(sizes, device, args.bandwidth and args.bandwidth * 1e9),
           "generate": lambda: step_generate(sizes, device)}
    for step in args.steps:
        print(f"[{step}]", flush=True)
        t0 = time.perf_counter()
        entry = {"step": step, "ok": True}
        try:
            entry["results"] = run[step]()
        except Exception as e:  # noqa: BLE001 (say which step failed, then go on)
            entry.update(ok=False, error=f"{type(e).__name__}: {e}".splitlines()[0][:500],
                         results=getattr(e, "results", None))
            if not isinstance(e, StepFailed):
                entry["traceback"] = traceback.format_exc()[-3000:]
            print(f"step {step} FAILED: {entry['error']}", flush=True)
        entry["seconds"] = time.perf_counter() - t0
        results[step] = entry
        harness.write_json(json_path, list(results.values()), meta)  # so far: a run cut short keeps its steps
    meta["seconds"] = time.perf_counter() - t_start
    meta["loadavg_end"] = os.getloadavg()
    print_tables(results)
    harness.write_json(json_path, list(results.values()), meta)
    try:
        plot(results, meta, png_path)
    except Exception as e:  # noqa: BLE001 (the JSON is written; a broken plot must not hide the results)
        print(f"plot FAILED: {type(e).__name__}: {e}", flush=True)
        return 1
    failed = [s for s, r in results.items() if not r["ok"]]
    print(f"\n{len(args.steps) - len(failed)} of {len(args.steps)} steps ok"
          + (f"; failed: {', '.join(failed)}" if failed else "") + f"; {meta['seconds']:.0f} s")
    print(f"wrote {json_path}, {png_path}" + (f", {out / 'pytest.log'}" if "tests" in results else ""))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
