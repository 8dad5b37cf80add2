"""The run layer every training loop shares: the output directory, checkpoints, the log, the curves, Ctrl-C,
and the command line's errors and exit codes.

out/
  config.json, model.safetensors   the model, Hugging Face GPT-2 format (GPT.from_pretrained, transformers)
  train_state.pt                   everything an exact --resume needs: step, config, model, optimizer,
                                   data position, RNG states of every process (self-contained, so it never
                                   pairs with an older or newer model file)
  log.jsonl                        one JSON record per step, whatever the loop logs
  loss.png                         the curves of the log (`RunDir.plot`)

Every training mode (next-token prediction in training/lm.py, GRPO in policy/trainer.py) runs on one
skeleton, `execute`, and provides only what is its own: its config (resolved by `resolve_config`), a
`prepare` that builds its model, data and optimizer, and a `Run` subclass with its step and evaluation:

    class LMRun(Run):
        mode, desc = "lm", "training"
        def train_step(self) -> dict: ...      # one optimizer step; returns the log record's own fields
        def evaluate(self) -> dict: ...        # {"val_loss": ...}, before the first step and at the intervals
        def finish(self) -> dict: ...          # plots, the closing line, the summary

    def prepare(args, saved, rd, d, device) -> LMRun: ...   # saved: the train_state a --resume continues
    def main(args): return execute(args, prepare, mode="lm")

    if __name__ == "__main__":
        cli(lambda: main(parse_args()))       # errors -> "error: ..." exit 2; Ctrl-C -> exit 130

`execute` sets up the processes (torchrun: `dist`), opens the run directory, refuses a --resume of another
mode's run, calls prepare, clears or cuts the old run's files only then (after everything that can fail on
bad input), restores the optimizer, step, time and RNG states, and runs `loop`: an evaluation before the first
step, then steps until max_steps or Ctrl-C, one log.jsonl record each, evaluations and checkpoints at their
intervals (and at the end, and on Ctrl-C: save, then stop), then the mode's finish.

Every file is written to a temporary name, fsynced and renamed over the old one (model.checkpoint's
atomic_write), with the usual permissions (0644 under umask 022): a process killed at any moment leaves
the previous or the new version, never half a file.
"""

from __future__ import annotations

import argparse
import gc
import json
import shlex
import signal
import sys
import time
from dataclasses import asdict, dataclass, fields
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


def need(ok: bool, message: str) -> None:
    """A config check: TrainError(message) unless ok."""
    if not ok:
        raise TrainError(message)


# -- the config ---------------------------------------------------------------------------------------------
def given_flags(args, cls) -> dict:
    """The flags given on the command line (argparse's None / [] mean not given) that name fields of `cls`."""
    names = {f.name for f in fields(cls)}
    return {k: v for k, v in vars(args).items() if k in names and v is not None and not (isinstance(v, list) and not v)}


def resolve_config(cls, given: dict, saved: dict | None, out, *, mutable, new, validate,
                   same=lambda key, flag, old: flag == old):
    """A run's config (a dataclass `cls`), checked by `validate`. A new run: new(given). A resumed run: its saved
    config with the given flags on top; a flag that is not `mutable` (it would change the steps already taken)
    and differs from the saved value (`same` decides) is an error."""
    if saved is None:
        cfg = new(given)
    else:
        names = {f.name for f in fields(cls)}
        saved = {k: v for k, v in saved.items() if k in names}
        for k, v in given.items():
            if k not in mutable and not same(k, v, saved.get(k)):
                raise TrainError(f"--{k.replace('_', '-')} {v} conflicts with the run being resumed in {out} (it "
                                 f"used {saved.get(k)}); drop the flag to resume that run, or start a new one with "
                                 "another --out")
        cfg = cls(**{**saved, **given})
    validate(cfg)
    return cfg


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


# -- the run ----------------------------------------------------------------------------------------------
MODES = {  # what train_state.pt's "mode" names, and how such a run is resumed
    "lm": "a next-token training run; resume it without --reward",
    "grpo": "a GRPO run; `python train.py --resume --out DIR` resumes it as one (no other flag needed)",
}


