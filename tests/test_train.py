"""train.py: loss falls, checkpoints load in transformers, exact resume, SIGKILL safety, torchrun == one process,
and clear errors for bad input. Tiny preset on ~130 KB of stdlib files; one torch thread per run (a loaded
2-core machine makes multi-threaded tiny ops crawl)."""

import json
import os
import shutil
import signal
import subprocess
import sys
import sysconfig
import time
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]

from pigpt import train
from pigpt.model import EOT_TOKEN, GPT, GPTConfig, get_tokenizer  # noqa: E402
from pigpt.training import data as datalib  # noqa: E402
from pigpt.training import lm  # noqa: E402
from pigpt.training.data import DataError  # noqa: E402
from pigpt.training.loss import LossModel  # noqa: E402
from pigpt.training.run import TrainError  # noqa: E402

STDLIB = Path(sysconfig.get_paths()["stdlib"])
CORPUS_FILES = ["json/__init__.py", "json/decoder.py", "json/encoder.py", "json/scanner.py", "json/tool.py",
                "textwrap.py", "string.py", "bisect.py", "heapq.py", "glob.py", "fnmatch.py", "copy.py"]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    """A small code corpus (~130 KB) copied from this interpreter's stdlib, and a token cache directory."""
    root = tmp_path_factory.mktemp("corpus")
    for name in CORPUS_FILES:
        dest = root / name.replace("/", "_")
        shutil.copyfile(STDLIB / name, dest)
    return root, tmp_path_factory.mktemp("cache")


@pytest.fixture(autouse=True)
def _keep_threads():
    n = torch.get_num_threads()
    yield
    torch.set_num_threads(n)


def tiny_args(corpus, out, *extra):
    data, cache = corpus
    return ["--preset", "tiny", "--data", str(data), "--cache-dir", str(cache), "--out", str(out),
            "--num-threads", "1", "--dtype", "float32", *map(str, extra)]


def step_losses(out):
    return {r["step"]: r["loss"] for r in map(json.loads, (Path(out) / "log.jsonl").read_text().splitlines())
            if "loss" in r}


def val_losses(out):
    return {r["step"]: r["val_loss"] for r in map(json.loads, (Path(out) / "log.jsonl").read_text().splitlines())
            if "val_loss" in r}


# -- the loss ----------------------------------------------------------------------------------------------------
def test_fused_head_loss_matches_cross_entropy():
    """The chunked head + cross-entropy gives F.cross_entropy(gpt(idx))'s loss and gradients (float32)."""
    torch.manual_seed(0)
    gpt = GPT(GPTConfig(block_size=16, n_layer=2, n_head=2, n_embd=32)).train()
    x, y = torch.randint(0, 50257, (3, 16)), torch.randint(0, 50257, (3, 16))
    ref = F.cross_entropy(gpt(x).flatten(0, 1), y.flatten())
    ref.backward()
    ref_grads = {n: p.grad.clone() for n, p in gpt.named_parameters()}
    gpt.zero_grad()
    import pigpt.training.loss as lossmod

    old = lossmod.CHUNK_ROWS
    lossmod.CHUNK_ROWS = 7  # 48 rows: six full chunks and a ragged one
    try:
        loss = LossModel(gpt)(x, y)
        with torch.no_grad():
            loss_nograd = LossModel(gpt)(x, y)
    finally:
        lossmod.CHUNK_ROWS = old
    loss.backward()
    assert abs(loss.item() - ref.item()) < 1e-5 and abs(loss_nograd.item() - ref.item()) < 1e-5
    for name, p in gpt.named_parameters():  # relative to the largest gradient entry of each tensor
        err = (p.grad - ref_grads[name]).abs().max() / ref_grads[name].abs().max()
        assert err < 1e-4, (name, err.item())
    # Under bf16 autocast the matmuls round to 8 mantissa bits; the softmax stays float32.
    gpt.zero_grad()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = LossModel(gpt)(x, y)
    loss.backward()
    assert abs(loss.item() - ref.item()) < 1e-2
    for name, p in gpt.named_parameters():
        err = (p.grad - ref_grads[name]).abs().max() / ref_grads[name].abs().max()
        assert err < 5e-2, (name, err.item())


