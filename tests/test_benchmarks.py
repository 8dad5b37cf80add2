"""The benchmark scripts still run (figures are theirs to print, not the tests' to judge)."""

import json
import math
import os
import stat
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from conftest import load_script

from pigpt import benchmarking as harness

bench_generate = load_script("benchmarks/bench_generate.py")
bench_linear = load_script("benchmarks/bench_linear.py")
bench_sampling = load_script("benchmarks/bench_sampling.py")
train_step = load_script("benchmarks/train_step.py")
bench_invariant = load_script("benchmarks/bench_invariant.py")


def test_bench_invariant_times_both_modes_and_checks_the_bits(tmp_path, capsys):
    out, png = tmp_path / "inv.json", tmp_path / "inv.png"
    rows = bench_invariant.main(["--models", "shipped", "--new-tokens", "2", "--repeats", "1", "--threads", "1",
                                 "--out", str(out), "--png", str(png)])
    assert [r["case"] for r in rows] == list(bench_invariant.CASES)
    assert all(r["same_bits"] and r["ratio"] > 0 and r["default_tok_s"] > 0 for r in rows)
    assert len(json.loads(out.read_text())["rows"]) == 3 and png.stat().st_size > 0
    assert "invariant / default" in capsys.readouterr().out


def test_bench_linear_prints_a_row_per_dtype_and_row_count(monkeypatch, capsys):
    monkeypatch.setattr(sys, "argv", ["bench_linear.py", "--rows", "1,3", "--repeats", "1", "--threads", "1"])
    bench_linear.main()
    rows = [line for line in capsys.readouterr().out.splitlines() if line.startswith("| float") or
            line.startswith("| bfloat")]
    from pigpt.model import packed

    # a CPU without bfloat16 (AVX2 only) gets one bfloat16 row saying so, not figures it can't measure
    bf16 = [[" bfloat16 ", " 1 "], [" bfloat16 ", " 3 "]] if packed.available(torch.bfloat16) else [[" bfloat16 ", " - "]]
    assert [r.split("|")[1:3] for r in rows] == [[" float32 ", " 1 "], [" float32 ", " 3 "]] + bf16
    measured = [r for r in rows if r.split("|")[2] != " - "]
    assert len(measured) >= 2 and all(r.rstrip().endswith("x |") for r in measured)  # a measured speed-up in each


def test_bench_linear_many_rows_times_the_kernels_against_the_torch_path(monkeypatch, capsys):
    from pigpt.model import cpu_decode

    monkeypatch.setattr(sys, "argv", ["bench_linear.py", "--many-rows", "--rows", "9,20", "--width", "64",
                                      "--repeats", "1", "--threads", "1"])
    bench_linear.main()
    out = capsys.readouterr().out
    if cpu_decode.load() is None:
        assert "no CPU kernels here" in out
        return
    rows = [line.split("|")[1:3] for line in out.splitlines() if line.startswith("| float") or line.startswith("| bfloat")]
    assert [(d.split()[0], r.strip()) for d, r in rows] == [("float32", "9"), ("float32", "20"), ("bfloat16", "9"),
                                                            ("bfloat16", "20")]
    assert all(line.rstrip().endswith("x |") for line in out.splitlines() if line.startswith("| float"))


# -- the harness -----------------------------------------------------------------------------------------
def test_interleave_runs_rounds_in_order_and_takes_self_reported_times():
    calls = []
    res = harness.interleave({"a": lambda: calls.append("a"), "b": lambda: calls.append("b") or 2.0, "c": None},
                             repeats=3, warmup=1)
    assert calls == ["a", "b"] * 4  # one untimed round, then three; None engines skipped
    assert res.times["b"] == [2.0, 2.0, 2.0] and len(res.times["a"]) == 3
    assert res.ratio("a", "b") > 1 and math.isnan(res.ratio("a", "c"))


def test_ratio_is_the_median_of_per_round_ratios():
    # x ran twice as fast as ref in two rounds of three; a burst of load hit x in one and ref in another.
    res = harness.Interleaved({"x": [1.0, 4.0, 4.0], "ref": [2.0, 2.0, 8.0]})
    assert res.ratio("x", "ref") == 2.0  # per round: 2, 0.5, 2 (the ratio of medians would say 2 / 4)


def test_device_timed_leaves_cpu_timing_to_interleave():
    calls = []
    fn = harness.device_timed(lambda: calls.append(1) or 5.0, "cpu")  # a number the call returns is not a time
    assert fn() is None and calls == [1]
    res = harness.interleave({"x": fn}, repeats=2)
    assert len(calls) == 3 and all(0 <= t < 1 for t in res.times["x"])  # wall times, not 5.0