@dataclass(kw_only=True)
class Run:
    """What every run holds, and the hooks a mode fills in (a subclass adds its own model, data and state).
    `cfg` is the mode's config dataclass; it has max_steps, eval_interval, ckpt_interval, save_dtype."""

    mode = "lm"  # recorded in train_state.pt: a --resume of another mode's run is refused
    desc = "training"  # the progress bar's label

    cfg: object
    d: object  # dist.Dist
    device: torch.device
    rd: RunDir
    gpt: torch.nn.Module  # the model trained (unwrapped)
    optimizer: torch.optim.Optimizer
    step: int = 0
    elapsed: float = 0.0  # seconds of training steps, over all sessions of the run
    session_steps: int = 0  # steps and seconds of this invocation
    session_time: float = 0.0
    stopped: bool = False

    def say(self, *a) -> None:
        if self.d.master:
            print(*a, flush=True)

    def checkpoint(self) -> None:
        """train_state.pt (everything an exact --resume needs) and the model files; on every process."""
        state = {"step": self.step, "config": asdict(self.cfg), "model_config": self.gpt.config.to_dict(),
                 "model": self.gpt.state_dict(), "optimizer": self.optimizer.state_dict(), "elapsed": self.elapsed,
                 "mode": self.mode, **self.state()}
        self.rd.save(self.gpt, state, self.d, dtype=self.cfg.save_dtype)

    def restore(self, saved: dict) -> None:
        """Where a resumed run stood: optimizer, step, time, RNG states (the model was loaded by prepare)."""
        self.optimizer.load_state_dict(saved["optimizer"])
        self.step, self.elapsed = saved["step"], saved["elapsed"]
        self.rd.restore_rng(saved, self.d)

    # -- the mode's hooks ----------------------------------------------------------------------------------
    def describe(self, resumed: bool) -> None:
        """Lines about the run before its first step."""

    def train_step(self) -> dict:
        """One optimizer step; returns its log record's fields (step and time are added)."""
        raise NotImplementedError

    def rates(self, seconds: float) -> dict:
        """Fields of the step's record that need its duration (after the step's own, before "time")."""
        return {}

    def evaluate(self) -> dict:
        """The evaluation's fields: logged at step 0 and at every eval_interval (0: at the end only)."""
        raise NotImplementedError

    def started(self, first: dict) -> None:
        """Called with the evaluation before the first step of a new run, once it is logged."""

    def postfix(self, record: dict) -> dict:
        """The progress bar's figures for a step's record."""
        return {}

    def state(self) -> dict:
        """The mode's own entries of train_state.pt."""
        return {}

    def plot(self) -> None:
        """The run's curves from its log; also drawn when an error stops the run part-way."""

    def finish(self) -> dict:
        """After the loop: plots, the closing lines; returns the summary (with "stopped")."""
        raise NotImplementedError


def start(args, prepare, mode: str, rd: RunDir, d, device) -> Run:
    """A run ready for its next step: the saved state read (on --resume), prepare, the old run's files cleared
    (or the log cut back, on --resume), the optimizer / step / RNG restored."""
    saved = rd.load_state() if args.resume else None
    if saved is not None and saved.get("mode", "lm") != mode:
        raise TrainError(f"--resume: {rd.path} holds {MODES.get(saved.get('mode', 'lm'), saved.get('mode'))}")
    run = prepare(args, saved, rd, d, device)
    rd.begin(saved["step"] if saved else None)
    if saved is not None:
        run.restore(saved)
    run.describe(resumed=saved is not None)
    return run


def loop(run: Run) -> None:
    """Steps until max_steps (or Ctrl-C): log each, evaluate and checkpoint at their intervals."""
    from tqdm import tqdm

    cfg, d = run.cfg, run.d
    first = run.evaluate() if run.step == 0 else None  # before the log opens: a failing evaluation leaves no files
    with run.rd.log() as log, StopFlag(enabled=d.world == 1) as stop:
        if first is not None:
            log.write({"step": 0, **first})
            run.started(first)
        bar = tqdm(total=cfg.max_steps, initial=run.step, disable=not d.master, desc=run.desc, dynamic_ncols=True)
        try:
            while run.step < cfg.max_steps and not stop.requested:
                t0 = time.perf_counter()
                record = run.train_step()
                dt = time.perf_counter() - t0
                run.step += 1
                run.elapsed += dt
                run.session_steps += 1
                run.session_time += dt
                record = {"step": run.step, **record, **run.rates(dt), "time": run.elapsed}
                last = run.step == cfg.max_steps
                if last or (cfg.eval_interval and run.step % cfg.eval_interval == 0):
                    record.update(run.evaluate())
                log.write(record)
                bar.update(1)
                bar.set_postfix(**run.postfix(record))
                if run.step % cfg.ckpt_interval == 0 or last or stop.requested:
                    run.checkpoint()
        finally:
            bar.close()
        run.stopped = stop.requested


def execute(args, prepare, mode: str) -> dict:
    """Every run (next-token training, GRPO): processes set up, the run directory opened (and removed again if
    nothing was written), `start` -> `loop` -> the mode's finish, processes torn down."""
    from . import dist  # here, not at the top: dist imports TrainError from this module

    d, device = dist.setup(args.device, args.num_threads)
    run = None
    try:
        with RunDir(args.out, resume=args.resume, overwrite=args.overwrite, master=d.master) as rd:
            run = start(args, prepare, mode, rd, d, device)
            if d.master:
                print(f"checkpoints in {rd.path}/ every {run.cfg.ckpt_interval} steps; if this run stops (Ctrl-C, a "
                      f"kill, a crash), continue it with: {resume_command(rd.path)}", flush=True)
            try:
                loop(run)
            except user_errors() as e:  # e.g. a reward that fails at step k
                if d.master and read_log(rd.path):
                    run.plot()  # the curves of the steps done
                if rd.checkpoint_step is None:
                    raise
                raise TrainError(f"{e}; {rd.resume_hint()}") from None  # how to go on from the checkpoint
            if run.stopped:
                run.say(f"stopped at step {run.step}; saved to {rd.path}. Continue with: {resume_command(rd.path)}")
            return run.finish()
    finally:
        del run  # its DistributedDataParallel wrapper goes before the process group it communicates through
        gc.collect()
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


__all__ = ["TrainError", "need", "given_flags", "resolve_config", "Run", "start", "loop", "execute", "MODES", "RunDir",
           "run_kind", "resume_command", "check_resumable", "Log", "StopFlag", "ArgumentParser", "cli", "read_log",
           "truncate_log",
           "rng_state", "set_rng_state", "STATE_FILE", "LOG_FILE", "PLOT_FILE", "EXIT_USAGE", "EXIT_INTERRUPTED"]
