"""The benchmark scripts still run (figures are theirs to print, not the tests' to judge)."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

import bench_linear  # noqa: E402


def test_bench_linear_prints_a_row_per_dtype_and_row_count(monkeypatch, capsys):
    monkeypatch.setattr(sys, "argv", ["bench_linear.py", "--rows", "1,3", "--repeats", "1", "--threads", "1"])
    bench_linear.main()
    rows = [line for line in capsys.readouterr().out.splitlines() if line.startswith("| float") or
            line.startswith("| bfloat")]
    assert [r.split("|")[1:3] for r in rows] == [
        [" float32 ", " 1 "], [" float32 ", " 3 "], [" bfloat16 ", " 1 "], [" bfloat16 ", " 3 "]]
    assert all(r.rstrip().endswith("x |") for r in rows)  # a measured speed-up in every row
