"""pigpt-explore's two waits, on the shipped model: from start to the first view, and from a slider move to new bars.

    python benchmarks/bench_explore.py              # 3 cold starts, 60 slider moves
    python benchmarks/bench_explore.py --quick      # 1 cold start, 20 slider moves

First view: `python -m pigpt.explore --port 0` is started as a user starts it; timed until it prints its URL
(listening: Python, torch and the model loaded) and until the page's first view is answered (GET /, its
script, and the first POST /api/step, which runs the prompt's one forward).
Slider move: POST /api/step on a prefix whose logits are cached, the temperature changing each time, as the
page sends on a slider's input event (over HTTP on 127.0.0.1: the time to new bars, less the browser's
drawing of a dozen SVG rows). Reports medians and p90, and the machine's load (a shared machine slows both).
Writes a JSON (--out).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
import urllib.request

PROMPT = "def add(a, b):\n    return"


def post(url: str, body: dict) -> dict:
    req = urllib.request.Request(url, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=120) as r:
        return json.loads(r.read())


def get(url: str) -> bytes:
    with urllib.request.urlopen(url, timeout=120) as r:
        return r.read()


def cold_start(model: str) -> tuple[dict, subprocess.Popen, str]:
    """Start the explorer; time to listening and to the first view. Returns (times, process, base URL)."""
    t0 = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-m", "pigpt.explore", "--model", model, "--port", "0"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    line = proc.stdout.readline()
    if "http://" not in line:
        proc.kill()
        raise SystemExit(f"bench_explore: the explorer did not start: {line}{proc.stderr.read()}")
    t_listen = time.perf_counter() - t0
    base = line.split("http://", 1)[1].split("/", 1)[0]
    base = f"http://{base}"
    get(base + "/")
    get(base + "/static/app.js")
    first = post(base + "/api/step", {"prompt": PROMPT, "settings": {"temperature": 1.0}})
    assert first["cached"] is False
    return {"listening_s": t_listen, "first_view_s": time.perf_counter() - t0}, proc, base


def slider_moves(base: str, n: int) -> list[float]:
    post(base + "/api/step", {"prompt": PROMPT, "settings": {"temperature": 1.0}})  # the prefix's one forward
    times = []
    for i in range(n):
        T = round(0.5 + (i % 30) * 0.05, 2)  # the slider's steps
        t0 = time.perf_counter()
        d = post(base + "/api/step", {"prompt": PROMPT, "settings": {"temperature": T, "top_p": 0.95}, "top": 12})
        times.append(time.perf_counter() - t0)
        assert d["cached"], "a slider move ran a forward: the logits cache missed"
    return times


def p90(xs: list[float]) -> float:
    return sorted(xs)[max(0, int(round(0.9 * len(xs))) - 1)]


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="default")
    p.add_argument("--starts", type=int, default=3, help="cold starts to time")
    p.add_argument("--moves", type=int, default=60, help="slider moves to time")
    p.add_argument("--quick", action="store_true", help="1 start, 20 moves")
    p.add_argument("--out", default=None, help="write the results as JSON here")
    args = p.parse_args(argv)
    if args.quick:
        args.starts, args.moves = 1, 20
    load_before = os.getloadavg()
    starts, moves = [], []
    for _ in range(args.starts):
        times, proc, base = cold_start(args.model)
        try:
            starts.append(times)
            if not moves:
                moves = slider_moves(base, args.moves)
        finally:
            proc.terminate()
            proc.wait(30)
    result = {
        "model": args.model, "cpus": os.cpu_count(), "loadavg_before": load_before, "loadavg_after": os.getloadavg(),
        "listening_s_median": statistics.median(s["listening_s"] for s in starts),
        "first_view_s_median": statistics.median(s["first_view_s"] for s in starts),
        "slider_ms_median": 1000 * statistics.median(moves), "slider_ms_p90": 1000 * p90(moves),
        "starts": starts, "slider_ms": [1000 * t for t in moves],
    }
    print(f"model {args.model} on {os.cpu_count()} CPUs, load average {load_before[0]:.1f} -> {os.getloadavg()[0]:.1f}")
    print(f"start -> listening:   {result['listening_s_median']:.2f} s (median of {len(starts)})")
    print(f"start -> first view:  {result['first_view_s_median']:.2f} s (the page, its script, the first step)")
    print(f"slider move -> bars:  {result['slider_ms_median']:.1f} ms median, {result['slider_ms_p90']:.1f} ms p90 "
          f"({len(moves)} moves, cached logits, HTTP on 127.0.0.1)")
    if args.out:
        tmp = args.out + ".tmp"
        with open(tmp, "w") as f:
            json.dump(result, f, indent=1)
        os.replace(tmp, args.out)  # atomic: a reader never sees half a file
    return 0


if __name__ == "__main__":
    sys.exit(main())