def test_learning_rate_schedule():
    cfg = lm.TrainConfig(lr=1.0, min_lr=0.1, warmup_steps=10, lr_decay_steps=110)
    lrs = [lm.learning_rate(s, cfg) for s in range(130)]
    assert lrs[0] == pytest.approx(0.1) and lrs[9] == pytest.approx(1.0)  # linear warmup
    assert lrs[60] == pytest.approx(0.55)  # half-way down the cosine
    assert lrs[110] == lrs[129] == 0.1
    assert all(a >= b for a, b in zip(lrs[9:], lrs[10:]))


# -- data --------------------------------------------------------------------------------------------------------
def test_data_split_cache_and_windows(corpus, tmp_path):
    data, _ = corpus
    source = datalib.find_source(str(data))
    train_units, val_units = datalib.split_units(source.units, 0.2)
    assert val_units and train_units and not {u.key for u in train_units} & {u.key for u in val_units}
    assert sorted(u.key for u in train_units + val_units) == sorted(p.name for p in source.files)
    assert datalib.split_units(source.units, 0.2)[1] == val_units  # the same split every time
    cache = datalib.prepare(str(data), 0.2, tmp_path, progress=False)
    stamp = (cache / "meta.json").stat().st_mtime_ns
    assert datalib.prepare(str(data), 0.2, tmp_path, progress=False) == cache  # the second run reads the cache
    assert (cache / "meta.json").stat().st_mtime_ns == stamp
    c = datalib.load(cache)
    enc = get_tokenizer()
    # The train stream is the train files' tokens, each followed by <|endoftext|>, in order.
    expected = []
    for u in train_units:
        expected += enc.encode_ordinary((data / u.key).read_text()) + [EOT_TOKEN]
    assert c.train.read(0, len(c.train)).tolist() == expected
    assert c.meta["unigram_entropy"] == pytest.approx(
        datalib.unigram_entropy(torch.bincount(torch.tensor(expected)).numpy()))
    # One epoch visits every window exactly once; the position is the whole state.
    w = datalib.Windows(c.train, 64, seed=3)
    first = w.next_starts(5)
    n = (len(c.train) - 1 - int(first.min() % 64)) // 64
    rest = w.next_starts(n - 5)
    epoch = sorted(first.tolist() + rest.tolist())
    assert len(set(epoch)) == n and w.state_dict()["epoch"] == 1 and w.state_dict()["index"] == 0
    w2 = datalib.Windows(c.train, 64, seed=3)
    w2.load_state_dict({"epoch": 0, "index": 5, "seed": 3})
    assert w2.next_starts(n - 5).tolist() == rest.tolist()


