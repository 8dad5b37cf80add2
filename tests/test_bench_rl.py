"""benchmarks/bench_rl.py still runs: pigpt's GRPO step and TRL's GRPOTrainer, tiny sizes (figures are the
script's to print, not the test's to judge)."""

import json
import sys
from pathlib import Path

import datasets  # noqa: F401  trl and datasets are in the test extra: missing, this fails rather than skips
import trl  # noqa: F401
from conftest import load_script


bench_rl = load_script("benchmarks/bench_rl.py")


def test_the_gpt2_tokenizer_it_gives_trl_encodes_as_pigpt_does():
    from pigpt.model import get_tokenizer

    tok = bench_rl.gpt2_tokenizer()
    for text in bench_rl.PROMPTS + ["  x = 1  # café\n\n<|endoftext|>"]:
        assert tok(text)["input_ids"] == get_tokenizer().encode(text, allowed_special="all")
    assert len(tok) == 50257 and tok.eos_token_id == 50256


def test_bench_rl_times_both_trainers_and_counts_their_completions(tmp_path, capsys):
    out, png = tmp_path / "rl.json", tmp_path / "rl.png"
    rows = bench_rl.main(["--prompts", "2", "--generations", "2", "--new-tokens", "3", "--layers", "1",
                          "--width", "16", "--heads", "1", "--repeats", "1", "--threads", "1", "--out", str(out),
                          "--png", str(png), "--variant", "--load", "one"])
    assert [r["engine"] for r in rows] == ["TRL", "pigpt", "pigpt --no-batch-invariant"]
    for r in rows:
        assert r["completions_per_step"] == [4] and r["completions_ok"]  # 2 prompts x 2, every timed step
        assert len(r["seconds"]) == 1 and r["median_s"] > 0 and r["peak_mb"] > 0
        assert set(r["median_split_s"]) == {"generate", "score", "update"} and r["median_split_s"]["generate"] > 0
        assert 1 <= r["mean_completion_tokens"] <= 3
    assert rows[0]["speedup_vs_trl"] == 1.0 and rows[1]["speedup_vs_trl"] > 0
    data = json.loads(out.read_text())
    assert data["meta"]["prompts"] == 2 and len(data["rows"]) == 3 and png.stat().st_size > 0
    assert data["meta"]["invariant_vs_default"] > 0
    printed = capsys.readouterr().out
    assert "| pigpt |" in printed and "runs at" in printed and "--no-batch-invariant" in printed
    # --load: each step timed again beside a busy process, the quiet figures kept apart
    assert all(r["slowdown"]["one"] > 0 for r in rows) and "one busy process (one core)" in printed