def test_run_measured_reports_the_childs_own_peak():
    ballast = bytearray(400 * 2**20)  # this process's peak is above the child's: it must not leak into it
    ballast[::4096] = b"x" * len(ballast[::4096])
    m = harness.run_measured([sys.executable, "-c", "import time; b = bytearray(200 * 2**20); "
                              "b[::4096] = b'x' * len(b[::4096]); time.sleep(0.2); print('ok')"])
    del ballast
    assert m.returncode == 0 and m.stdout.strip() == "ok"
    assert 200 < m.peak_mb < 300  # its 200 MB and an interpreter, not this process's hundreds of MB


def test_markdown_table_and_missing_values():
    t = harness.markdown_table(["a", "b"], [["x", harness.fmt(math.nan)], ["y", harness.fmt(1.234, ".2f", suffix="x")]])
    assert t.splitlines() == ["| a | b |", "|---|---:|", "| x | - |", "| y | 1.23x |"]


# -- the scripts -----------------------------------------------------------------------------------------
def test_bench_sampling_writes_json_and_png(tmp_path, monkeypatch, capsys):
    out, png = tmp_path / "s.json", tmp_path / "s.png"
    monkeypatch.setattr(sys, "argv", ["bench_sampling.py", "--B", "2", "--V", "300", "--repeats", "1", "--settings",
                                      "k50", "--logits", "peaked", "--device", "cpu", "--out", str(out), "--png",
                                      str(png)])
    bench_sampling.main()
    data = json.loads(out.read_text())
    assert [(r["B"], r["setting"]) for r in data["rows"]] == [(2, "k50")]
    assert data["rows"][0]["torch_s"] > 0 and data["meta"]["methods"] == ["reference", "torch"]
    assert png.stat().st_size > 0


def test_train_step_writes_a_row_per_variant(tmp_path, capsys):
    out = tmp_path / "t.json"
    rows = train_step.main(["--layers", "1", "--width", "32", "--context", "8", "--batch", "2", "--reps", "1",
                            "--threads", "1", "--out", str(out), "--png", str(tmp_path / "t.png")])
    assert [r["variant"] for r in rows] == ["plain float32", "fused float32", "plain bfloat16", "fused bfloat16"]
    assert rows[0]["speedup"] == 1.0 and all(r["tokens_s"] > 0 for r in rows)
    assert json.loads(out.read_text())["meta"]["peak_rss_mb"] > 0


def _tiny_generate(tmp_path, *extra):
    out = tmp_path / "g.json"
    rows = bench_generate.main(["--tiny", "--prompt-len", "4", "--new-tokens", "4", "--repeats", "1",
                                "--threads", "1", "--out", str(out), "--png", str(tmp_path / "g.png"), *extra])
    assert json.loads(out.read_text())["rows"] and (tmp_path / "g.png").stat().st_size > 0
    return rows


def test_bench_generate_without_weight_copies(tmp_path, capsys):
    """--no-copies: pigpt's worker runs with packed_weights off, and the run says so."""
    rows = _tiny_generate(tmp_path, "--no-copies", "--no-hf", "--bf16", "--cases", "greedy")
    assert [r["precision"] for r in rows] == ["float32", "bfloat16"]
    assert all(r["engines"]["pigpt"]["tok_s"] > 0 for r in rows)
    assert json.loads((tmp_path / "g.json").read_text())["meta"]["no_copies"] is True
    assert "without weight copies" in capsys.readouterr().out


def test_bench_generate_baseline_checkout(tmp_path, monkeypatch, capsys):
    """--baseline DIR times another checkout's pigpt in the same rounds (here this checkout: a ratio near 1
    would be noise, so only its presence and sense are checked)."""
    monkeypatch.delenv("LLAMA_CPP_DIR", raising=False)
    root = Path(bench_generate.__file__).resolve().parents[1]
    (row,) = _tiny_generate(tmp_path, "--cases", "n8", "--no-hf", "--baseline", str(root))
    base = row["engines"]["baseline"]
    assert base["tok_s"] > 0 and base["peak_mb"] > 0 and base["checkout"] == str(root)
    assert row["ratios"]["pigpt/baseline"] > 0
    assert "| sampling n = 8 | float32 |" in capsys.readouterr().out.split("pigpt / baseline")[1]


def test_bench_generate_under_load(tmp_path, monkeypatch, capsys):
    """--load: every engine timed again with busy processes beside it, in the same rounds."""
    monkeypatch.delenv("LLAMA_CPP_DIR", raising=False)
    (row,) = _tiny_generate(tmp_path, "--cases", "greedy", "--load", "two")
    assert set(row["slowdown"]["two"]) == {"pigpt", "transformers"}
    assert all(v > 0 for v in row["slowdown"]["two"].values()) and row["loaded_tok_s"]["two"]["pigpt"] > 0
    assert "two busy processes" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        bench_generate.parse_args(["--load", "three"])


