"""The run layer every training loop shares: the output directory, checkpoints, the log, the curves, Ctrl-C,
and the command line's errors and exit codes.

out/
  config.json, model.safetensors   the model, Hugging Face GPT-2 format (GPT.from_pretrained, transformers)
  train_state.pt                   everything an exact --resume needs: step, config, model, optimizer,
                                   data position, RNG states of every process (self-contained, so it never
                                   pairs with an older or newer model file)
  log.jsonl                        one JSON record per step, whatever the loop logs
  loss.png                         the curves of the log (`RunDir.plot`)

A training loop (next-token prediction in training/lm.py; a GRPO loop the same way) uses it like this:

    def main(args) -> dict:
        d, device = dist.setup(args.device, args.num_threads)
        try:
            with RunDir(args.out, resume=args.resume, overwrite=args.overwrite, master=d.master) as rd:
                saved = rd.load_state() if args.resume else None   # the dict a save() wrote, or None
                ... build the model and optimizer, restore them from `saved` ...
                if saved:
                    rd.restore_rng(saved, d)
                rd.begin(saved["step"] if saved else None)        # new run: clear old files; resume: cut the log
                with rd.log() as log, StopFlag(enabled=d.world == 1) as stop:
                    while step < max_steps and not stop.requested:
                        ... one step ...
                        log.write({"step": step, "reward": r, ...})
                        if step % every == 0 or stop.requested:
                            rd.save(gpt, {"step": step, "config": ..., "optimizer": ...}, d, dtype=...)
                rd.plot(smooth=["reward"], ylabel="reward")
                return {..., "stopped": stop.requested}
        finally:
            dist.teardown(d)

    if __name__ == "__main__":
        cli(lambda: main(parse_args()))       # errors -> "error: ..." exit 2; Ctrl-C -> exit 130

Every file is written to a temporary name, fsynced and renamed over the old one (model.checkpoint's
atomic_write), with the usual permissions (0644 under umask 022): a process killed at any moment leaves
the previous or the new version, never half a file.
"""

from __future__ import annotations

import argparse
import json
import shlex
import signal
import sys
from pathlib import Path

import torch

from pigpt.model.checkpoint import CheckpointError, atomic_write, save_pretrained

STATE_FILE = "train_state.pt"
LOG_FILE = "log.jsonl"
PLOT_FILE = "loss.png"
RUN_FILES = (STATE_FILE, "config.json", "model.safetensors", LOG_FILE, PLOT_FILE)
EXIT_USAGE = 2  # bad input, as sample.py
EXIT_INTERRUPTED = 130  # 128 + SIGINT, the shell's code for a Ctrl-C


class TrainError(ValueError):
    """A training run that can't start as asked, with a message that says why and what to do."""


