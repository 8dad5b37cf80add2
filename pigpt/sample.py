"""Rollouts from a prompt, with the model's distributions made visible.

A language model is a policy pi(y|x): at every time step a distribution over the next token. This script
draws rollouts from it (or searches the best ones with beam search) and shows why each token came out:
the next-token distribution at each step, raw beside what temperature / top-k / top-p / the repetition
penalty made of it, which token was drawn, and how the rollouts branch from one another.

Run `python sample.py --help` for every option and examples (EXAMPLES below). All bad input ends with one
line naming the problem and exit code 2. Everything is drawn by the decoding engine (decoding.generate,
decoding.beam_search): the distributions shown are the ones it drew from, as it drew.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import textwrap
from pathlib import Path

EXAMPLES = """\
examples:
  python sample.py "Which is the largest ocean?" -n 8 --temperature 0.8 --show-steps
  python sample.py "Once upon a time" -n 6 --max-new-tokens 8 --tree tree.png
  python sample.py "def fibonacci(n):" --plot steps.png --top-k 20
  python sample.py "The function returns" --compare-temperatures 0.5,1,2 --plot temps.png
  python sample.py "The meaning of life is" --num-beams 4 --tree beams.png
  python sample.py "def add(a, b):" -n 8 --reward python_compiles --stop "\\n\\n"
  python sample.py --prompt-file prompts.txt -n 4 --json > rollouts.jsonl