def test_bench_generate_sizes_and_memory_less_imports(tmp_path):
    assert bench_generate.SIZES["xl"] == (48, 1600, 25)  # GPT-2 XL: 48 layers of width 1600, 25 heads
    (row,) = _tiny_generate(tmp_path, "--cases", "greedy", "--no-hf")
    e = row["engines"]["pigpt"]
    assert 0 < e["peak_less_imports_mb"] < e["peak_mb"]


def test_bench_generate_against_transformers(tmp_path, monkeypatch, capsys):
    monkeypatch.delenv("LLAMA_CPP_DIR", raising=False)
    rows = _tiny_generate(tmp_path, "--cases", "greedy")
    (row,) = rows
    for engine in ("pigpt", "transformers"):
        e = row["engines"][engine]
        assert e["tok_s"] > 0 and e["peak_mb"] > 0 and len(e["seconds"]) == 1
    assert row["ratios"]["pigpt/transformers"] > 0 and math.isnan(row["ratios"]["pigpt/llama.cpp"])
    assert row["engines"]["llama.cpp"]["note"] == "LLAMA_CPP_DIR not set"
    assert "| greedy batch 1 | float32 |" in capsys.readouterr().out


def _fake_llama_cpp(root: Path) -> Path:
    """A stand-in llama.cpp tree: a converter that writes the file it's asked for, and benchmark programs
    that print what the real ones print (JSON from llama-bench, JSON lines from llama-batched-bench)."""
    (root / "build" / "bin").mkdir(parents=True)
    scripts = {
        "convert_hf_to_gguf.py": """
            import sys
            a = sys.argv
            open(a[a.index("--outfile") + 1], "w").write(a[a.index("--outtype") + 1])
        """,
        "build/bin/llama-bench": """
            import json, sys
            if "--version" in sys.argv:
                print("version: 0 (fake)"); sys.exit()
            print(json.dumps([{"n_prompt": 4, "n_gen": 4, "samples_ns": [2000000]}]))
        """,
        "build/bin/llama-batched-bench": """
            import json, sys
            pl = int(sys.argv[sys.argv.index("-npl") + 1].split(",")[-1])
            print('{"n_kv_max": 256, "pl": %d, "t": 0.5}' % pl)
            print('{"n_kv_max": 256, "pl": %d, "t": 0.004}' % pl)
        """,
    }
    for name, body in scripts.items():
        path = root / name
        path.write_text(f"#!{sys.executable}\n" + textwrap.dedent(body))
        path.chmod(path.stat().st_mode | stat.S_IXUSR)
    return root