# -- training ----------------------------------------------------------------------------------------------------
def test_loss_falls_and_checkpoint_loads_in_transformers(corpus, tmp_path):
    from transformers import GPT2LMHeadModel

    out = tmp_path / "run"
    bf16 = torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported()
    summary = train.main(tiny_args(corpus, out, "--max-steps", 30, "--eval-interval", 15,
                                   "--dtype", "bfloat16" if bf16 else "float32"))
    val = val_losses(out)
    losses = list(step_losses(out).values())
    assert val[30] < val[0] - 1.5, val  # from ~10.8 (uniform) down by far more than noise
    assert sum(losses[-5:]) / 5 < sum(losses[:5]) / 5 - 1.5
    assert summary["step"] == 30 and summary["val_loss"] == pytest.approx(val[30])
    assert (out / "loss.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert len(summary["samples"]) == 1 and summary["samples"][0]
    # The saved model: transformers and pigpt give the same logits.
    ours = GPT.from_pretrained(out)
    hf = GPT2LMHeadModel.from_pretrained(out).eval()
    idx = torch.randint(0, 50257, (2, 32), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert (ours(idx) - hf(idx).logits).abs().max().item() < 1e-4
    # ... and they are the weights the run ended with (train_state.pt holds the same model).
    state = torch.load(out / "train_state.pt", weights_only=True)
    assert state["step"] == 30
    assert all(torch.equal(v, ours.state_dict()[k]) for k, v in state["model"].items())


def test_resume_gives_the_same_losses_as_a_straight_run(corpus, tmp_path):
    """8 steps straight == 4 steps, stop, --resume to 8: dropout on, so the RNG state must come back too."""
    common = ("--dropout", 0.1, "--eval-interval", 4, "--samples", 0)
    straight, split = tmp_path / "straight", tmp_path / "split"
    train.main(tiny_args(corpus, straight, "--max-steps", 8, *common))
    train.main(tiny_args(corpus, split, "--max-steps", 4, "--lr-decay-steps", 8, *common))
    torch.manual_seed(12345)  # the resumed run must not depend on whatever the process did in between
    train.main(tiny_args(corpus, split, "--resume", "--max-steps", 8, "--samples", 0))
    a, b = step_losses(straight), step_losses(split)
    assert list(a) == list(b) == list(range(1, 9))
    assert all(abs(a[s] - b[s]) <= 1e-6 for s in a), (a, b)
    assert val_losses(split) == pytest.approx(val_losses(straight), abs=1e-6)


def test_sigkill_leaves_a_loadable_resumable_checkpoint(corpus, tmp_path):
    """Kill -9 a run that checkpoints every step; the checkpoint loads, and resuming it replays the same losses."""
    out = tmp_path / "run"
    cmd = [sys.executable, str(ROOT / "train.py"),
           *tiny_args(corpus, out, "--max-steps", 1000, "--ckpt-interval", 1, "--eval-interval", 1000)]
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + 60
        while time.time() < deadline and proc.poll() is None:
            if (out / "log.jsonl").exists() and len(step_losses_lenient(out)) >= 6:
                break
            time.sleep(0.01)
        assert proc.poll() is None, "the run ended before it could be killed"
        time.sleep(0.013)  # land somewhere inside the next step or checkpoint write
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    finally:
        if proc.poll() is None:
            proc.kill()
    logged = step_losses_lenient(out)  # what the killed run computed, perhaps beyond its last checkpoint
    GPT.from_pretrained(out)  # the model files are whole
    saved = torch.load(out / "train_state.pt", weights_only=True)["step"]
    assert saved >= 5 and max(logged) >= saved
    train.main(tiny_args(corpus, out, "--resume", "--max-steps", max(logged) + 2, "--samples", 0))
    resumed = step_losses(out)
    assert list(resumed) == list(range(1, max(logged) + 3))
    assert all(abs(resumed[s] - logged[s]) <= 1e-6 for s in logged), (saved, logged, resumed)
    assert not list(out.glob(".*.tmp"))  # debris of the interrupted write is cleared


def step_losses_lenient(out):
    """Steps in a log that a kill may have cut mid-line."""
    records = []
    for line in (Path(out) / "log.jsonl").read_text().splitlines():
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            pass
    return {r["step"]: r["loss"] for r in records if "loss" in r}


def test_torchrun_two_processes_match_one(corpus, tmp_path):
    """torchrun --nproc_per_node=2 (gloo) with grad_accum 2 == one process with grad_accum 2: the same global batch."""
    common = ("--max-steps", 3, "--grad-accum", 2, "--dtype", "float32", "--eval-interval", 3, "--samples", 0)
    single, multi = tmp_path / "single", tmp_path / "multi"
    train.main(tiny_args(corpus, single, *common))
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           str(ROOT / "train.py"), *tiny_args(corpus, multi, *common)]
    res = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr[-3000:]
    a, b = step_losses(single), step_losses(multi)
    assert list(a) == list(b) == [1, 2, 3]
    assert all(abs(a[s] - b[s]) <= 1e-5 * abs(a[s]) for s in a), (a, b)  # float32 sums in another order
    assert val_losses(multi) == pytest.approx(val_losses(single), rel=1e-5)
    GPT.from_pretrained(multi)


# -- bad input ---------------------------------------------------------------------------------------------------
def test_bad_data_is_reported_before_any_work(corpus, tmp_path):
    with pytest.raises(DataError, match="no such file or directory"):
        train.main(tiny_args(corpus, tmp_path / "a") + ["--data", str(tmp_path / "missing")])
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="holds no files"):
        train.main(tiny_args(corpus, tmp_path / "b") + ["--data", str(tmp_path / "empty")])
    with pytest.raises(DataError, match="matched no files"):
        train.main(tiny_args(corpus, tmp_path / "c") + ["--data", str(tmp_path / "*.nothing")])
    short = tmp_path / "short.txt"
    short.write_text("print('hello world')\n" * 3)
    with pytest.raises(DataError, match="fewer than one block"):
        train.main(tiny_args(corpus, tmp_path / "d") + ["--data", str(short)])
    assert not (tmp_path / "d" / "train_state.pt").exists()


