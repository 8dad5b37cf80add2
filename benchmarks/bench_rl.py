"""One GRPO step: pigpt's (policy/trainer.py, `train.py --reward`) against TRL's GRPOTrainer, same model.

    python benchmarks/bench_rl.py                        # 8 prompts x 8 rollouts x 32 tokens, random 4 x 128 GPT-2
    python benchmarks/bench_rl.py --repeats 5 --trl-defaults --profile
    python benchmarks/bench_rl.py --model default  # a trained model (GPT-2's vocabulary) instead

The model: GPT-2's architecture and 50257-token vocabulary with random weights (4 layers x 128 wide by
default), written once by transformers' save_pretrained into a temporary directory; pigpt loads it with
--init DIR and TRL with the path, so both start from the same weights. The tokenizer is GPT-2's, built from
the BPE files pigpt uses (no network), and both encode the prompts to the same ids.

What is matched, and how (TRL's names first):
  - fp32 on both (bf16=False), no gradient checkpointing, dropout off (disable_dropout=True; pigpt: eval());
  - a step = P prompts x G completions generated and trained on once: per_device_train_batch_size = P*G,
    gradient_accumulation_steps = steps_per_generation = num_iterations = 1 (pigpt: --prompts-per-step P,
    --num-generations G, --num-iterations 1); so neither computes "old" log-probs;
  - sampling temperature 1, top_k 0, top_p 1, repetition_penalty 1, max_completion_length, EOS stops both;
  - loss_type "dapo", beta (a frozen reference model scored every step in both), epsilon 0.2,
    scale_rewards "group", learning rate, AdamW (betas 0.9 / 0.999, weight decay 0), max_grad_norm 1;
  - the same reward function (`e_density` below, TRL's signature): TRL gets the function, pigpt loads it
    from this file with --reward path.py:function, as a user would;
  - TRL: report_to "none", no eval, no saving, logging_steps past the end, no tqdm.
TRL with its own CPU defaults (bf16 autocast, gradient checkpointing, dropout on) is a second column with
--trl-defaults.

Timing: every engine lives in a process of its own (harness.Worker: TRL's accelerate state is one per
process, so two TRL configurations can't share one, and each engine's peak RSS is its own), and
harness.interleave drives them as TRL, pigpt, TRL, pigpt, ... after an untimed warm-up round; the ratio is
the median of per-round ratios. Each step is timed inside its worker, so the pipe is not in it. TRL's
train() runs in a thread held at every step's start by a callback until the benchmark lets exactly one
optimizer step through (on_step_begin .. on_step_end: generation, rewards, reference and policy forwards,
loss, backward, clipping, AdamW). pigpt's step is `policy.trainer.rl_step` on a run that the training
skeleton (`training.run.start` with `policy.trainer.prepare`) built from the pigpt-train command's own
parser (`pigpt.train.build_parser`). Splits: pigpt's rl_step reports generate (with
the rewards) / score / update; TRL's come from its own profiling contexts (generate =
transformers.generate; score = the rest of _prepare_inputs, i.e. rewards and the reference forward, plus
compute_loss, i.e. the policy forward and the loss; update = the rest of the step: backward, clipping,
AdamW). Each step's completions are counted where the reward function sees them.

--profile adds torch.profiler's view of one more pigpt step (top ops by self CPU time). Writes a JSON of
every step and a PNG of the median step split (--out, --png).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

from pigpt import benchmarking as harness

import torch  # noqa: E402

PROMPTS = [  # short code and prose openings; the first P are used (cycled if P > len)
    "def fibonacci(n):",
    "The capital of France is",
    "import numpy as np\n",
    "Once upon a time",
    "class Stack:",
    "The weather today is",
    "for i in range(10):",
    "In the beginning",
]
SPLIT = ("generate", "score", "update")


def e_density(completions, **kwargs):
    """The reward of both trainers: the share of a completion's characters that are 'e' (cheap, deterministic,
    and it spreads across a group, so advantages are not all zero)."""
    return [c.count("e") / max(len(c), 1) for c in completions]


class Counted:
    """A reward function that also records how many completions each call scored (and, where the caller
    passes their token ids, as TRL does, their mean length)."""

    def __init__(self, fn):
        self.fn, self.__name__ = fn, getattr(fn, "__name__", "reward")
        self.calls: list[tuple[int, float | None]] = []

    def __call__(self, prompts=None, completions=None, **kwargs):
        ids = kwargs.get("completion_ids")
        self.calls.append((len(completions), statistics.mean(map(len, ids)) if ids else None))
        return self.fn(prompts=prompts, completions=completions, **kwargs)


# -- the model -------------------------------------------------------------------------------------------------
def gpt2_tokenizer():
    """transformers' GPT-2 tokenizer from the BPE files pigpt's own tokenizer is built from (no hub)."""
    from transformers import GPT2Tokenizer

    from pigpt.model.tokenizer import bpe_files

    merges_file, vocab_file = bpe_files()
    vocab = json.loads(vocab_file.read_text(encoding="utf-8"))
    merges = [tuple(line.split(" ")) for line in merges_file.read_text(encoding="utf-8").splitlines()[1:] if line]
    return GPT2Tokenizer(vocab=vocab, merges=merges)


def save_random_gpt2(path: Path, layers: int, width: int, heads: int) -> int:
    """A random-weight GPT-2 (GPT-2's vocabulary and its default dropouts of 0.1, as a real checkpoint has)
    saved by transformers; returns its parameter count."""
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    model = GPT2LMHeadModel(GPT2Config(n_layer=layers, n_embd=width, n_head=heads))
    model.save_pretrained(path)
    return sum(p.numel() for p in model.parameters())


# -- pigpt -----------------------------------------------------------------------------------------------------
class Pigpt:
    """pigpt's GRPO run, prepared as `train.py --reward ... --prompts ...` prepares it, stepped on demand."""

    def __init__(self, a, model_dir: Path, prompts_file: Path, out: Path, stack: contextlib.ExitStack,
                 batch_invariant: bool = True):
        from pigpt.policy import trainer
        from pigpt.train import build_parser
        from pigpt.training import dist
        from pigpt.training.run import RunDir, start

        args = build_parser().parse_args([
            "--reward", f"{Path(__file__).resolve()}:e_density", "--prompts", str(prompts_file),
            "--init", str(model_dir), "--out", str(out), "--device", "cpu", "--num-threads", str(a.threads),
            "--prompts-per-step", str(a.prompts), "--num-generations", str(a.generations),
            "--max-completion-length", str(a.new_tokens), "--beta", str(a.beta), "--lr", str(a.lr),
            "--loss-type", "dapo", "--num-iterations", "1", "--temperature", "1", "--top-k", "0", "--top-p", "1",
            "--max-steps", "1000000", "--seed", "0", "--batch-invariant" if batch_invariant else "--no-batch-invariant"])
        d, device = dist.setup(args.device, args.num_threads)
        rd = stack.enter_context(RunDir(args.out, master=d.master))
        with contextlib.redirect_stdout(sys.stderr):  # prepare's banner: keep stdout for the results
            self.run = start(args, trainer.prepare, trainer.GRPORun.mode, rd, d, device)
        self.reward = Counted(self.run.reward.rewards[0].fn)  # the function load_reward found in this file
        self.run.reward.rewards[0].fn = self.reward
        self.records: list[dict] = []

    def step(self) -> None:
        self.records.append(self.run.train_step())
        self.run.step += 1  # the next step draws with the next seeds, as the training loop does


    def request(self, op: str) -> dict:
        """One timed step (its seconds, generate / score / update split, completions), or --profile's view."""
        if op == "profile":
            return profile_pigpt(self)
        n = len(self.reward.calls)
        seconds = harness.wall(self.step)
        r = self.records[-1]
        return {"seconds": seconds, "split": {k: r[f"time_{k}"] for k in SPLIT},
                "completions": sum(c for c, _ in self.reward.calls[n:]), "mean_tokens": r["completion_length"]}


def profile_pigpt(pig: Pigpt, rows: int = 25) -> dict:
    """torch.profiler over one pigpt step: the top ops by self CPU time, and the step's split."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU]) as prof:
        pig.step()
    events = prof.key_averages()
    top = [{"op": e.key, "self_cpu_s": e.self_cpu_time_total / 1e6, "cpu_total_s": e.cpu_time_total / 1e6,
            "calls": e.count} for e in sorted(events, key=lambda e: -e.self_cpu_time_total)[:rows]]
    return {"split": {k: pig.records[-1][f"time_{k}"] for k in SPLIT}, "top_ops": top,
            "table": events.table(sort_by="self_cpu_time_total", row_limit=rows)}


# -- TRL -------------------------------------------------------------------------------------------------------
_trl_events: list[tuple[str, float]] = []  # (TRL profiling context, seconds) since the current step began


def _record_trl_profiling() -> None:
    """TRL times its own pieces (generate, rewards, log-prob forwards, compute_loss) in ProfilingContexts but
    hands the times only to wandb / mlflow / trackio; keep them instead."""
    from trl.extras.profiling import ProfilingContext

    ProfilingContext._log_metrics = lambda self, duration: _trl_events.append((self.name, duration))


def trl_split(events: list[tuple[str, float]], total: float) -> dict:
    """One TRL step's generate / score / update seconds from its profiling contexts (see the module doc)."""
    took = lambda key: sum(t for name, t in events if name.endswith("." + key))  # noqa: E731
    gen, prep, loss = took("transformers.generate"), took("_prepare_inputs"), took("compute_loss")
    return {"generate": gen, "score": prep - gen + loss, "update": total - prep - loss}


def trl_config(a, out: Path, defaults: bool):
    from trl import GRPOConfig

    matched = {} if defaults else {"bf16": False, "gradient_checkpointing": False, "disable_dropout": True}
    return GRPOConfig(
        output_dir=str(out), use_cpu=True, seed=0, max_steps=a.warmup + a.repeats, report_to="none",
        save_strategy="no", eval_strategy="no", logging_steps=10**9, disable_tqdm=True, dataloader_num_workers=0,
        per_device_train_batch_size=a.prompts * a.generations, gradient_accumulation_steps=1,
        steps_per_generation=1, num_iterations=1, num_generations=a.generations,
        max_completion_length=a.new_tokens, temperature=1.0, top_k=0, top_p=1.0, repetition_penalty=1.0,
        beta=a.beta, loss_type="dapo", epsilon=0.2, scale_rewards="group", learning_rate=a.lr,
        weight_decay=0.0, adam_beta1=0.9, adam_beta2=0.999, max_grad_norm=1.0, log_completions=False, **matched)


class GatedTRL:
    """A TRL GRPOTrainer whose train() runs in a thread of its own, one optimizer step per `step()` call.

    A callback holds the thread at each step's start until `step()` lets it go and times the step from
    on_step_begin to on_step_end; `step()` returns once the thread is parked again (at the next step's
    start, or finished), so nothing of TRL's runs while the other engines' steps do."""

    def __init__(self, a, model_dir: Path, prompts: list[str], out: Path, defaults: bool):
        from datasets import Dataset
        from transformers import TrainerCallback
        from trl import GRPOTrainer

        _record_trl_profiling()
        self.threads = a.threads
        self.reward = Counted(e_density)
        self.trainer = GRPOTrainer(
            model=str(model_dir), reward_funcs=[self.reward], args=trl_config(a, out, defaults),
            train_dataset=Dataset.from_dict({"prompt": prompts}), processing_class=gpt2_tokenizer())
        self.times: list[float] = []
        self.splits: list[dict] = []
        self._go, self._parked = threading.Semaphore(0), threading.Semaphore(0)
        self._error: BaseException | None = None
        gate = self

        class Gate(TrainerCallback):
            def on_step_begin(self, args, state, control, **kw):
                if gate.times:
                    gate._parked.release()  # the previous step and its bookkeeping are done
                gate._go.acquire()
                _trl_events.clear()
                gate._t0 = time.perf_counter()

            def on_step_end(self, args, state, control, **kw):
                gate.times.append(time.perf_counter() - gate._t0)
                gate.splits.append(trl_split(_trl_events, gate.times[-1]))

        self.trainer.add_callback(Gate())
        self._thread = threading.Thread(target=self._train, name="trl-train", daemon=True)
        self._thread.start()

    def _train(self):
        torch.set_num_threads(self.threads)  # OpenMP's thread count is per calling thread
        try:
            self.trainer.train()
        except BaseException as e:  # noqa: BLE001 (re-raised in the serving thread by step())
            self._error = e
        finally:
            self._parked.release()

    def step(self) -> float:
        n = len(self.times)
        self._go.release()
        self._parked.acquire()
        if self._error is not None:
            raise RuntimeError(f"{type(self._error).__name__}: {self._error}") from self._error
        if len(self.times) != n + 1:
            raise RuntimeError(f"TRL's train() ended before step {n + 1}")
        return self.times[-1]

    def request(self, op: str) -> dict:
        n = len(self.reward.calls)
        seconds = self.step()
        calls = self.reward.calls[n:]
        lengths = [m for _, m in calls if m is not None]
        return {"seconds": seconds, "split": self.splits[-1], "completions": sum(c for c, _ in calls),
                "mean_tokens": statistics.mean(lengths) if lengths else None}

    def close(self):
        self._thread.join(timeout=60)


# -- the run ---------------------------------------------------------------------------------------------------
ENGINES = {"trl": "TRL", "trl-defaults": "TRL, its CPU defaults", "pigpt": "pigpt",
           "pigpt-variant": "pigpt --no-batch-invariant"}


def worker_main(a) -> None:
    """One engine in a process of its own (see harness.Worker): answers "step" (and "profile") requests."""
    harness.setup_threads(a.threads)
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    work = Path(a.work_dir)
    with contextlib.ExitStack() as stack:
        if a.worker in ("pigpt", "pigpt-variant"):
            engine = Pigpt(a, Path(a.model), Path(a.prompts_file), work / a.worker, stack,
                           batch_invariant=a.worker == "pigpt")
        else:
            prompts = Path(a.prompts_file).read_text().splitlines()
            engine = GatedTRL(a, Path(a.model), [p.replace("\\n", "\n") for p in prompts], work / a.worker,
                              defaults=a.worker == "trl-defaults")
        harness.serve(lambda msg: engine.request(msg.get("op", "step")), hello={"engine": a.worker})
        if isinstance(engine, GatedTRL):
            engine.close()


def row_of(name: str, replies: list[dict], expected: int, peak_mb: float) -> dict:
    splits = [r["split"] for r in replies]
    lengths = [r["mean_tokens"] for r in replies if r["mean_tokens"] is not None]
    counted = [r["completions"] for r in replies]
    return {"engine": name, "seconds": [r["seconds"] for r in replies],
            "median_s": statistics.median(r["seconds"] for r in replies), "splits": splits,
            "median_split_s": {k: statistics.median(s[k] for s in splits) for k in SPLIT},
            "completions_per_step": counted, "completions_ok": all(c == expected for c in counted),
            "mean_completion_tokens": statistics.mean(lengths) if lengths else None, "peak_mb": peak_mb}


def print_table(rows: list[dict]) -> None:
    head = ["engine", "s / step", "speed-up vs TRL", *(f"{k} s" for k in SPLIT), "completions / step",
            "mean completion tokens", "peak RSS MB"]
    body = [[r["engine"], harness.fmt(r["median_s"], ".2f"), harness.fmt(r["speedup_vs_trl"], ".2f", suffix="x"),
             *(harness.fmt(r["median_split_s"][k], ".2f") for k in SPLIT),
             "/".join(str(c) for c in r["completions_per_step"]), harness.fmt(r["mean_completion_tokens"], ".1f"),
             harness.fmt(r["peak_mb"], ".0f")] for r in rows]
    print(harness.markdown_table(head, body))
    print("speed-up: how many times faster than TRL (matched settings), the median of per-round ratios; s / step "
          "and the split: medians")


def plot(rows: list[dict], path, meta: dict) -> None:
    plt = harness.pyplot()
    fig, ax = plt.subplots(figsize=(7.5, 1.4 + 0.6 * len(rows)))
    names = [r["engine"] for r in rows]
    left = [0.0] * len(rows)
    for i, k in enumerate(SPLIT):
        vals = [max(r["median_split_s"][k], 0.0) for r in rows]
        ax.barh(names, vals, left=left, color=f"C{i}", label=k)
        left = [x + v for x, v in zip(left, vals)]
    for y, r in enumerate(rows):
        ax.text(left[y], y, f" {r['median_s']:.2f} s ({harness.fmt(r['speedup_vs_trl'], '.2f', suffix='x')})",
                va="center", fontsize=8)
    ax.invert_yaxis()
    ax.set_xlim(0, max(left) * 1.4)
    ax.set_xlabel("seconds per GRPO step (median; bars: the median generate / score / update)")
    ax.set_title(f"{meta['prompts']} prompts x {meta['generations']} x {meta['new_tokens']} tokens, beta "
                 f"{meta['beta']:g}, {meta['model']}, {meta['threads']} threads, load {meta['loadavg'][0]:.1f}",
                 fontsize=8)
    ax.legend(fontsize=7, loc="lower right")
    harness.save_figure(fig, path)


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--prompts", type=int, default=8, help="prompts per step, P (default 8)")
    ap.add_argument("--generations", type=int, default=8, help="completions per prompt, G (default 8)")
    ap.add_argument("--new-tokens", type=int, default=32, help="max_completion_length (default 32)")
    ap.add_argument("--beta", type=float, default=0.04, help="KL coefficient (default 0.04)")
    ap.add_argument("--lr", type=float, default=1e-5, help="learning rate of both (default 1e-5)")
    ap.add_argument("--model", help="a model directory with GPT-2's vocabulary, in the Hugging Face format "
                                    "(default: a random GPT-2 of --layers x --width)")
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--width", type=int, default=128)
    ap.add_argument("--heads", type=int, default=4)
    ap.add_argument("--repeats", type=int, default=3, help="timed rounds (default 3)")
    ap.add_argument("--warmup", type=int, default=1, help="untimed rounds first (default 1)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--trl-defaults", action="store_true",
                    help="also TRL with its CPU defaults (bf16 autocast, gradient checkpointing, dropout on)")
    ap.add_argument("--profile", action="store_true", help="torch.profiler over one more pigpt step")
    ap.add_argument("--load", default="", help="comma list of loads (one, two, job: benchmarking.LOADS) to also "
                    "time each engine's step under, in the same rounds: each engine's slowdown, loaded / quiet")
    ap.add_argument("--variant", action="store_true",
                    help="also pigpt with --no-batch-invariant (its default kernels; pigpt's GRPO runs "
                         "batch-invariant by default): the mode's cost, in the same run")
    harness.add_output_args(ap, "bench_rl")
    ap.add_argument("--worker", choices=list(ENGINES), help=argparse.SUPPRESS)
    ap.add_argument("--prompts-file", help=argparse.SUPPRESS)
    ap.add_argument("--work-dir", help=argparse.SUPPRESS)
    a = ap.parse_args(argv)
    bad = [x for x in a.load.split(",") if x and x not in harness.LOADS]
    if bad:
        ap.error(f"--load {','.join(bad)}: unknown; use a comma list of {', '.join(harness.LOADS)}")
    return a


def _loaded_step(step, k, name) -> float:
    with harness.load(name):
        return step(k, loaded=name)


def main(argv=None) -> list[dict]:
    a = parse_args(argv)
    if a.worker:
        return worker_main(a)
    harness.setup_threads(a.threads)
    per_step = a.prompts * a.generations
    prompts = [PROMPTS[i % len(PROMPTS)] for i in range(a.prompts)]
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        if a.model:
            model_dir, model_name = Path(a.model).resolve(), a.model
        else:
            model_dir = tmp / "model"
            n = save_random_gpt2(model_dir, a.layers, a.width, a.heads)
            model_name = f"random GPT-2 {a.layers}x{a.width} ({n / 1e6:.1f}M parameters)"
        prompts_file = tmp / "prompts.txt"  # one a line, "\n" escaped as train.py's --prompts reads it
        prompts_file.write_text("".join(p.replace("\n", "\\n") + "\n" for p in prompts))
        meta = harness.environment(prompts=a.prompts, generations=a.generations, new_tokens=a.new_tokens,
                                   beta=a.beta, lr=a.lr, model=model_name, repeats=a.repeats, warmup=a.warmup)
        print(f"torch {meta['torch']}, {meta['threads']} threads, {meta['cpu']} x {meta['cpu_count']}, load average "
              f"{' '.join(f'{x:.1f}' for x in meta['loadavg'])}; {model_name}; {a.prompts} prompts x "
              f"{a.generations} x {a.new_tokens} tokens, beta {a.beta:g}, lr {a.lr:g}; {a.warmup} warm-up + "
              f"{a.repeats} timed rounds", flush=True)
        kinds = ["trl"] + (["trl-defaults"] if a.trl_defaults else []) + ["pigpt"] + (
            ["pigpt-variant"] if a.variant else [])
        shared = ["--prompts", a.prompts, "--generations", a.generations, "--new-tokens", a.new_tokens,
                  "--beta", a.beta, "--lr", a.lr, "--threads", a.threads, "--warmup", a.warmup,
                  # every round steps each engine once quiet and once under each --load: TRL's max_steps
                  "--repeats", a.repeats + (a.warmup + a.repeats) * len([x for x in a.load.split(",") if x]),
                  "--model", model_dir, "--prompts-file", prompts_file, "--work-dir", tmp]
        env = {**os.environ, "TQDM_DISABLE": "1"}  # no weight-loading progress bars from the workers
        replies = {k: [] for k in kinds}
        with contextlib.ExitStack() as stack:
            # Each engine in a process of its own: TRL's accelerate state is one per process (two configs
            # can't share one), and each engine's peak RSS is its own.
            workers = {k: stack.enter_context(harness.Worker([__file__, "--worker", k, *map(str, shared)], env=env))
                       for k in kinds}

            def step(k, loaded=None):
                replies[k].append({**workers[k].request(op="step"), "loaded": loaded})
                return replies[k][-1]["seconds"]  # timed in the worker: no IPC in it

            fns = {k: (lambda k=k: step(k)) for k in kinds}
            loads = [x for x in a.load.split(",") if x]
            for name in loads:  # each engine's step again with the load running ("engine @ load")
                for k in kinds:
                    fns[f"{k} @ {name}"] = lambda k=k, name=name: _loaded_step(step, k, name)
            res = harness.interleave(fns, repeats=a.repeats, warmup=a.warmup)
            if a.profile:
                meta["pigpt_profile"] = workers["pigpt"].request(op="profile")
            peaks = {k: w.close().get("peak_mb") for k, w in workers.items()}
        meta["loadavg_end"] = os.getloadavg()

    rows = []
    quiet = {k: [r for r in replies[k] if not r.get("loaded")][a.warmup:] for k in kinds}
    for k in kinds:
        rows.append(row_of(ENGINES[k], quiet[k], per_step, peaks[k]))
        rows[-1]["speedup_vs_trl"] = res.ratio(k, "trl")
        rows[-1]["slowdown"] = {name: res.ratio(k, f"{k} @ {name}") for name in loads}
    print()
    print_table(rows)
    for name in loads:
        print(f"with {harness.LOADS[name][0]} beside it, a step took (median of loaded / quiet per round): "
              + ", ".join(f"{r['engine']} {r['slowdown'][name]:.2f}x" for r in rows))
    if a.variant:
        meta["invariant_vs_default"] = res.ratio("pigpt", "pigpt-variant")
        print(f"pigpt's step batch-invariant (its default) runs at {meta['invariant_vs_default']:.2f}x the speed of "
              f"its step with --no-batch-invariant (median of per-round ratios)")
    bad = [r["engine"] for r in rows if not r["completions_ok"]]
    print(f"completions per step: {per_step} in every step of every engine" if not bad else
          f"WARNING: {', '.join(bad)} did not score {per_step} completions in every step")
    print(f"load average at the end {' '.join(f'{x:.1f}' for x in meta['loadavg_end'])}")
    if a.profile:
        p = meta["pigpt_profile"]
        print("\npigpt, one more step under torch.profiler: "
              + ", ".join(f"{k} {v:.2f} s" for k, v in p["split"].items()))
        print(p["table"])
    harness.write_json(a.out, rows, meta)
    if a.png:
        plot(rows, a.png, meta)
    print(f"wrote {a.out}" + (f" and {a.png}" if a.png else ""))
    return rows


if __name__ == "__main__":
    main()