def test_bench_generate_with_the_peer_and_int8(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("LLAMA_CPP_DIR", str(_fake_llama_cpp(tmp_path / "llama.cpp")))
    rows = _tiny_generate(tmp_path, "--no-hf", "--cases", "greedy,n8", "--quantize", "int8")
    assert [(r["case"], r["precision"]) for r in rows] == [
        ("greedy", "float32"), ("greedy", "int8"), ("n8", "float32"), ("n8", "int8")]
    for r in rows:
        llama = r["engines"]["llama.cpp"]
        assert llama["gguf"] == {"float32": "f32", "int8": "q8_0"}[r["precision"]]
        # the fake's times: 2 ms for 4 tokens at batch 1; the last (warmed-up) of two lines, 4 ms, at n = 8
        assert llama["tok_s"] == pytest.approx(2000 if r["rows"] == 1 else 8000)
        assert llama["peak_mb"] > 0
        if r["precision"] == "int8" and not bench_generate.pigpt_has_int8():
            assert r["engines"]["pigpt"]["note"] == "int8 not available in this build"
            assert math.isnan(r["ratios"]["pigpt/llama.cpp"])
        else:
            assert r["ratios"]["pigpt/llama.cpp"] > 0
    out = capsys.readouterr().out
    assert "| sampling n = 8 | int8 |" in out


@pytest.mark.skipif(not os.environ.get("LLAMA_CPP_DIR"), reason="LLAMA_CPP_DIR (a llama.cpp build) not set")
def test_bench_generate_with_a_real_llama_cpp_build(tmp_path, capsys):
    rows = _tiny_generate(tmp_path, "--no-hf", "--cases", "greedy,n8", "--bf16")
    assert all(r["engines"]["llama.cpp"]["tok_s"] > 0 for r in rows)


# -- benchmarks/gpu_check.py: what a GPU session runs, rehearsed on the CPU -----------------------------------
gpu_check = load_script("benchmarks/gpu_check.py")


def test_gpu_check_dry_run_writes_every_step(tmp_path):
    """The whole script as CI runs it (a process of its own: it decides about Triton's interpreter before
    triton is imported): every step has results, the kernel drew the torch path's tokens, and the PNG exists."""
    root = Path(gpu_check.__file__).resolve().parents[1]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(root), os.environ.get("PYTHONPATH")]))}
    r = subprocess.run([sys.executable, str(root / "benchmarks" / "gpu_check.py"), "--dry-run", "--out", str(tmp_path)],
                       env=env, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    data = json.loads((tmp_path / "gpu_check.json").read_text())
    steps = {s["step"]: s for s in data["rows"]}
    assert list(steps) == ["tests", "sampling", "generate"] and all(s["ok"] for s in steps.values())
    assert data["meta"]["dry_run"] and data["meta"]["triton_interpreter"] != torch.cuda.is_available()

    counts = steps["tests"]["results"]["counts"]
    assert counts["passed"] > 0 and not counts.get("failed")
    assert "passed" in (tmp_path / "pytest.log").read_text()

    samp = steps["sampling"]["results"]
    cells = {(c["case"], c["B"]) for c in samp["rows"]}
    assert cells == {(case, B) for case in gpu_check.CASES for B in gpu_check.DRY.Bs}
    for c in samp["rows"]:
        assert all(c["engines"][e]["s"] > 0 for e in ("triton", "torch", "transformers")), c
        assert c["floor_s"] > 0 and c["same_tokens"] is True
    assert samp["bandwidth_gb_s"] > 0 and "flashinfer" in samp["notes"]

    gen = steps["generate"]["results"]["rows"]
    assert {(g["case"], g["precision"]) for g in gen} == {
        (c, p) for c in gpu_check.GENERATE_CASES for p in ("float32", "bfloat16")}
    assert all(g["engines"][e]["tok_s"] > 0 for g in gen for e in ("pigpt", "transformers"))
    assert (tmp_path / "gpu_check.png").stat().st_size > 0
    assert "3 of 3 steps ok" in r.stdout


def test_gpu_check_says_which_step_failed_and_goes_on(tmp_path, monkeypatch, capsys):
    def broken(*args):
        raise RuntimeError("CUDA error: an illegal memory access\nsecond line")

    monkeypatch.setattr(gpu_check, "step_sampling", broken)
    monkeypatch.setattr(gpu_check, "step_tests", lambda *a: {"command": "pytest", "returncode": 0, "tail": "",
                                                             "counts": {"passed": 3}, "uncollected_modules": [],
                                                             "failed_tests": []})
    assert gpu_check.main(["--dry-run", "--steps", "sampling,tests", "--out", str(tmp_path)]) == 1
    out = capsys.readouterr().out
    assert "step sampling FAILED: RuntimeError: CUDA error: an illegal memory access\n" in out
    assert "1 of 2 steps ok; failed: sampling" in out
    steps = json.loads((tmp_path / "gpu_check.json").read_text())["rows"]
    assert [(s["step"], s["ok"]) for s in steps] == [("sampling", False), ("tests", True)]  # it went on
    assert steps[0]["error"] == "RuntimeError: CUDA error: an illegal memory access"
    assert (tmp_path / "gpu_check.png").stat().st_size > 0


def test_gpu_check_pytest_summary_and_bad_input(capsys, monkeypatch):
    assert gpu_check.parse_pytest_summary("..F\n= 1 failed, 12 passed, 2 skipped, 3 warnings, 1 error in 9.1s =\n") == {
        "failed": 1, "passed": 12, "skipped": 2, "warnings": 3, "errors": 1}
    assert gpu_check.parse_pytest_summary("no tests ran") == {}
    log = ("______ ERROR collecting tests/test_policy.py ______\nImportError while importing test module\n"
           "E   ModuleNotFoundError: No module named 'trl'\n______ ERROR collecting tests/test_x.py ______\n"
           "E   SyntaxError: invalid syntax\n")
    assert gpu_check.uncollected_modules(log) == ["tests/test_policy.py (ModuleNotFoundError: No module named 'trl')",
                                                  "tests/test_x.py (SyntaxError: invalid syntax)"]
    assert gpu_check.main(["--steps", "tests,bogus"]) == 2
    assert gpu_check.main(["--dry-run", "--bandwidth", "-1"]) == 2
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert gpu_check.main([]) == 2
    err = capsys.readouterr().err.splitlines()
    assert err == ["gpu_check: --steps: unknown step bogus; choose from tests, sampling, generate",
                   "gpu_check: --bandwidth must be a positive number of GB/s, got -1.0",
                   "gpu_check: no CUDA device here; run it on a GPU machine, or pass --dry-run for the small CPU "
                   "rehearsal"]
