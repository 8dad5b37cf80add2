"""train.py's rough edges: one-line errors with exit 2, Ctrl-C (tokenising: exit 130; training: save, then exit 130),
binary and non-UTF-8 data reported, no empty --out left behind, normal file permissions, MFU <= 100%."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]

from pigpt import train
from pigpt.training import data as datalib  # noqa: E402
from pigpt.training import perf  # noqa: E402
from pigpt.training.data import DataError  # noqa: E402
from pigpt.training.run import cli  # noqa: E402

TEXT = "The quick brown fox jumps over the lazy dog. " * 40 + "\n"


@pytest.fixture
def corpus(tmp_path):
    """Text files, one binary file and one Latin-1 file (not UTF-8)."""
    root = tmp_path / "data"
    root.mkdir()
    for i in range(6):
        (root / f"t{i}.txt").write_text(TEXT.replace("fox", f"fox {i}"))
    (root / "blob.bin").write_bytes(b"\x00\x01\x02" * 100)
    (root / "latin1.txt").write_bytes("Caf\xe9 cr\xe8me, na\xefve fa\xe7ade.\n".encode("latin-1") * 20)
    return root, tmp_path / "cache"


def tiny(corpus, out, *extra):
    data, cache = corpus
    return ["--preset", "tiny", "--data", str(data), "--cache-dir", str(cache), "--out", str(out),
            "--num-threads", "1", "--dtype", "float32", *map(str, extra)]


def run_cli(argv, capsys) -> tuple[int, str]:
    """train.py's command line in this process: (exit code, stderr)."""
    with pytest.raises(SystemExit) as e:
        cli(lambda: train.main(argv))
    return e.value.code, capsys.readouterr().err


def test_bad_flags_are_one_line_and_exit_2(tmp_path, capsys):
    out = tmp_path / "new" / "out"
    res = subprocess.run([sys.executable, str(ROOT / "train.py"), "--init", "scratch", "--n-embd", "30", "--n-head", "4",
                          "--out", str(out)],
                         capture_output=True, text=True, timeout=300)
    assert res.returncode == 2 and "Traceback" not in res.stderr, res.stderr
    assert res.stderr.strip().splitlines() == [res.stderr.strip()] and "multiple of --n-head" in res.stderr
    assert not out.exists()  # the directory the failed run created is gone again
    for argv, message in [(["--num-threads", "0"], "--num-threads must be >= 1"),
                          (["--max-steps", "many"], "invalid int value"),
                          (["--top-p", "1.5"], "--top-p must be in (0, 1]"),
                          (["--dropout", "1"], "--dropout must be in [0, 1)")]:
        code, err = run_cli(argv + ["--init", "scratch", "--out", str(out)], capsys)
        assert code == 2 and err.startswith("error: ") and message in err and err.count("\n") == 1, err
        assert not out.exists()


def test_binary_and_non_utf8_files_are_reported(corpus, tmp_path, capsys):
    data, cache = corpus
    with pytest.raises(DataError, match="binary"):
        datalib.prepare(str(data / "blob.bin"), 0.05, cache, progress=False)
    meta = json.loads((datalib.prepare(str(data), 0.2, cache, progress=False) / "meta.json").read_text())
    notes = datalib.describe_files(meta)
    assert any("skipped 1 binary file(s)" in n and "blob.bin" in n for n in notes), notes
    assert any("1 file(s) are not valid UTF-8" in n and "latin1.txt" in n for n in notes), notes
    code, err = run_cli(tiny(corpus, tmp_path / "bin", "--data", data / "blob.bin"), capsys)
    assert code == 2 and "binary" in err and "0 tokens" not in err
    assert not (tmp_path / "bin").exists()


def test_written_files_have_normal_permissions_and_mfu_is_at_most_100(corpus, tmp_path, capsys):
    old = os.umask(0o022)
    try:
        summary = train.main(tiny(corpus, tmp_path / "run", "--max-steps", 2, "--samples", 0, "--val-fraction", 0.2))
    finally:
        os.umask(old)
    printed = capsys.readouterr().out
    assert "note: skipped 1 binary file(s)" in printed and "not valid UTF-8" in printed
    for name in ("config.json", "model.safetensors", "train_state.pt", "log.jsonl", "loss.png"):
        assert (tmp_path / "run" / name).stat().st_mode & 0o777 == 0o644, name
    assert 0 < summary["mfu"] <= 1
    assert all(r.get("mfu", 0) <= 1 for r in map(json.loads, (tmp_path / "run" / "log.jsonl").read_text().splitlines()))
    peak = perf.Peak(torch.device("cpu"), torch.float32)
    peak.flops = 1e9  # a probe that ran while the machine was busy
    assert peak.mfu(3e9) == 1.0 and peak.flops == 3e9 and peak.mfu(1.5e9) == 0.5


def test_ctrl_c_while_tokenising_exits_130_cleanly(corpus, tmp_path, capsys, monkeypatch):
    """A Ctrl-C that lands in the tokeniser: one message, exit 130, no half-written cache, no empty --out."""
    data, cache = corpus
    real = datalib.tokenize_corpus

    def interrupted(*a, **k):
        real(*a, **k)  # the shards are written, then the signal lands before the cache is complete
        raise KeyboardInterrupt

    monkeypatch.setattr(datalib, "tokenize_corpus", interrupted)
    code, err = run_cli(tiny(corpus, tmp_path / "out"), capsys)
    assert code == 130 and "interrupted" in err and "Traceback" not in err
    assert not (tmp_path / "out").exists() and not list(cache.glob("*"))


def test_ctrl_c_while_training_saves_then_exits_130(corpus, tmp_path):
    out = tmp_path / "run"
    cmd = [sys.executable, str(ROOT / "train.py"), *tiny(corpus, out, "--max-steps", 100000, "--eval-interval", 100000)]
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.time() + 120
        while time.time() < deadline and proc.poll() is None:
            log = out / "log.jsonl"
            if log.exists() and log.read_text().count("\n") >= 4:
                break
            time.sleep(0.05)
        assert proc.poll() is None, proc.communicate()[1][-2000:]
        proc.send_signal(signal.SIGINT)
        stdout, stderr = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130, stderr[-2000:]
    assert "Traceback" not in stderr and "stopping after this step" in stderr
    steps = [r["step"] for r in map(json.loads, (out / "log.jsonl").read_text().splitlines()) if "loss" in r]
    saved = torch.load(out / "train_state.pt", weights_only=True)["step"]
    assert saved == steps[-1] >= 3 and f"stopped at step {saved}" in stdout


def test_a_short_run_under_a_long_preset_gets_a_shorter_warmup(tmp_path):
    """`python train.py --max-steps 10` under the default preset (warmup 20): a tenth of the run, not an error;
    an explicit --warmup-steps that doesn't fit is still one."""
    from pigpt.training import lm
    from pigpt.training.run import TrainError

    def resolve(*flags):
        return lm.resolve_config(train.build_parser().parse_args(list(flags)), None, tmp_path)

    assert resolve("--max-steps", "10").warmup_steps == 1
    assert resolve().warmup_steps == 20 and resolve().max_steps == 750  # the shipped recipe, unchanged
    assert resolve("--preset", "stdlib", "--max-steps", "20").warmup_steps == 2
    with pytest.raises(TrainError, match="--warmup-steps 30 must be within"):
        resolve("--max-steps", "20", "--warmup-steps", "30")