# -- the output directory ---------------------------------------------------------------------------------
class RunDir:
    """A run's output directory. As a context manager it checks the directory on entry (writable; never
    clobbering a model unless `resume` or `overwrite`; debris of interrupted writes removed) and, when the
    run fails before anything was written, removes the directory again if it created it. Writes happen on
    the master process only; `save` is collective (it gathers every process's RNG state)."""

    def __init__(self, path, *, resume: bool = False, overwrite: bool = False, master: bool = True):
        self.path, self.resume, self.overwrite, self.master = Path(path), resume, overwrite, master
        self.created = False
        self.checkpoint_step: int | None = None  # the step of the checkpoint on disk, once this run knows one

    def __enter__(self) -> "RunDir":
        out = self.path
        if self.resume:
            check_resumable(out)  # before anything is created: a mistyped --out stays absent
        self.created = not out.exists()
        try:
            out.mkdir(parents=True, exist_ok=True)
            probe = out / f".write-probe-{id(self)}"
            probe.touch()
            probe.unlink()
        except OSError as e:
            raise TrainError(f"--out {out}: cannot write there ({e.strerror}); pass a writable directory") from None
        for stale in out.glob(".*.tmp"):  # left by a write that a kill interrupted
            if any(stale.name.startswith(f".{name}.") for name in RUN_FILES):
                stale.unlink(missing_ok=True)
        if not self.resume and not self.overwrite and any((out / f).exists() for f in (STATE_FILE, "config.json")):
            raise TrainError(f"--out {out} already holds a model; pass --resume to continue its run, --overwrite "
                             "to replace it, or another --out")
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is not None and self.created:
            try:
                self.path.rmdir()  # only if still empty: nothing written is ever removed
            except OSError:
                pass

    def load_state(self) -> dict:
        """The dict the last `save` wrote (on CPU)."""
        try:
            return torch.load(self.path / STATE_FILE, map_location="cpu", weights_only=True)
        except Exception as e:
            raise TrainError(f"{self.path / STATE_FILE}: could not read the training state "
                             f"({type(e).__name__}: {e})") from None

    def begin(self, resumed_step: int | None) -> None:
        """A new run removes the files of the run it replaces; a resumed one cuts the log back to its step."""
        self.checkpoint_step = resumed_step
        if not self.master:
            return
        if resumed_step is None:
            for name in RUN_FILES:
                (self.path / name).unlink(missing_ok=True)
        else:
            truncate_log(self.path, resumed_step)

    def save(self, gpt, state: dict, d, dtype=None) -> None:
        """Checkpoint: `state` (+ every process's RNG state) to train_state.pt, then the model in the HF format
        (weights in `dtype`, e.g. "float16"; its text form recorded). Call it on every process."""
        rngs = d.all_gather(rng_state())
        if self.master:
            atomic_write(self.path / STATE_FILE, lambda f: torch.save({**state, "rng": rngs}, f))
            save_pretrained(gpt, self.path, dtype=dtype)
        self.checkpoint_step = state["step"]

    def resume_hint(self) -> str:
        """How to continue this run from its last checkpoint (once there is one)."""
        return f"the checkpoint of step {self.checkpoint_step} is kept; continue with: {resume_command(self.path)}"

    @staticmethod
    def restore_rng(saved: dict, d) -> None:
        """This process's RNG state as saved (with a different process count, the RNGs start afresh)."""
        if len(saved["rng"]) == d.world:
            set_rng_state(saved["rng"][d.rank])

    def log(self) -> "Log":
        """The JSON-lines log, appended to (a no-op on processes other than the master)."""
        return Log(self.path if self.master else None)

    def plot(self, smooth=("loss",), points=("val_loss",), baselines: dict | None = None,
             ylabel: str = "cross-entropy (nats/token)") -> None:
        """loss.png from the log: `smooth` keys per step (raw and a running mean), `points` keys where logged,
        `baselines` {label: value} as dashed lines."""
        if self.master:
            plot_log(self.path, smooth, points, baselines or {}, ylabel)


def check_resumable(out: Path) -> None:
    """A one-line TrainError unless `out` holds a run to --resume."""
    if not out.is_dir():
        raise TrainError(f"--resume: {out} does not exist; train first, or fix --out")
    if not (out / STATE_FILE).exists():
        raise TrainError(f"--resume: {out} holds no {STATE_FILE} to resume; train first, or fix --out")


def run_kind(out: Path) -> str:
    """What the run in `out` is: "grpo" or "lm" (next-token training), from its train_state.pt (memory-mapped:
    the tensors are not read). Raises TrainError when there is nothing to resume."""
    out = Path(out)
    check_resumable(out)
    try:
        state = torch.load(out / STATE_FILE, map_location="cpu", weights_only=True, mmap=True)
    except Exception as e:
        raise TrainError(f"{out / STATE_FILE}: could not read the training state ({type(e).__name__}: {e})") from None
    return state.get("mode", "lm")


def resume_command(out: Path) -> str:
    """The command that continues the run in `out` (train.py tells a GRPO run from a next-token one itself)."""
    return f"python train.py --resume --out {shlex.quote(str(out))}"


def truncate_log(out: Path, step: int) -> None:
    """Keep the records up to `step`: a resumed run logs the later steps again."""
    kept = [r for r in read_log(out) if r.get("step", 0) <= step]
    atomic_write(out / LOG_FILE, lambda f: Path(f).write_text("".join(json.dumps(r) + "\n" for r in kept)))


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
    path = Path(out) / LOG_FILE
    if not path.exists():
        return []
    records = []
    for line in path.read_text().splitlines():
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            pass
    return records


