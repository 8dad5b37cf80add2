"""The output directory of a training run: checkpoints, training state, the JSON-lines log and the loss plot.

out/
  config.json, model.safetensors   the model, Hugging Face GPT-2 format (GPT.from_pretrained, transformers)
  train_state.pt                   everything an exact --resume needs: step, config, model, optimizer,
                                   data position, RNG states (self-contained, so it never pairs with an
                                   older or newer model file)
  log.jsonl                        one record per step: loss, lr, tokens/s, MFU, and val_loss when evaluated
  loss.png                         the loss curves

Every file is written to a temporary name, fsynced and renamed over the old one (model.checkpoint's
atomic_write): a process killed at any moment leaves the previous or the new version, never half a file.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

import torch

from model.checkpoint import atomic_write

STATE_FILE = "train_state.pt"
LOG_FILE = "log.jsonl"
PLOT_FILE = "loss.png"
RUN_FILES = (STATE_FILE, "config.json", "model.safetensors", LOG_FILE, PLOT_FILE)


class TrainError(ValueError):
    """A training run that can't start as asked, with a message that says why and what to do."""


def check_out_dir(out: Path, resume: bool, overwrite: bool) -> None:
    """Fail early when `out` can't be written, or would clobber a run nobody asked to replace."""
    try:
        out.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=out, prefix=".write-probe-"):
            pass
    except OSError as e:
        raise TrainError(f"--out {out}: cannot write there ({e.strerror}); pass a writable directory") from None
    for stale in out.glob(".*.tmp"):  # left by a write that a kill interrupted
        if any(stale.name.startswith(f".{name}.") for name in RUN_FILES):
            stale.unlink(missing_ok=True)
    if resume:
        if not (out / STATE_FILE).exists():
            raise TrainError(f"--resume: {out} holds no {STATE_FILE} to resume; train first, or fix --out")
    elif not overwrite and any((out / f).exists() for f in (STATE_FILE, "config.json")):
        raise TrainError(
            f"--out {out} already holds a model; pass --resume to continue its run, --overwrite to replace it, "
            "or another --out"
        )


def clear_run(out: Path) -> None:
    for name in RUN_FILES:
        (out / name).unlink(missing_ok=True)


def load_state(out: Path) -> dict:
    try:
        return torch.load(out / STATE_FILE, map_location="cpu", weights_only=True)
    except Exception as e:
        raise TrainError(f"{out / STATE_FILE}: could not read the training state ({type(e).__name__}: {e})") from None


def save_checkpoint(out: Path, gpt, state: dict) -> None:
    """The training state first, then the model files: each is complete, whatever moment a kill lands."""
    atomic_write(out / STATE_FILE, lambda f: torch.save(state, f))
    gpt.save_pretrained(out)


# -- RNG ------------------------------------------------------------------------------------------------------
def rng_state() -> dict:
    state = {"cpu": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["cpu"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])


# -- the log --------------------------------------------------------------------------------------------------
def read_log(out: Path) -> list[dict]:
    """The log's records; a line cut short by a kill is dropped."""
    path = out / LOG_FILE
    if not path.exists():
        return []
    records = []
    for line in path.read_text().splitlines():
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            pass
    return records


def truncate_log(out: Path, step: int) -> None:
    """Keep the records up to `step`: a resumed run logs the later steps again."""
    kept = [r for r in read_log(out) if r.get("step", 0) <= step]
    atomic_write(out / LOG_FILE, lambda f: Path(f).write_text("".join(json.dumps(r) + "\n" for r in kept)))


class Log:
    def __init__(self, out: Path):
        self.file = open(out / LOG_FILE, "a")

    def write(self, record: dict) -> None:
        self.file.write(json.dumps(record) + "\n")
        self.file.flush()

    def close(self) -> None:
        self.file.close()


def plot_losses(out: Path, unigram_entropy: float | None = None) -> None:
    """loss.png: train loss per step (and its running mean), val loss at each eval, the unigram baseline."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    records = read_log(out)
    train = [(r["step"], r["loss"]) for r in records if "loss" in r]
    val = [(r["step"], r["val_loss"]) for r in records if "val_loss" in r]
    fig, ax = plt.subplots(figsize=(7, 4), dpi=110)
    if train:
        steps, losses = zip(*train)
        ax.plot(steps, losses, lw=0.6, alpha=0.35, color="C0")
        k = max(1, len(losses) // 50)
        smooth = [sum(losses[max(0, i - k + 1):i + 1]) / len(losses[max(0, i - k + 1):i + 1]) for i in range(len(losses))]
        ax.plot(steps, smooth, lw=1.5, color="C0", label="train")
    if val:
        ax.plot(*zip(*val), "o-", ms=3, color="C1", label="val")
    if unigram_entropy:
        ax.axhline(unigram_entropy, ls="--", color="gray", lw=1, label=f"unigram entropy {unigram_entropy:.2f}")
    ax.set_xlabel("step")
    ax.set_ylabel("cross-entropy (nats/token)")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    atomic_write(out / PLOT_FILE, lambda f: fig.savefig(f, format="png"))
    plt.close(fig)


__all__ = ["TrainError", "check_out_dir", "clear_run", "load_state", "save_checkpoint", "rng_state",
           "set_rng_state", "read_log", "truncate_log", "Log", "plot_losses"]