def test_bad_output_and_resume_are_reported(corpus, tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    with pytest.raises(TrainError, match="cannot write there"):
        train.main(tiny_args(corpus, blocker / "out"))
    with pytest.raises(TrainError, match="fresh does not exist; train first, or fix --out"):
        train.main(tiny_args(corpus, tmp_path / "fresh", "--resume"))
    assert not (tmp_path / "fresh").exists()  # a mistyped --out is not created
    (tmp_path / "empty").mkdir()
    with pytest.raises(TrainError, match="no train_state.pt to resume"):
        train.main(tiny_args(corpus, tmp_path / "empty", "--resume"))
    out = tmp_path / "run"
    train.main(tiny_args(corpus, out, "--max-steps", 2, "--samples", 0))
    before = (out / "train_state.pt").read_bytes()
    with pytest.raises(TrainError, match="already holds a model"):
        train.main(tiny_args(corpus, out, "--max-steps", 2))
    with pytest.raises(TrainError, match="--n-embd 64 conflicts with the run being resumed"):
        train.main(tiny_args(corpus, out, "--resume", "--max-steps", 4, "--n-embd", 64))
    with pytest.raises(TrainError, match="--lr 0.1 conflicts"):
        train.main(tiny_args(corpus, out, "--resume", "--lr", 0.1))
    assert (out / "train_state.pt").read_bytes() == before  # nothing was lost
    with pytest.raises(TrainError, match="can't be set with --init"):
        train.main(tiny_args(corpus, tmp_path / "ft", "--init", str(out), "--n-layer", 3))
    with pytest.raises(TrainError, match="longer than the model's context"):
        train.main(tiny_args(corpus, tmp_path / "ft", "--init", str(out), "--block-size", 64))


def test_fine_tune_from_a_checkpoint(corpus, tmp_path, tiny_checkpoint):
    """--init DIR starts from that model's weights: the step-0 val loss is that model's, not a fresh init's."""
    path, hf = tiny_checkpoint  # transformers' random GPT-2, 2 layers, width 64, context 128
    out = tmp_path / "ft"
    train.main(tiny_args(corpus, out, "--init", str(path), "--max-steps", 2, "--samples", 0, "--dtype", "float32"))
    c = datalib.load(datalib.prepare(str(corpus[0]), 0.05, corpus[1], progress=False))
    starts = datalib.eval_starts(c.val, 32, 2 * 4)
    tokens = torch.from_numpy(datalib.Windows(c.val, 32, 0).batch(starts))
    with torch.no_grad():
        logits = hf(tokens[:, :-1]).logits
        ref = F.cross_entropy(logits.flatten(0, 1), tokens[:, 1:].flatten()).item()
    assert val_losses(out)[0] == pytest.approx(ref, rel=1e-5)
    assert json.loads((out / "config.json").read_text())["n_embd"] == 64


def test_cli_prints_a_clear_error(tmp_path):
    res = subprocess.run([sys.executable, str(ROOT / "train.py"), "--data", str(tmp_path / "nope"),
                          "--out", str(tmp_path / "o")], capture_output=True, text=True, timeout=120)
    assert res.returncode == 2 and res.stderr.startswith("error: --data") and "Traceback" not in res.stderr
    assert len(res.stderr.strip().splitlines()) == 1