class Log:
    """Appends one JSON record per line, flushed at once (a killed run keeps every finished step)."""

    def __init__(self, out: Path | None):
        self.file = open(Path(out) / LOG_FILE, "a") if out is not None else None

    def write(self, record: dict) -> None:
        if self.file:
            self.file.write(json.dumps(record) + "\n")
            self.file.flush()

    def close(self) -> None:
        if self.file:
            self.file.close()

    def __enter__(self) -> "Log":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def plot_log(out: Path, smooth, points, baselines: dict, ylabel: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    records = read_log(out)
    fig, ax = plt.subplots(figsize=(7, 4), dpi=110)
    colors = iter(f"C{i}" for i in range(10))
    for key in smooth:
        series = [(r["step"], r[key]) for r in records if key in r]
        if not series:
            continue
        steps, values = zip(*series)
        color = next(colors)
        ax.plot(steps, values, lw=0.6, alpha=0.35, color=color)
        k = max(1, len(values) // 50)
        mean = [sum(values[max(0, i - k + 1):i + 1]) / len(values[max(0, i - k + 1):i + 1]) for i in range(len(values))]
        ax.plot(steps, mean, lw=1.5, color=color, label=key.replace("loss", "train") if key == "loss" else key)
    for key in points:
        series = [(r["step"], r[key]) for r in records if key in r]
        if series:
            ax.plot(*zip(*series), "o-", ms=3, color=next(colors), label=key.replace("val_loss", "val"))
    for label, value in baselines.items():
        if value is not None:
            ax.axhline(value, ls="--", color="gray", lw=1, label=f"{label} {value:.2f}")
    ax.set_xlabel("step")
    ax.set_ylabel(ylabel)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    atomic_write(Path(out) / PLOT_FILE, lambda f: fig.savefig(f, format="png"))
    plt.close(fig)


# -- Ctrl-C ---------------------------------------------------------------------------------------------------
class StopFlag:
    """While active, the first Ctrl-C sets `requested` (the loop finishes its step, saves and stops); a second
    one raises KeyboardInterrupt at once. Disabled (plain KeyboardInterrupt) when `enabled` is False, as under
    torchrun, whose processes all receive the signal."""

    def __init__(self, enabled: bool = True):
        self.enabled, self.requested, self.previous = enabled, False, None

    def __enter__(self) -> "StopFlag":
        if self.enabled:
            self.previous = signal.signal(signal.SIGINT, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        if self.previous is not None:
            signal.signal(signal.SIGINT, self.previous)

    def _handle(self, signum, frame):
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True
        print("\nstopping after this step, then saving (Ctrl-C again to abort without saving)", file=sys.stderr)


# -- the command line -----------------------------------------------------------------------------------------
class ArgumentParser(argparse.ArgumentParser):
    """argparse whose errors are one line (TrainError -> `cli` prints it, exit 2), not usage + message."""

    def error(self, message):
        raise TrainError(f"{message} (see --help)")


def user_errors() -> tuple[type[Exception], ...]:
    """The exceptions that mean bad input (each carries a message that says what to do)."""
    from .data import DataError

    return TrainError, DataError, CheckpointError


def execute(args, prepare, loop, finish) -> dict:
    """The shape of every run (next-token training, GRPO): processes set up, the run directory opened (and
    removed again if nothing was written), prepare -> loop -> finish, processes torn down."""
    from . import dist  # here, not at the top: dist imports TrainError from this module

    d, device = dist.setup(args.device, args.num_threads)
    try:
        with RunDir(args.out, resume=args.resume, overwrite=args.overwrite, master=d.master) as rd:
            run = prepare(args, rd, d, device)
            every = getattr(getattr(run, "cfg", None), "ckpt_interval", None)
            if d.master:
                print(f"checkpoints in {rd.path}/" + (f" every {every} steps" if every else "") + "; if this run "
                      f"stops (Ctrl-C, a kill, a crash), continue it with: {resume_command(rd.path)}", flush=True)
            try:
                loop(run)
            except user_errors() as e:  # e.g. a reward that fails at step k: say how to go on from the checkpoint
                if rd.checkpoint_step is None:
                    raise
                raise TrainError(f"{e}; {rd.resume_hint()}") from None
            return finish(run)
    finally:
        dist.teardown(d)


def cli(main) -> None:
    """Run `main()` as a command: bad input prints `error: ...` and exits 2; Ctrl-C exits 130 (after the loop
    saved, when main returns {"stopped": True}; at once, without a traceback, otherwise); else exit 0."""
    try:
        result = main()
    except user_errors() as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(EXIT_USAGE)
    except KeyboardInterrupt:
        print("\ninterrupted: stopped without saving (any earlier checkpoint is intact)", file=sys.stderr)
        sys.exit(EXIT_INTERRUPTED)
    sys.exit(EXIT_INTERRUPTED if isinstance(result, dict) and result.get("stopped") else 0)


__all__ = ["TrainError", "RunDir", "run_kind", "resume_command", "check_resumable", "Log", "StopFlag", "ArgumentParser",
           "execute", "cli", "read_log", "truncate_log",
           "rng_state", "set_rng_state", "STATE_FILE", "LOG_FILE", "PLOT_FILE", "EXIT_USAGE", "EXIT_INTERRUPTED"]