model: --model DIR_OR_HUB_ID; without it, the small default model shipped in pigpt/model/default/ (make your own
with `python train.py`, then --model out).
"""


class UsageError(Exception):
    """Bad input: reported as one line and exit code 2."""


# -- the command line -----------------------------------------------------------------------------------------
class _Parser(argparse.ArgumentParser):
    def error(self, message):  # one line, not usage + message
        raise UsageError(f"{message} (see --help)")


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="sample.py", description=textwrap.fill(" ".join(__doc__.split("\n\n")[1].split()), 100),
                epilog=EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("prompt", nargs="?", help="the prompt text (or use --prompt-file); none: unconditional samples, "
                                             "after <|endoftext|>")
    p.add_argument("--prompt-file", metavar="FILE", help="read prompts from FILE, one per line (blank lines skipped)")

    g = p.add_argument_group("sampling")
    g.add_argument("-n", "--num-rollouts", type=int, default=1, metavar="N", help="rollouts per prompt (default 1)")
    g.add_argument("--temperature", type=float, default=1.0, metavar="T", help="divide the logits by T; 0 is greedy (default 1)")
    g.add_argument("--top-k", type=int, default=0, metavar="K", help="keep the k most likely tokens; 0 is off (default)")
    g.add_argument("--top-p", type=float, default=1.0, metavar="P", help="keep the smallest set with mass >= p; 1 is off (default)")
    g.add_argument("--min-p", type=float, default=0.0, metavar="P",
                   help="keep tokens with probability >= P x the top token's; 0 is off (default)")
    g.add_argument("--typical-p", type=float, default=1.0, metavar="P",
                   help="typical sampling: keep the tokens whose -log p is closest to the entropy, up to mass P; "
                        "1 is off (default)")
    g.add_argument("--epsilon-cutoff", type=float, default=0.0, metavar="E",
                   help="keep tokens with probability >= E (the top token always); 0 is off (default)")
    g.add_argument("--eta-cutoff", type=float, default=0.0, metavar="E",
                   help="epsilon sampling with the cut min(E, sqrt(E) x exp(-entropy)); 0 is off (default)")
    g.add_argument("--repetition-penalty", type=float, default=1.0, metavar="R",
                   help="penalise tokens already in prompt or completion; 1 is off (default)")
    g.add_argument("--presence-penalty", type=float, default=0.0, metavar="P",
                   help="subtract P from the logit of every token the completion already holds; 0 is off (default)")
    g.add_argument("--frequency-penalty", type=float, default=0.0, metavar="F",
                   help="subtract F x (its count in the completion) from each token's logit; 0 is off (default)")
    g.add_argument("--min-new-tokens", type=int, default=0, metavar="N", help="no stop token before this many tokens (default 0)")
    g.add_argument("--max-new-tokens", type=int, default=32, metavar="N", help="completion length cap (default 32)")
    g.add_argument("--stop", action="append", default=[], metavar="TEXT",
                   help="stop when the completion contains TEXT (repeatable; \\n, \\t and \\\\ in TEXT are a newline, "
                        "a tab and a backslash, so --stop \"\\n\\n\" stops at a blank line); <|endoftext|> always "
                        "stops")
    g.add_argument("--seed", type=int, default=None, metavar="S",
                   help="rollout i of prompt p uses seed S + p*n + i (default: a fresh seed per prompt, printed so "
                        "you can replay it)")

    g = p.add_argument_group("beam search (instead of sampling)")
    g.add_argument("--num-beams", type=int, default=0, metavar="B", help="beam search with B beams")
    g.add_argument("--length-penalty", type=float, default=1.0, metavar="L",
                   help="beam score = sum log p / length**penalty (default 1)")
    g.add_argument("--num-return-sequences", type=int, default=None, metavar="K",
                   help="beams to return (default: all B)")
    g.add_argument("--early-stopping", choices=["true", "false", "never"], default="false",
                   help="transformers' early_stopping (default false)")

    g = p.add_argument_group("model")
    g.add_argument("--model", default=None, metavar="DIR_OR_ID",
                   help="a checkpoint directory (Hugging Face GPT-2 format) or a hub id such as gpt2")
    g.add_argument("--device", default="auto",
                   help="cpu, cuda, cuda:1, ... (default: cuda if available; the CPU with --batch-invariant)")
    g.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    g.add_argument("--quantize", choices=["int8"], default=None,
                   help="int8 weights (per-channel scales, float activations): less memory, faster on a CPU")
    g.add_argument("--batch-invariant", action="store_true",
                   help="batch-invariant numerics (float32, CPU): each rollout is the same bits whatever is drawn "
                        "beside it, and its log-probs are exactly what score() recomputes")

    g = p.add_argument_group("rewards (the RL view: each rollout scored)")
    g.add_argument("--reward", action="append", default=[], metavar="SPEC",
                   help="score each rollout: python_compiles, contains:WORD, regex:PATTERN, path/file.py:function "
                        "or module:function (repeatable; the total is their sum); rollouts also get their "
                        "group advantage, as GRPO computes it")
    g.add_argument("--transitions", metavar="FILE.jsonl",
                   help="with --reward: write the rollouts as RL transitions, one JSON line per step: state (prompt + "
                        "tokens so far), action (the token), its log-prob, reward (at the last step), advantage")

    g = p.add_argument_group("output")
    g.add_argument("--json", action="store_true",
                   help="JSON lines on stdout: prompt, text, tokens, logprobs, model_logprobs, sum_logprob, "
                        "finish_reason, seed (and reward with --reward)")
    g.add_argument("--show-steps", action="store_true",
                   help="each time step's top tokens as a bar chart: raw beside processed, the drawn one marked")
    g.add_argument("--top-tokens", type=int, default=8, metavar="K", help="tokens per step in charts (default 8)")
    g.add_argument("--plot", metavar="FILE.png",
                   help="per-step bar graphs of the first rollout, one panel per step (or the --compare-* panels)")
    g.add_argument("--max-panels", type=int, default=16, metavar="N", help="at most this many steps in --plot (default 16)")
    g.add_argument("--tree", metavar="FILE.png", help="the tree of rollouts or beams, edges labelled with p")
    g.add_argument("--tree-depth", type=int, default=12, metavar="T",
                   help="draw the first T steps of the tree (default 12)")

    g = p.add_argument_group("compare settings (the first step after the prompt, no rollouts drawn)")
    g.add_argument("--compare-temperatures", metavar="T1,T2,..", help="e.g. 0.5,1,2")
    g.add_argument("--compare-top-k", metavar="K1,K2,..", help="e.g. 1,5,50")
    g.add_argument("--compare-top-p", metavar="P1,P2,..", help="e.g. 0.5,0.9,1")
    g.add_argument("--compare-min-p", metavar="P1,P2,..", help="e.g. 0,0.05,0.3")
    g.add_argument("--compare-typical-p", metavar="P1,P2,..", help="e.g. 0.2,0.5,0.9")
    g.add_argument("--compare-epsilon-cutoff", metavar="E1,E2,..", help="e.g. 3e-4,3e-3,0.02")
    g.add_argument("--compare-eta-cutoff", metavar="E1,E2,..", help="e.g. 3e-4,3e-3,0.02")
    return p


def _check(cond: bool, message: str) -> None:
    if not cond:
        raise UsageError(message)


# --compare-* option -> the SamplingParams field it varies
COMPARED = {"compare_temperatures": "temperature", "compare_top_k": "top_k", "compare_top_p": "top_p",
            "compare_min_p": "min_p", "compare_typical_p": "typical_p", "compare_epsilon_cutoff": "epsilon_cutoff",
            "compare_eta_cutoff": "eta_cutoff"}


def _parse_list(text: str, flag: str, cast):
    try:
        values = [cast(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise UsageError(f"{flag} expects comma-separated {cast.__name__} values, got {text!r}") from None
    _check(bool(values), f"{flag} expects comma-separated values, got {text!r}")
    return values


def validate(args) -> None:
    """Every check that needs no model: bad values fail before anything is loaded."""
    _check(args.prompt is None or args.prompt_file is None, "pass a prompt or --prompt-file, not both")
    _check(args.prompt is None or args.prompt.strip() != "",
           "the prompt is empty (or only whitespace); give at least one character of text")
    from pigpt.model.textform import unescape

    args.stop = [unescape(s) for s in args.stop]  # the shell passes "\n" as a backslash and an n
    check_settings(args)
    _check(args.top_tokens >= 1, f"--top-tokens must be >= 1, got {args.top_tokens}")
    _check(args.max_panels >= 1, f"--max-panels must be >= 1, got {args.max_panels}")
    _check(args.tree_depth >= 1, f"--tree-depth must be >= 1, got {args.tree_depth}")
    _check(args.num_beams >= 0, f"--num-beams must be >= 1 (or 0 to sample), got {args.num_beams}")
    if args.num_beams:
        k = args.num_return_sequences
        _check(k is None or 1 <= k <= args.num_beams,
               f"--num-return-sequences must be in [1, --num-beams={args.num_beams}], got {k}")
        _check(args.num_rollouts == 1, "-n/--num-rollouts is for sampling; with --num-beams use --num-return-sequences")
    else:
        _check(args.num_return_sequences is None, "--num-return-sequences needs --num-beams")
    _check(not args.transitions or args.reward, "--transitions needs --reward SPEC (transitions carry rewards)")
    compares = [f for f in COMPARED if getattr(args, f)]
    _check(len(compares) <= 1, "use one --compare-* option at a time")
    args.compare = None
    if compares:
        _check(not args.num_beams, "--compare-* shows sampling settings; drop --num-beams")
        _check(not args.tree, "--compare-* draws no rollouts, so there is no --tree to draw")
        _check(not args.reward, "--compare-* draws no rollouts, so there is nothing to --reward")
        flag = "--" + compares[0].replace("_", "-")
        field = COMPARED[compares[0]]
        values = _parse_list(getattr(args, compares[0]), flag, int if field == "top_k" else float)
        from pigpt.kernels.params import check_value

        for v in values:  # each value by the sampler's own rule for its setting
            try:
                check_value(field, v, f"{flag}: each value")
            except ValueError as e:
                raise UsageError(str(e)) from None
        args.compare = (field, values)
    from pigpt.viz.figures import check_output_path

    for flag in ("plot", "tree"):
        path = getattr(args, flag)
        if path is not None:
            try:
                check_output_path(path)
            except ValueError as e:
                raise UsageError(f"--{flag} {e}") from None


def check_settings(args) -> None:
    """The sampling flags, through the one check of sampling settings (decoding.params.check_sampling)."""
    from pigpt.decoding.params import check_sampling, flag

    try:
        check_sampling(dict(temperature=args.temperature, top_k=args.top_k, top_p=args.top_p, min_p=args.min_p,
                            typical_p=args.typical_p, epsilon_cutoff=args.epsilon_cutoff, eta_cutoff=args.eta_cutoff, n=args.num_rollouts,
                            repetition_penalty=args.repetition_penalty, presence_penalty=args.presence_penalty,
                            frequency_penalty=args.frequency_penalty, max_new_tokens=args.max_new_tokens,
                            min_new_tokens=args.min_new_tokens, seed=args.seed, stop=args.stop),
                       name=lambda f: "-n/--num-rollouts" if f == "n" else flag(f))
    except ValueError as e:
        raise UsageError(str(e)) from None


def read_prompts(args) -> list[str]:
    if args.prompt_file is None:
        return [args.prompt if args.prompt is not None else UNCONDITIONAL]
    try:
        text = Path(args.prompt_file).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        reason = e.strerror if isinstance(e, OSError) and e.strerror else str(e)
        raise UsageError(f"cannot read --prompt-file {args.prompt_file}: {reason}") from None
    prompts = [line for line in text.splitlines() if line.strip()]
    _check(bool(prompts), f"--prompt-file {args.prompt_file} holds no prompts (one per line)")
    return prompts


UNCONDITIONAL = "<|endoftext|>"  # no prompt: what the model writes after the end of a document


# -- the model ------------------------------------------------------------------------------------------------
def pick_device(name: str) -> str:
    import torch

    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    try:
        device = torch.device(name)
    except RuntimeError:
        raise UsageError(f"--device {name!r} is not a device; use cpu, cuda or cuda:N") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UsageError(f"--device {name}: CUDA is not available on this machine; use --device cpu")
    return name


def load_model(spec: str | None, device: str, dtype: str, quantize: str | None = None, batch_invariant: bool = False):
    from pigpt.model import GPT, CheckpointError
    from pigpt.model.checkpoint import SHIPPED

    if spec is None and not (SHIPPED["default"] / "config.json").is_file():
        raise UsageError(f"no model: the shipped default {SHIPPED['default']} is missing; pass --model DIR (a "
                         "Hugging Face GPT-2 checkpoint directory, e.g. one `pigpt-train` wrote) or a hub id such as "
                         "gpt2 when online")
    source = spec if spec is not None else str(SHIPPED["default"])
    try:
        gpt = GPT.from_pretrained(source, device=device, dtype=dtype)
    except CheckpointError as e:
        raise UsageError(f"--model {spec}: {e}" if spec is not None else f"the default model {source}: {e}") from None
    if quantize:
        if not hasattr(gpt, "quantize"):
            raise UsageError(f"--quantize {quantize}: this build of pigpt has no quantized weights")
        try:
            gpt.quantize(quantize)
        except ValueError as e:
            raise UsageError(f"--quantize {quantize}: {e}") from None
    if batch_invariant:
        if quantize or dtype != "float32":
            drop = f"--quantize {quantize}" if quantize else f"--dtype {dtype}"
            raise UsageError(f"--batch-invariant runs float32 weights: drop {drop}")
        try:
            gpt.batch_invariant = True
        except ValueError as e:
            raise UsageError(f"--batch-invariant: {e}") from None
    return gpt.eval(), "default model" if spec is None else spec


def encode_prompts(model, tokenizer, prompts: list[str], max_new_tokens: int) -> list[list[int]]:
    """Token ids of each prompt, as the decoding engine takes text (decoding.prompts.check_prompts: in the
    model's text form, checked against its context)."""
    from pigpt.decoding.prompts import check_prompts

    try:
        return check_prompts(model, prompts, max_new_tokens, tokenizer=tokenizer, length="--max-new-tokens",
                             name=lambda i: "the prompt" if len(prompts) == 1 else f"prompt {i + 1}")
    except ValueError as e:
        raise UsageError(str(e)) from None


# -- text ------------------------------------------------------------------------------------------------------
def completion_text(s: "Session", tokens: list[int], stop_ids=None) -> str:
    """The completion as a person reads it: without the stop token that ended it (the finish reason says
    so), in plain text form (Rollout.text, the same text rewards judge). stop_ids=(): every token shown."""
    from pigpt.decoding import completion_text as text_of

    return text_of(s.model, tokens, s.stop_ids if stop_ids is None else stop_ids, s.tok)


def for_terminal(text: str) -> str:
    """Tabs as 4 spaces: terminals draw them 8 wide."""
    return text.replace("\t", "    ")


class Printer:
    """Prints one rollout's text as its tokens arrive (an on_step callback of decoding.generate)."""

    def __init__(self, s: "Session", prompt_ids: list[int]):
        self.s, self.prompt_ids, self.tokens, self.shown = s, prompt_ids, [], ""

    def __call__(self, step) -> None:
        self.tokens.append(int(step.tokens[0]))
        body = self.tokens[:-1] if self.tokens[-1] in self.s.stop_ids else self.tokens
        # decode the whole completion (a token may end mid-character); hold back an unfinished character
        text = completion_text(self.s, self.prompt_ids + body, stop_ids=())[len(self.s.prompt_text):]
        text = text.rstrip("\ufffd") if not bool(step.finished[0]) else text
        if text.startswith(self.shown):
            print(for_terminal(text[len(self.shown):]), end="", file=self.s.out, flush=True)
            self.shown = text


def finish_note(s: "Session", tokens, reason) -> str:
    if reason == "stop" and tokens and tokens[-1] in s.stop_ids:
        from pigpt.viz.text import show_token

        return f"stop at {show_token(s.tok, tokens[-1])}"
    if reason == "interrupted":
        return "interrupted (Ctrl-C)"
    return "stop string" if reason == "stop" else "length (hit --max-new-tokens)"


def header(i: int, total: int, r, note, kind: str = "rollout", extra: str = "") -> str:
    seed = getattr(r, "seed", None)  # beams and greedy rollouts have none
    seed_part = f"  seed {seed}" if seed is not None else ""
    n = len(r.tokens)
    return (f"── {kind} {i + 1}/{total}{seed_part}  log π(y|x) = {sum(r.logprobs):.3f}{extra}  "
            f"({n} token{'' if n == 1 else 's'}, finish: {note})")


# -- the runs -------------------------------------------------------------------------------------------------
class Session:
    """Everything a run needs: parsed args, model, tokenizer, styles."""

    def __init__(self, args, model, tokenizer, out=sys.stdout, err=sys.stderr):
        from pigpt.decoding.prompts import stop_ids_of
        from pigpt.viz.terminal import Style, use_color

        self.args, self.model, self.tok = args, model, tokenizer
        self.out, self.err = out, err
        self.style = Style(use_color(out))
        self.stop_ids = tuple(stop_ids_of(model, None))
        self.prompt_text = ""
        self.params = self.sampling_params()
        self.reward = load_rewards(args.reward)

    def say(self, text: str = "") -> None:
        print(text, file=self.out, flush=True)

    def note(self, text: str) -> None:
        print(text, file=self.err, flush=True)

    def sampling_params(self):
        """The run's SamplingParams: one settings object for drawing, plotting and (its lengths, stops and
        processors) beam search."""
        from pigpt.decoding import SamplingParams

        a = self.args
        beam = bool(a.num_beams)
        try:
            return SamplingParams(
                temperature=1.0 if beam else a.temperature, top_k=0 if beam else a.top_k,
                top_p=1.0 if beam else a.top_p, min_p=0.0 if beam else a.min_p,
                typical_p=1.0 if beam else a.typical_p,
                epsilon_cutoff=0.0 if beam else a.epsilon_cutoff, eta_cutoff=0.0 if beam else a.eta_cutoff,
                repetition_penalty=a.repetition_penalty,
                presence_penalty=0.0 if beam else a.presence_penalty,
                frequency_penalty=0.0 if beam else a.frequency_penalty,
                min_new_tokens=a.min_new_tokens, max_new_tokens=a.max_new_tokens, stop_token_ids=self.stop_ids,
                stop=tuple(a.stop), n=1 if beam else a.num_rollouts,
                seed=None if beam else a.seed)
        except ValueError as e:  # validate() should have caught it; never show a traceback for bad input
            raise UsageError(str(e)) from None

    def processing(self) -> str | None:
        """The label of the processing chain for the pictures; None when processed == raw."""
        from pigpt.viz.steps import is_identity, label

        beam = bool(self.args.num_beams)
        return None if is_identity(self.params, beam=beam) else label(self.params, beam=beam)


def load_rewards(specs):
    if not specs:
        return None
    from pigpt.policy import PolicyError, combine_rewards, load_reward

    try:
        return combine_rewards([load_reward(spec) for spec in specs])
    except PolicyError as e:
        raise UsageError(f"--reward: {e}") from None


def score_rewards(s: Session, prompts: list[str], results, params) -> list[list[dict]] | None:
    """Per rollout (or beam): its reward total, each function's value (None: not applicable) and, for
    sampled groups, the GRPO advantage; judged on the plain text, as policy.rollouts scores a training batch.
    With --transitions the batch is also written as RL transitions."""
    if s.reward is None:
        return None
    import dataclasses

    from pigpt.policy import PolicyError
    from pigpt.policy.rollouts import score_batch

    group = len(results[0])
    try:
        batch = score_batch(s.model, prompts, results, dataclasses.replace(params, n=group), s.reward,
                            tokenizer=s.tok, advantages=not s.args.num_beams)
    except PolicyError as e:
        raise UsageError(f"--reward: {e}") from None
    if s.args.transitions:
        from pigpt.model.checkpoint import atomic_write

        lines = "".join(json.dumps(t) + "\n" for t in batch.transitions(s.tok))
        try:
            atomic_write(Path(s.args.transitions), lambda f: Path(f).write_text(lines))
        except OSError as e:
            raise UsageError(f"cannot write --transitions {s.args.transitions}: {e.strerror or e}") from None
        s.note(f"wrote {s.args.transitions} ({lines.count(chr(10))} transitions of {len(batch.rollouts)} episodes)")
    out = [r.to_dict() for r in batch.rollouts]
    if group == 1 and not s.args.num_beams:  # the advantage compares a rollout with its group's others
        s.note("note: with -n 1 there is no advantage: GRPO compares each rollout with the other rollouts of its "
               "prompt, and a group of one has none; use -n 2 or more")
        for r in out:
            r["advantage"] = None
    return [out[p * group:(p + 1) * group] for p in range(len(results))]


def run_sampling(s: Session, prompts: list[str], ids: list[list[int]]) -> None:
    from pigpt.decoding import generate
    from pigpt.decoding.generate import Interrupted
    from pigpt.viz.steps import StepRecorder

    a, params = s.args, s.params
    streaming = len(ids) == 1 and a.num_rollouts == 1 and not a.json
    # distributions for the rows that are shown: every row with --show-steps, prompt 0's for the pictures
    rows = None if a.show_steps else (set(range(a.num_rollouts)) if a.plot or a.tree else set())
    recorder = StepRecorder(params, s.stop_ids, rows=rows, top=a.top_tokens) if rows != set() else None
    callbacks = [recorder] if recorder else []
    if streaming:
        s.prompt_text = completion_text(s, ids[0], stop_ids=())
        print(s.style.dim(for_terminal(prompts[0] if prompts[0] != UNCONDITIONAL else "")), end="", file=s.out, flush=True)
        callbacks.append(Printer(s, ids[0]))
    try:
        results = generate(s.model, ids, params, progress=not a.json and not streaming and _progress(s),
                           on_step=(lambda step: [f(step) for f in callbacks]) if callbacks else None,
                           distributions=recorder is not None)
    except Interrupted as stop:  # Ctrl-C: show what was drawn, then exit 130
        if streaming:
            s.say()
        return report_interrupted(s, prompts, stop, recorder)
    if streaming:
        s.say()
    rewards = score_rewards(s, prompts, results, params)
    n = a.num_rollouts
    for p, (text, prompt_ids, rollouts) in enumerate(zip(prompts, ids, results)):
        views = [recorder.views.get(p * n + i) for i in range(n)] if recorder else None
        report(s, text, rollouts, views, rewards[p] if rewards else None, streamed=streaming, prompt_index=p,
               n_prompts=len(prompts))
        if p == 0:
            pictures(s, text, ids[0], rollouts, views)


def report_interrupted(s: Session, prompts: list[str], stop, recorder) -> int:
    """The rollouts a Ctrl-C cut short, printed (or written as JSON lines) as far as they got, and one line
    that says so; no rewards, transitions or pictures of unfinished text. Returns exit code 130."""
    n, streamed = s.args.num_rollouts, len(prompts) == 1 and s.args.num_rollouts == 1 and not s.args.json
    for p, (text, rollouts) in enumerate(zip(prompts, stop.rollouts)):
        views = ([recorder.views.get(p * n + i, [])[:len(r.tokens)] for i, r in enumerate(rollouts)] if recorder
                 else None)
        report(s, text, rollouts, views, None, streamed=streamed, prompt_index=p, n_prompts=len(prompts))
    cut = sum(r.finish_reason == "interrupted" for g in stop.rollouts for r in g)
    total = sum(len(g) for g in stop.rollouts)
    s.note(f"interrupted (Ctrl-C) after {stop.steps} of {stop.max_new_tokens} steps: {cut} of {total} rollouts "
           f"above are cut short (finish: interrupted){'' if s.reward is None else '; no rewards scored'}")
    return EXIT_INTERRUPTED


EXIT_INTERRUPTED = 130  # 128 + SIGINT, the shell's code for a Ctrl-C


def _progress(s: Session) -> bool:
    return s.err.isatty() or os.environ.get("PIGPT_PROGRESS") == "1"


def run_beams(s: Session, prompts: list[str], ids: list[list[int]]) -> None:
    from pigpt.decoding import beam_search
    from pigpt.viz.steps import BeamRecorder

    a = s.args
    k = a.num_return_sequences or a.num_beams
    early = {"true": True, "false": False, "never": "never"}[a.early_stopping]
    want = None if a.show_steps else ({0} if a.plot or a.tree else set())
    recorder = BeamRecorder(s.params, s.stop_ids, prompts=want, top=a.top_tokens) if want != set() else None
    results = beam_search(s.model, ids, s.params, num_beams=a.num_beams, length_penalty=a.length_penalty,
                          early_stopping=early, num_return_sequences=k, on_step=recorder)
    rewards = score_rewards(s, prompts, results, s.params)
    for p, (text, beams) in enumerate(zip(prompts, results)):
        views = [recorder.views(p, b) for b in beams] if recorder and (want is None or p in want) else None
        report(s, text, beams, views, rewards[p] if rewards else None, streamed=False, prompt_index=p,
               n_prompts=len(prompts), beams=True)
        if p == 0:
            pictures(s, text, ids[0], beams, views)


def report(s: Session, text, rollouts, views, rewards, *, streamed, prompt_index, n_prompts, beams=False):
    a = s.args
    if a.json:
        for i, r in enumerate(rollouts):
            rec = json_record(s, text, prompt_index, i, r, views[i] if views and a.show_steps else None, beams)
            if rewards is not None:
                rec.update({k: rewards[i][k] for k in ("reward", "rewards")})
                if not beams:
                    rec["advantage"] = rewards[i]["advantage"]
            s.say(json.dumps(rec))
        return
    if n_prompts > 1:
        s.say(s.style.bold(f"══ prompt {prompt_index + 1}/{n_prompts}: {text!r}"))
    kind = "beam" if beams else "rollout"
    for i, r in enumerate(rollouts):
        note = finish_note(s, r.tokens, r.finish_reason)
        extra = f"  score {r.score:.3f}" if beams else ""
        if rewards is not None:
            r_i = rewards[i]["reward"]
            extra += f"  reward {'n/a' if r_i is None else f'{r_i:.3g}'}"
            if not beams and rewards[i]["advantage"] is not None:
                extra += f" (advantage {rewards[i]['advantage']:+.2f})"
        s.say(s.style.bold(header(i, len(rollouts), r, note, kind, extra)))
        if not streamed:
            shown = text if text != UNCONDITIONAL else ""
            s.say(s.style.dim(for_terminal(shown)) + for_terminal(r.text))
        if a.show_steps and views is not None:
            show_steps(s, text, r, views[i])
        s.say()


def show_steps(s: Session, prompt_text: str, r, views) -> None:
    from pigpt.viz.terminal import render_step

    processing = s.processing()
    for view in views:
        context = prompt_text + completion_text(s, r.tokens[:view.t]) if view.t else prompt_text
        s.say(render_step(view, s.tok, processing, context=context, style=s.style))
    s.say(s.style.dim(f"   log p_model(y|x) = {sum(r.model_logprobs):.3f} under the raw model; "
                      f"log π(y|x) = {sum(r.logprobs):.3f} under the "
                      f"{'beam search scores' if s.args.num_beams else 'sampler'}'s distribution"))


def json_record(s: Session, text, prompt_index, i, r, views, beams) -> dict:
    rec = {
        "prompt": text,
        "prompt_index": prompt_index,
        "index": i,
        "text": r.text,
        "tokens": list(r.tokens),
        "logprobs": [float(x) for x in r.logprobs],
        "model_logprobs": [float(x) for x in r.model_logprobs],
        "sum_logprob": float(sum(r.logprobs)),
        "finish_reason": r.finish_reason,
        "seed": None if beams else r.seed,
    }
    if beams:
        rec["score"] = float(r.score)
    if views is not None:
        rec["steps"] = [{
            "token": v.token, "p": v.processed[v.token_index], "p_raw": v.raw[v.token_index], "kept": v.kept,
            "top": [{"token": t, "text": s.tok.decode([t]), "p_raw": pr, "p": pp}
                    for t, pr, pp in zip(v.ids, v.raw, v.processed)],
        } for v in views]
    return rec


def pictures(s: Session, text, prompt_ids, rollouts, views) -> None:
    a = s.args
    if not (a.plot or a.tree):
        return
    from pigpt.viz import figures
    from pigpt.viz.tree import build_tree, count_nodes

    completions = [r.tokens for r in rollouts]
    if a.plot:
        steps = views[0][: a.max_panels]
        if not steps:
            raise UsageError("--plot: the first rollout generated no tokens, so there is no step to draw")
        contexts = [text + completion_text(s, completions[0][:t]) if t else text for t in range(len(steps))]
        total, kind = len(views[0]), "beam" if a.num_beams else "rollout"
        note = "" if total <= len(steps) else (
            f"steps 1-{len(steps)} of the {total} of {kind} 1 shown: --max-panels {total} draws them all "
            "(--show-steps prints them all in the terminal)")
        fig = figures.plot_steps(steps, s.tok, s.processing(), prompt_text=text, context_texts=contexts, note=note)
        n = len(fig.axes)
        write_figure(s, fig, a.plot, f"{n} panel{'s' if n > 1 else ''}, one per step of {kind} 1"
                                     + (f"; {total - n} later steps left out: --max-panels {total} for all" if note
                                        else ""))
    if a.tree:
        beam = bool(a.num_beams)
        if beam:
            probs = [[math.exp(lp) for lp in r.model_logprobs] for r in rollouts]
            title = f"{len(completions)} beams; edge label: p_model(token | path above)"
            labels = [f"score {r.score:.2f}, {r.finish_reason}" for r in rollouts]
        else:
            probs = [[math.exp(lp) for lp in r.logprobs] for r in rollouts]
            title = f"{len(completions)} rollouts ({s.processing() or 'the model as is'}); edge label: π(token | path above)"
            labels = [f"{'seed ' + str(r.seed) + ', ' if r.seed is not None else ''}{r.finish_reason}" for r in rollouts]
        d, longest = a.tree_depth, max(len(c) for c in completions)
        labels = [lab if len(c) <= d else f"{lab} (+{len(c) - d} tokens)" for c, lab in zip(completions, labels)]
        root = build_tree([c[:d] for c in completions], [p[:d] for p in probs], labels)
        cut = sum(len(c) > d for c in completions)
        note = "" if not cut else (
            f"the first {d} of up to {longest} steps: {cut} of the {len(completions)} "
            f"{'beams' if beam else 'rollouts'} go on past t={d} (\"+N tokens\" at their ends); --tree-depth {longest} draws every step")
        fig = figures.plot_tree(root, s.tok, prompt_text=text, title=title, note=note)
        write_figure(s, fig, a.tree, f"{len(fig.axes)} panel, {count_nodes(root)} nodes"
                                     + (f"; steps {d + 1}-{longest} left out: --tree-depth {longest} for all" if cut
                                        else ""))


def write_figure(s: Session, fig, path, what: str) -> None:
    from pigpt.viz.figures import save

    try:
        save(fig, path)
    except OSError as e:
        raise UsageError(f"cannot write {path}: {e.strerror or e}") from None
    s.note(f"wrote {path} ({what})")


def run_compare(s: Session, prompts: list[str], ids: list[list[int]]) -> None:
    import dataclasses

    from pigpt.viz import figures
    from pigpt.viz.steps import compare_settings, label
    from pigpt.viz.terminal import render_compare

    a = s.args
    field, values = a.compare
    settings = [dataclasses.replace(s.params, **{field: v}, max_new_tokens=1, n=1, seed=0) for v in values]
    for p, (text, prompt_ids) in enumerate(zip(prompts, ids)):
        raw, dists = compare_settings(s.model, prompt_ids, settings)
        top = raw.topk(a.top_tokens).indices
        shown = top.tolist()
        columns = [(label(q), d[top].exp().tolist(), int(d.isfinite().sum())) for q, d in zip(settings, dists)]
        raw_p = raw[top].exp().tolist()
        if a.json:
            s.say(json.dumps({"prompt": text, "prompt_index": p, "tokens": shown,
                              "texts": [s.tok.decode([t]) for t in shown], "p_raw": raw_p,
                              "settings": [{"label": lab, field: v, "p": probs, "kept": k}
                                           for (lab, probs, k), v in zip(columns, values)]}))
        else:
            s.say(s.style.bold(f"── the next token after {text!r}, under {len(values)} settings"))
            s.say(render_compare(shown, raw_p, columns, s.tok, style=s.style))
            s.say()
        if p == 0 and a.plot:
            fig = figures.plot_compare(shown, raw_p, columns, s.tok, prompt_text=text)
            write_figure(s, fig, a.plot, f"{len(fig.axes)} panels, one per setting")


# -- main -----------------------------------------------------------------------------------------------------
def main(argv=None, out=None, err=None) -> int:
    out, err = out or sys.stdout, err or sys.stderr
    try:
        args = build_parser().parse_args(argv)
        validate(args)
        prompts = read_prompts(args)
        # the batch-invariant mode runs on the CPU: "auto" means the CPU then, even where CUDA is
        device = "cpu" if args.batch_invariant and args.device == "auto" else pick_device(args.device)
        model, source = load_model(args.model, device, args.dtype, args.quantize, args.batch_invariant)
        from pigpt.model import get_tokenizer

        tokenizer = get_tokenizer()
        ids = encode_prompts(model, tokenizer, prompts, 1 if args.compare else args.max_new_tokens)
        s = Session(args, model, tokenizer, out, err)
        if not args.json:
            quant = f", {args.quantize}" if args.quantize else ""
            quant += ", batch-invariant" if args.batch_invariant else ""
            s.note(f"model: {source} ({model.num_params() / 1e6:.1f}M parameters, {device}, {args.dtype}{quant})")
        if args.compare:
            run_compare(s, prompts, ids)
        elif args.num_beams:
            run_beams(s, prompts, ids)
        else:
            return run_sampling(s, prompts, ids) or 0
        return 0
    except UsageError as e:
        print(f"sample.py: error: {_one_line(str(e))}", file=err)
        return 2
    except SystemExit as e:  # --help
        return int(e.code or 0)
    except KeyboardInterrupt:
        print("\nsample.py: interrupted (Ctrl-C)", file=err)
        return EXIT_INTERRUPTED
    except BrokenPipeError:  # `python sample.py ... --json | head -1`: the reader left, which is fine
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 0


def _one_line(text: str) -> str:
    return " ".join(text.split())


if __name__ == "__main__":
    sys.exit(main())
