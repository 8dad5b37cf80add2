"""The benchmarks' shared harness: imports, threads, timing, interleaved comparisons, memory, output.

The scripts in benchmarks/ (run as `python benchmarks/bench_X.py`) import it as
`from pigpt import benchmarking as harness`; they import `pigpt` and nothing else of ours.

    harness.setup_threads(2)
    r = harness.interleave({"pigpt": run_ours, "transformers": run_theirs}, repeats=5)
    r.median("pigpt"), r.ratio("pigpt", "transformers")   # seconds; speed of pigpt / speed of the other
    harness.write_json("bench_out/x.json", rows, meta=harness.environment())

Speed is compared, not judged: on a shared, noisy machine a figure is only meaningful next to a reference
measured in the same run. So compared engines run interleaved (A, B, A, B, ...), a neighbour's burst slows
both sides of a pair, and a comparison is the median of the per-pair ratios. An engine can also live in
another process (`Worker`, `run_measured`), so that its peak memory is its own.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

ROOT = Path(__file__).resolve().parents[1]  # the checkout, when pigpt runs from one (git describe, --baseline)

OUT_DIR = Path("bench_out")  # where scripts write their JSON and PNG unless told otherwise


# -- setup ---------------------------------------------------------------------------------------------
def setup_threads(n: int) -> int:
    """Use n intra-op threads in torch (and in anything this process starts that reads OMP_NUM_THREADS)."""
    import torch

    os.environ["OMP_NUM_THREADS"] = str(n)
    torch.set_num_threads(n)
    return torch.get_num_threads()


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def cpu_flags() -> set[str]:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def git_commit() -> str | None:
    try:
        out = subprocess.run(["git", "-C", str(ROOT), "describe", "--always", "--dirty"], capture_output=True,
                             text=True, timeout=10)
        return out.stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


def environment(**extra) -> dict:
    """What a result depends on and a reader needs to judge it: versions, CPU, threads, load average."""
    import torch

    return {"torch": torch.__version__, "python": platform.python_version(), "cpu": cpu_name(),
            "cpu_count": os.cpu_count(), "threads": torch.get_num_threads(), "loadavg": os.getloadavg(),
            "commit": git_commit(), "time": time.strftime("%Y-%m-%d %H:%M:%S"), **extra}


# -- timing --------------------------------------------------------------------------------------------
def wall(fn: Callable[[], object], sync: Callable[[], object] | None = None) -> float:
    """Wall-clock seconds of one call (`sync`, e.g. torch.cuda.synchronize, on both sides of it)."""
    if sync is not None:
        sync()
    t0 = time.perf_counter()
    fn()
    if sync is not None:
        sync()
    return time.perf_counter() - t0


def measure(fn: Callable[[], object], repeats: int, warmup: int = 1, stat: str = "median",
            sync: Callable[[], object] | None = None) -> float:
    """Seconds per call: the median (or min) of `repeats` calls after `warmup` untimed ones.

    For one engine on its own; to compare engines, use `interleave`."""
    for _ in range(warmup):
        fn()
    times = [wall(fn, sync) for _ in range(repeats)]
    return min(times) if stat == "min" else statistics.median(times)


def device_timed(fn: Callable[[], object], device) -> Callable[[], float | None]:
    """fn as an engine for `interleave`. On a CUDA device it times itself: the seconds between two CUDA events
    recorded around the call on an idle stream (the queue drained first), so the work the call queued is
    counted to its end, launch gaps included. Elsewhere it returns None and `interleave` takes the wall time."""
    import torch

    if torch.device(device).type != "cuda":
        return lambda: (fn(), None)[1]

    def run() -> float:
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        torch.cuda.synchronize(device)
        start.record()
        fn()
        end.record()
        end.synchronize()
        return start.elapsed_time(end) / 1000  # ms -> s

    return run


@dataclass
class Interleaved:
    """Times of interleaved runs: times[name][i] is round i's run of that engine (seconds)."""

    times: dict[str, list[float]]
    cpu: dict[str, list[float]] = field(default_factory=dict)  # this process's CPU seconds, same layout

    def median(self, name: str) -> float:
        t = self.times.get(name)
        return statistics.median(t) if t else math.nan

    def cpu_median(self, name: str) -> float:
        t = self.cpu.get(name)
        return statistics.median(t) if t else math.nan

    def ratio(self, name: str, reference: str) -> float:
        """How many times faster `name` ran than `reference`: the median over rounds of their time ratios
        (a round's two runs shared whatever the machine was doing then). NaN when either is missing."""
        a, b = self.times.get(name), self.times.get(reference)
        pairs = [(x, y) for x, y in zip(a or [], b or []) if x > 0 and not math.isnan(x) and not math.isnan(y)]
        return statistics.median(y / x for x, y in pairs) if pairs else math.nan


def interleave(fns: dict[str, Callable[[], float | None] | None], repeats: int, warmup: int = 0) -> Interleaved:
    """Run each engine once per round, in order, for `warmup` untimed rounds and `repeats` timed ones.

    An fn that returns a number has timed itself (an engine in another process or an external tool that
    reports its own time): that number, in seconds, is recorded instead of the wall time of the call.
    Engines mapped to None are skipped."""
    live = {k: f for k, f in fns.items() if f is not None}
    res = Interleaved({k: [] for k in live}, {k: [] for k in live})
    for r in range(warmup + repeats):
        for name, fn in live.items():
            c0, t0 = time.process_time(), time.perf_counter()
            own = fn()
            t, c = time.perf_counter() - t0, time.process_time() - c0
            if isinstance(own, (int, float)):
                t, c = float(own), math.nan  # our CPU time says nothing about another process's work
            if r >= warmup:
                res.times[name].append(t)
                res.cpu[name].append(c)
    return res


# -- other processes on the machine ----------------------------------------------------------------------
_SPIN = "import os\nparent = os.getppid()\nwhile os.getppid() == parent:\n    pass"  # ends with its parent
LOADS = {  # name: (what it is, the programs it starts)
    "one": ("one busy process (one core)", [_SPIN]),
    "two": ("two busy processes (both cores of 2)", [_SPIN] * 2),
    "job": ("a second 2-thread torch job", [
        "import os, torch\nparent = os.getppid()\ntorch.set_num_threads(2)\na = torch.randn(512, 512)\n"
        "print('ready', flush=True)\nwhile os.getppid() == parent:\n    a = torch.tanh(a @ a)"]),
}


@contextlib.contextmanager
def load(name: str | None):
    """Other processes keeping the CPU busy while the block runs (LOADS; None: nothing). They are started, and
    have begun their work, before the block; killed after it."""
    if not name:
        yield
        return
    if name not in LOADS:
        raise ValueError(f"unknown load {name!r}; use one of {sorted(LOADS)}")
    procs = [subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                              text=True) for code in LOADS[name][1]]
    try:
        for p, code in zip(procs, LOADS[name][1]):
            if "ready" in code:
                p.stdout.readline()  # torch imported, the loop about to start
        time.sleep(0.2)
        yield
    finally:
        for p in procs:
            p.kill()
            p.wait()


# -- memory --------------------------------------------------------------------------------------------
# Peaks come from /proc/<pid>/status's VmHWM, the high-water mark of the process's own address space.
# Not getrusage's ru_maxrss: Linux carries the pre-exec address space's peak into it, so a program
# started from a benchmark holding a 500 MB model would report at least 500 MB of its own.
def _status_kb(pid, field: str) -> float:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return float(line.split()[1])
    except OSError:
        pass
    return math.nan


def peak_rss_mb(pid="self") -> float:
    """The peak resident set size of a process (this one by default) so far, in MB; NaN if unknown."""
    kb = _status_kb(pid, "VmHWM")
    if math.isnan(kb) and pid == "self":
        kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # not Linux: the best there is
    return kb / 1024


def rss_mb(pid="self") -> float:
    """The resident set size of a process (this one by default) now, in MB."""
    return _status_kb(pid, "VmRSS") / 1024


@dataclass
class Measured:
    returncode: int
    stdout: str
    stderr: str
    peak_mb: float  # the child's own peak RSS (NaN if it ended before it could be read)


def run_measured(cmd: list[str], env: dict | None = None, timeout: float | None = None) -> Measured:
    """Run an external program to completion and report its own peak RSS.

    The peak is read from /proc while the program runs (every few ms: its high-water mark only grows),
    and the last reading before it exits is kept."""
    import tempfile

    # Output goes to files, not pipes: a chatty program can't block on a full pipe while we wait on it.
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        p = subprocess.Popen(cmd, stdout=out, stderr=err, env=env, text=True)
        deadline = None if timeout is None else time.monotonic() + timeout
        peak, t0 = math.nan, time.monotonic()
        while True:
            # waitid with WNOWAIT: an exited child stays a zombie (status readable, not reaped) so that the
            # loop can't confuse "exited" with "its /proc entry went away".
            if os.waitid(os.P_PID, p.pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is not None:
                break
            now = peak_rss_mb(p.pid)
            if not math.isnan(now):
                peak = now if math.isnan(peak) else max(peak, now)
            if deadline is not None and time.monotonic() > deadline:
                p.kill()
            time.sleep(0.001 if time.monotonic() - t0 < 0.1 else 0.01)
        p.wait()
        out.seek(0), err.seek(0)
        return Measured(p.returncode, out.read(), err.read(), peak)


class Worker:
    """An engine in its own Python process, so that its peak memory is its own, driven by JSON lines.

    `Worker([script, args...])` starts `python script args...`; that script calls `serve(handle)`, which
    reads one JSON object a line and answers each with `handle(message)`. `close()` ends it and returns
    its last word, which carries its peak RSS (its own: read from /proc, see peak_rss_mb)."""

    def __init__(self, argv: list[str], env: dict | None = None):
        self.proc = subprocess.Popen([sys.executable, *argv], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     env=env, text=True, bufsize=1)
        self.hello = self._read()  # the worker says it is ready (model loaded, warmed up)

    def _read(self) -> dict:
        line = self.proc.stdout.readline()
        if not line:
            code = self.proc.wait()
            raise RuntimeError(f"benchmark worker {self.proc.args[1:]} exited ({code}) without answering")
        reply = json.loads(line)
        if "error" in reply:
            raise RuntimeError(f"benchmark worker {self.proc.args[1:]}: {reply['error']}")
        return reply

    def request(self, **message) -> dict:
        self.proc.stdin.write(json.dumps(message) + "\n")
        self.proc.stdin.flush()
        return self._read()

    def close(self) -> dict:
        if self.proc.poll() is not None:
            return {}
        bye = self.request(op="exit")
        self.proc.wait()
        return bye

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        if exc[0] is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        else:
            self.close()


def serve(handle: Callable[[dict], dict], hello: dict | None = None) -> None:
    """The worker side of `Worker`: answer each JSON line on stdin with handle(message) until "exit".

    The protocol keeps the real stdout to itself: anything a library prints goes to stderr instead."""
    proto = os.fdopen(os.dup(sys.stdout.fileno()), "w", buffering=1)
    os.dup2(sys.stderr.fileno(), sys.stdout.fileno())

    def say(msg):
        proto.write(json.dumps(msg) + "\n")

    say({"ready": True, "rss_mb": rss_mb(), **(hello or {})})
    for line in sys.stdin:
        msg = json.loads(line)
        if msg.get("op") == "exit":
            say({"peak_mb": peak_rss_mb()})
            return
        try:
            say(handle(msg))
        except Exception as e:  # noqa: BLE001 (the parent reports it; the worker must not hang)
            say({"error": f"{type(e).__name__}: {e}"})


# -- output --------------------------------------------------------------------------------------------
def add_output_args(ap, name: str) -> None:
    """--out and --png, defaulting to bench_out/<name>.json / .png (relative to the working directory)."""
    ap.add_argument("--out", default=str(OUT_DIR / f"{name}.json"), help="JSON of every measurement")
    ap.add_argument("--png", default=str(OUT_DIR / f"{name}.png"), help="plot of the results ('' for none)")


def _jsonable(x):
    if isinstance(x, float) and not math.isfinite(x):
        return None  # JSON has no NaN / inf: a missing measurement is null
    if isinstance(x, dict):
        return {str(k): _jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_jsonable(v) for v in x]
    return x


def write_json(path, rows: list[dict], meta: dict | None = None) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(_jsonable({"meta": meta or {}, "rows": rows}), indent=1))
    return path


def markdown_table(headers: list[str], rows: list[list], align: str | None = None) -> str:
    """A GitHub table; `align` is one character a column, 'l' or 'r' (default: first left, rest right)."""
    align = align or "l" + "r" * (len(headers) - 1)
    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" if a == "l" else "---:" for a in align) + "|"]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def fmt(x: float | None, spec: str = ".1f", missing: str = "-", suffix: str = "") -> str:
    """format(x, spec) + suffix, or `missing` for a measurement that isn't there (None or NaN)."""
    return missing if x is None or (isinstance(x, float) and math.isnan(x)) else format(x, spec) + suffix


def pyplot():
    """matplotlib.pyplot on the file-only backend (benchmarks run on machines without a display)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_figure(fig, path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    pyplot().close(fig)
    return path


def bar_chart(path, groups: list[str], series: dict[str, list[float]], ylabel: str, title: str = "",
              ax=None):
    """Grouped bars: one group per x label, one bar per series (NaN: no bar). Writes `path` unless an
    axis is given to draw into."""
    plt = pyplot()
    fig = None
    if ax is None:
        fig, ax = plt.subplots(figsize=(max(5.0, 0.9 * len(groups) * max(1, len(series)) / 2 + 2), 3.8))
    width = 0.8 / max(1, len(series))
    for i, (name, values) in enumerate(series.items()):
        xs = [j + (i - (len(series) - 1) / 2) * width for j in range(len(groups))]
        ax.bar(xs, [0 if v is None or math.isnan(v) else v for v in values], width, label=name, color=f"C{i}")
    ax.set_xticks(range(len(groups)), groups, rotation=30, ha="right", fontsize=7)
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=9)
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize=7)
    if fig is not None:
        return save_figure(fig, path)
    return None
