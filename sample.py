"""Rollouts from a prompt, with the model's distributions made visible.

A language model is a policy pi(y|x): at every time step a distribution over the next token. This script
draws rollouts from it (or searches the best ones with beam search) and shows why each token came out:
the next-token distribution at each step, raw beside what temperature / top-k / top-p / the repetition
penalty made of it, which token was drawn, and how the rollouts branch from one another.

Run `python sample.py --help` for every option and examples (EXAMPLES below). All bad input ends with one
line naming the problem and exit code 2.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import textwrap
from pathlib import Path

DEFAULT_RUN_DIR = "out"  # where `python train.py` saves its default run

EXAMPLES = """\
examples:
  python sample.py "Which is the largest ocean?" -n 8 --temperature 0.8 --show-steps
  python sample.py "Once upon a time" -n 6 --max-new-tokens 8 --tree tree.png
  python sample.py "def fibonacci(n):" --plot steps.png --top-k 20
  python sample.py "The capital of France is" --compare-temperatures 0.5,1,2 --plot temps.png
  python sample.py "The meaning of life is" --num-beams 4 --tree beams.png
  python sample.py --prompt-file prompts.txt -n 4 --json > rollouts.jsonl

model: --model DIR_OR_HUB_ID; without it, ./out (what `python train.py` writes) if it exists, else GPT-2
from the local Hugging Face cache or the hub.
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
    p.add_argument("prompt", nargs="?", help="the prompt text (or use --prompt-file)")
    p.add_argument("--prompt-file", metavar="FILE", help="read prompts from FILE, one per line (blank lines skipped)")

    g = p.add_argument_group("sampling")
    g.add_argument("-n", "--num-rollouts", type=int, default=1, metavar="N", help="rollouts per prompt (default 1)")
    g.add_argument("--temperature", type=float, default=1.0, metavar="T", help="divide the logits by T; 0 is greedy (default 1)")
    g.add_argument("--top-k", type=int, default=0, metavar="K", help="keep the k most likely tokens; 0 is off (default)")
    g.add_argument("--top-p", type=float, default=1.0, metavar="P", help="keep the smallest set with mass >= p; 1 is off (default)")
    g.add_argument("--repetition-penalty", type=float, default=1.0, metavar="R",
                   help="penalise tokens already in prompt or completion; 1 is off (default)")
    g.add_argument("--min-new-tokens", type=int, default=0, metavar="N", help="no stop token before this many tokens (default 0)")
    g.add_argument("--max-new-tokens", type=int, default=32, metavar="N", help="completion length cap (default 32)")
    g.add_argument("--stop", action="append", default=[], metavar="TEXT",
                   help="stop when the completion contains TEXT (repeatable); <|endoftext|> always stops")
    g.add_argument("--seed", type=int, default=None, metavar="S",
                   help="rollout i uses seed + i (default: a fresh seed, printed so you can replay it)")

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
    g.add_argument("--device", default="auto", help="cpu, cuda, cuda:1, ... (default: cuda if available)")
    g.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])

    g = p.add_argument_group("output")
    g.add_argument("--json", action="store_true",
                   help="JSON lines on stdout: prompt, text, tokens, logprobs, sum_logprob, finish_reason, seed")
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
    return p


def _check(cond: bool, message: str) -> None:
    if not cond:
        raise UsageError(message)


def _parse_list(text: str, flag: str, cast):
    try:
        values = [cast(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise UsageError(f"{flag} expects comma-separated {cast.__name__} values, got {text!r}") from None
    _check(bool(values), f"{flag} expects comma-separated values, got {text!r}")
    return values


def validate(args) -> None:
    """Every check that needs no model: bad values fail before anything is loaded."""
    _check(args.prompt is not None or args.prompt_file is not None,
           "no prompt: pass one as an argument (python sample.py \"Once upon a time\") or use --prompt-file")
    _check(args.prompt is None or args.prompt_file is None, "pass a prompt or --prompt-file, not both")
    _check(args.prompt is None or args.prompt != "", "the prompt is empty; give at least one character of text")
    _check(math.isfinite(args.temperature) and args.temperature >= 0,
           f"--temperature must be >= 0 (0 is greedy), got {args.temperature:g}")
    _check(args.top_k >= 0, f"--top-k must be >= 0 (0 turns top-k off), got {args.top_k}")
    _check(0 < args.top_p <= 1, f"--top-p must be in (0, 1] (1 turns top-p off), got {args.top_p:g}")
    _check(args.num_rollouts >= 1, f"-n/--num-rollouts must be >= 1, got {args.num_rollouts}")
    _check(args.repetition_penalty > 0,
           f"--repetition-penalty must be > 0 (1 turns it off), got {args.repetition_penalty:g}")
    _check(args.max_new_tokens >= 1, f"--max-new-tokens must be >= 1, got {args.max_new_tokens}")
    _check(args.min_new_tokens >= 0, f"--min-new-tokens must be >= 0, got {args.min_new_tokens}")
    _check(args.min_new_tokens <= args.max_new_tokens,
           f"--min-new-tokens ({args.min_new_tokens}) must be <= --max-new-tokens ({args.max_new_tokens})")
    _check(args.seed is None or 0 <= args.seed < 2**62, f"--seed must be in [0, 2**62), got {args.seed}")
    _check(args.top_tokens >= 1, f"--top-tokens must be >= 1, got {args.top_tokens}")
    _check(args.max_panels >= 1, f"--max-panels must be >= 1, got {args.max_panels}")
    _check(args.tree_depth >= 1, f"--tree-depth must be >= 1, got {args.tree_depth}")
    _check(args.num_beams >= 0, f"--num-beams must be >= 1 (or 0 to sample), got {args.num_beams}")
    if args.num_beams:
        k = args.num_return_sequences
        _check(k is None or 1 <= k <= args.num_beams,
               f"--num-return-sequences must be in [1, --num-beams={args.num_beams}], got {k}")
        _check(not args.stop, "--stop (stop strings) works with sampling only, not with --num-beams")
        _check(args.num_rollouts == 1, "-n/--num-rollouts is for sampling; with --num-beams use --num-return-sequences")
    else:
        _check(args.num_return_sequences is None, "--num-return-sequences needs --num-beams")
    for s in args.stop:
        _check(s != "", "--stop needs non-empty text")
    compares = [f for f in ("compare_temperatures", "compare_top_k", "compare_top_p") if getattr(args, f)]
    _check(len(compares) <= 1, "use one --compare-* option at a time")
    args.compare = None
    if compares:
        _check(not args.num_beams, "--compare-* shows sampling settings; drop --num-beams")
        _check(not args.tree, "--compare-* draws no rollouts, so there is no --tree to draw")
        flag = "--" + compares[0].replace("_", "-")
        if compares[0] == "compare_temperatures":
            values = _parse_list(args.compare_temperatures, flag, float)
            _check(all(math.isfinite(v) and v >= 0 for v in values), f"{flag}: temperatures must be >= 0")
        elif compares[0] == "compare_top_k":
            values = _parse_list(args.compare_top_k, flag, int)
            _check(all(v >= 0 for v in values), f"{flag}: top-k values must be >= 0")
        else:
            values = _parse_list(args.compare_top_p, flag, float)
            _check(all(0 < v <= 1 for v in values), f"{flag}: top-p values must be in (0, 1]")
        args.compare = (compares[0].removeprefix("compare_").replace("temperatures", "temperature"), values)
    from viz.figures import check_output_path

    for flag in ("plot", "tree"):
        path = getattr(args, flag)
        if path is not None:
            try:
                check_output_path(path)
            except ValueError as e:
                raise UsageError(f"--{flag} {e}") from None


def read_prompts(args) -> list[str]:
    if args.prompt is not None:
        return [args.prompt]
    try:
        text = Path(args.prompt_file).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        reason = e.strerror if isinstance(e, OSError) and e.strerror else str(e)
        raise UsageError(f"cannot read --prompt-file {args.prompt_file}: {reason}") from None
    prompts = [line for line in text.splitlines() if line.strip()]
    _check(bool(prompts), f"--prompt-file {args.prompt_file} holds no prompts (one per line)")
    return prompts


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


def default_model_dir() -> Path | None:
    """train.py's default run (./out, relative to the working directory like train.py's own default)."""
    run = Path(DEFAULT_RUN_DIR)
    return run if (run / "config.json").exists() else None


def load_model(spec: str | None, device: str, dtype: str):
    from model import GPT, CheckpointError

    if spec is not None:
        try:
            return GPT.from_pretrained(spec, device=device, dtype=dtype), spec
        except CheckpointError as e:
            raise UsageError(f"--model {spec}: {e}") from None
    run = default_model_dir()
    if run is not None:
        try:
            return GPT.from_pretrained(run, device=device, dtype=dtype), str(run)
        except CheckpointError as e:
            raise UsageError(f"the default model {run}: {e}") from None
    try:
        return GPT.from_pretrained("gpt2", device=device, dtype=dtype), "gpt2"
    except CheckpointError:
        raise UsageError(
            "no model: train the default one with `python train.py` (writes ./out, ~5 minutes on a CPU), "
            "or pass --model DIR (a Hugging Face GPT-2 checkpoint directory) or a hub id such as gpt2 when online"
        ) from None


def encode_prompts(tokenizer, prompts: list[str], block_size: int, max_new_tokens: int) -> list[list[int]]:
    out = []
    for i, text in enumerate(prompts):
        ids = tokenizer.encode(text, allowed_special="all")
        which = "the prompt" if len(prompts) == 1 else f"prompt {i + 1}"
        _check(bool(ids), f"{which} is empty")
        _check(len(ids) <= block_size - 1,
               f"{which} is {len(ids)} tokens, longer than the model's context of {block_size} tokens "
               "(with room for one new token); shorten it")
        _check(len(ids) + max_new_tokens <= block_size,
               f"{which} ({len(ids)} tokens) + --max-new-tokens {max_new_tokens} exceeds the model's context of "
               f"{block_size} tokens; use --max-new-tokens {block_size - len(ids)} or a shorter prompt")
        out.append(ids)
    return out


# -- streaming one rollout ------------------------------------------------------------------------------------
def stream_rollout(model, prompt: list[int], params, on_token=None):
    """One rollout, token by token, with exactly `decoding.generate`'s semantics (same tokens for a seed).

    generate() draws token t of a row from `sample_from_logits(..., seed, position=t)`: the draw depends only
    on (seed, position, processed logits), so a one-row loop over the same prefill, processors and kernel
    reproduces it while calling on_token(token, logprob) as each token arrives.
    """
    import torch

    from decoding.generate import Rollout, draw_seed
    from decoding.processors import apply_min_new_tokens, apply_repetition_penalty
    from decoding.prompts import check_prompts, check_stop_ids, prefill
    from decoding.stopping import StopStrings
    from kernels import sample_from_logits
    from model import get_tokenizer

    prompt = check_prompts(model, [prompt], params.max_new_tokens)[0]
    stop_ids = check_stop_ids(model, params.stop_token_ids)
    seed = params.seed if params.seed is not None else draw_seed()
    strings = StopStrings(params.stop, 1, params.min_new_tokens, get_tokenizer()) if params.stop else None
    seed_t = torch.tensor([seed], dtype=torch.long, device=model.device)
    history = list(prompt)
    tokens, logprobs, reason = [], [], "length"
    with torch.inference_mode():
        _, cache, logits = prefill(model, [prompt], params.max_new_tokens)  # (1, V)
        for t in range(params.max_new_tokens):
            if t > 0:
                logits = model(tok[:, None], cache, last_only=True)[:, -1].float()  # (1, V)
            if params.repetition_penalty != 1.0:
                logits = apply_repetition_penalty(logits, [history], params.repetition_penalty)
            logits = apply_min_new_tokens(logits, t, params.min_new_tokens, stop_ids)
            tok, lp = sample_from_logits(logits, seed=seed_t, position=t, temperature=params.temperature,
                                         top_k=params.top_k, top_p=params.top_p)  # (1,), (1,)
            token, logprob = int(tok[0]), float(lp[0])
            tokens.append(token)
            logprobs.append(logprob)
            history.append(token)
            if on_token is not None:
                on_token(token, logprob)
            if token in stop_ids or (strings is not None and strings.update([0], [token], t + 1)):
                reason = "stop"
                break
    return Rollout(tokens=tokens, logprobs=logprobs, finish_reason=reason, seed=seed)


# -- printing -------------------------------------------------------------------------------------------------
def completion_text(tokenizer, tokens: list[int], stop_ids) -> str:
    """The completion's text, without the stop token that ended it (the finish reason says so)."""
    if tokens and tokens[-1] in stop_ids:
        tokens = tokens[:-1]
    return tokenizer.decode(tokens)


def for_terminal(text: str) -> str:
    """Tabs as 4 spaces: the default model (train.py --tabs) indents with tabs, which terminals draw 8 wide."""
    return text.replace("\t", "    ")


def finish_note(tokenizer, tokens, reason, stop_ids) -> str:
    if reason == "stop" and tokens and tokens[-1] in stop_ids:
        from viz.text import show_token

        return f"stop at {show_token(tokenizer, tokens[-1])}"
    return "stop string" if reason == "stop" else "length (hit --max-new-tokens)"


def header(i: int, total: int, seed, tokens, logprobs, reason, note, kind: str = "rollout", extra: str = "") -> str:
    seed_part = f"  seed {seed}" if seed is not None else ""
    return (f"── {kind} {i + 1}/{total}{seed_part}  log π(y|x) = {sum(logprobs):.3f}{extra}  "
            f"({len(tokens)} token{'' if len(tokens) == 1 else 's'}, finish: {note})")


# -- the runs -------------------------------------------------------------------------------------------------
class Session:
    """Everything a run needs: parsed args, model, tokenizer, styles."""

    def __init__(self, args, model, tokenizer, out=sys.stdout, err=sys.stderr):
        from viz.terminal import Style, use_color

        self.args, self.model, self.tok = args, model, tokenizer
        self.out, self.err = out, err
        self.style = Style(use_color(out))

    def say(self, text: str = "") -> None:
        print(text, file=self.out, flush=True)

    def note(self, text: str) -> None:
        print(text, file=self.err, flush=True)

    # processing chains, for viz
    def processing(self):
        from viz.steps import Processing

        a = self.args
        if a.num_beams:
            mode = "beam"
        elif a.temperature == 0:
            mode = "greedy"
        else:
            mode = "sample"
        return Processing(temperature=a.temperature, top_k=a.top_k, top_p=a.top_p,
                          repetition_penalty=a.repetition_penalty, min_new_tokens=a.min_new_tokens,
                          stop_token_ids=self.stop_ids, mode=mode)

    @property
    def stop_ids(self):
        return (self.tok.eot_token,)

    def sampling_params(self):
        from decoding import SamplingParams

        a = self.args
        try:
            return SamplingParams(temperature=a.temperature, top_k=a.top_k, top_p=a.top_p,
                                  repetition_penalty=a.repetition_penalty, min_new_tokens=a.min_new_tokens,
                                  max_new_tokens=a.max_new_tokens, stop_token_ids=self.stop_ids,
                                  stop=tuple(a.stop), n=a.num_rollouts, seed=a.seed)
        except ValueError as e:  # validate() should have caught it; never show a traceback for bad input
            raise UsageError(str(e)) from None


def run_sampling(s: Session, prompts: list[str], ids: list[list[int]]) -> None:
    from decoding import generate

    a, params = s.args, s.sampling_params()
    stream = len(ids) == 1 and a.num_rollouts == 1 and not a.json
    if stream:
        print(s.style.dim(prompts[0]), end="", file=s.out, flush=True)

        def on_token(token, _lp):
            if token not in s.stop_ids:
                print(for_terminal(s.tok.decode([token])), end="", file=s.out, flush=True)

        results = [[stream_rollout(s.model, ids[0], params, on_token)]]
        s.say()
    else:
        results = generate(s.model, ids, params, progress=not a.json and sys.stderr.isatty() or _force_progress())
    proc = s.processing()
    for p, (text, prompt_ids, rollouts) in enumerate(zip(prompts, ids, results)):
        need_steps = a.show_steps or (p == 0 and (a.plot or a.tree))
        views = None
        if need_steps:
            from viz.steps import step_views

            views = step_views(s.model, prompt_ids, [r.tokens for r in rollouts], proc, top=a.top_tokens)
        report(s, text, prompt_ids, rollouts, views if a.show_steps else None, streamed=stream, prompt_index=p,
               n_prompts=len(prompts))
        if p == 0:
            pictures(s, text, prompt_ids, rollouts, views, proc)


def _force_progress() -> bool:
    return os.environ.get("PIGPT_PROGRESS") == "1"


def run_beams(s: Session, prompts: list[str], ids: list[list[int]]) -> None:
    from decoding import beam_search
    from viz.steps import Processing, step_views

    a = s.args
    k = a.num_return_sequences or a.num_beams
    early = {"true": True, "false": False, "never": "never"}[a.early_stopping]
    results = beam_search(s.model, ids, num_beams=a.num_beams, max_new_tokens=a.max_new_tokens,
                          length_penalty=a.length_penalty, early_stopping=early, num_return_sequences=k,
                          min_new_tokens=a.min_new_tokens, repetition_penalty=a.repetition_penalty,
                          stop_token_ids=s.stop_ids)
    proc = s.processing()
    for p, (text, prompt_ids, beams) in enumerate(zip(prompts, ids, results)):
        # per-token scores: log-softmax, then the penalties, as beam search adds them up (no renormalising)
        views = step_views(s.model, prompt_ids, [b.tokens for b in beams], proc, top=a.top_tokens)
        per_token = beam_token_scores(s.model, prompt_ids, [b.tokens for b in beams], proc)
        rollouts = [_BeamRollout(b.tokens, lps, _beam_reason(b.tokens, s.stop_ids, a.max_new_tokens), b.score)
                    for b, lps in zip(beams, per_token)]
        report(s, text, prompt_ids, rollouts, views if a.show_steps else None, streamed=False, prompt_index=p,
               n_prompts=len(prompts), beams=True)
        if p == 0:
            pictures(s, text, prompt_ids, rollouts, views, proc)


class _BeamRollout:
    def __init__(self, tokens, logprobs, finish_reason, score):
        self.tokens, self.logprobs, self.finish_reason, self.score, self.seed = tokens, logprobs, finish_reason, score, None


def _beam_reason(tokens, stop_ids, max_new_tokens) -> str:
    return "stop" if tokens and tokens[-1] in stop_ids else "length"


def beam_token_scores(model, prompt, completions, proc) -> list[list[float]]:
    """Each beam token's contribution to the beam's summed score (log-softmax then penalties)."""
    import torch

    from viz.steps import batch_raw_logits, processed_logprobs

    out = []
    for logits, c in zip(batch_raw_logits(model, prompt, completions), completions):
        lp = processed_logprobs(logits, prompt, c, proc)  # (T, V)
        out.append(lp[torch.arange(len(c)), torch.tensor(c, dtype=torch.long)].tolist() if c else [])
    return out


def report(s: Session, text, prompt_ids, rollouts, views, *, streamed, prompt_index, n_prompts, beams=False):
    a = s.args
    if a.json:
        for i, r in enumerate(rollouts):
            s.say(json.dumps(json_record(s, text, prompt_index, i, r, views[i] if views else None, beams)))
        return
    if n_prompts > 1:
        s.say(s.style.bold(f"══ prompt {prompt_index + 1}/{n_prompts}: {text!r}"))
    kind = "beam" if beams else "rollout"
    for i, r in enumerate(rollouts):
        note = finish_note(s.tok, r.tokens, r.finish_reason, s.stop_ids)
        extra = f"  score {r.score:.3f}" if beams else ""
        s.say(s.style.bold(header(i, len(rollouts), r.seed, r.tokens, r.logprobs, r.finish_reason, note, kind, extra)))
        if not streamed:
            s.say(s.style.dim(text) + for_terminal(completion_text(s.tok, r.tokens, s.stop_ids)))
        if views is not None:
            show_steps(s, prompt_ids, r.tokens, views[i])
        s.say()


def show_steps(s: Session, prompt_ids, tokens, views) -> None:
    from viz.terminal import render_step

    proc = s.processing()
    for view in views:
        context = s.tok.decode(list(prompt_ids) + list(tokens[:view.t]))
        s.say(render_step(view, s.tok, proc, context=context, style=s.style))
    raw = sum(v.token_raw_logprob for v in views)
    s.say(s.style.dim(f"   log p_model(y|x) = {raw:.3f} under the raw model; "
                      f"log π(y|x) = {sum(v.token_logprob for v in views):.3f} under the sampler's distribution"))


def json_record(s: Session, text, prompt_index, i, r, views, beams) -> dict:
    rec = {
        "prompt": text,
        "prompt_index": prompt_index,
        "index": i,
        "text": completion_text(s.tok, r.tokens, s.stop_ids),
        "tokens": list(r.tokens),
        "logprobs": [float(x) for x in r.logprobs],
        "sum_logprob": float(sum(r.logprobs)),
        "finish_reason": r.finish_reason,
        "seed": r.seed,
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


def pictures(s: Session, text, prompt_ids, rollouts, views, proc) -> None:
    a = s.args
    if not (a.plot or a.tree):
        return
    from viz import figures
    from viz.tree import build_tree

    completions = [r.tokens for r in rollouts]

    if a.plot:
        steps = views[0][: a.max_panels]
        if not steps:
            raise UsageError("--plot: the first rollout generated no tokens, so there is no step to draw")
        contexts = [s.tok.decode(list(prompt_ids) + completions[0][:t]) for t in range(len(steps))]
        fig = figures.plot_steps(steps, s.tok, proc, prompt_text=text, context_texts=contexts)
        n = len(fig.axes)
        write_figure(s, fig, a.plot, f"{n} panel{'s' if n > 1 else ''}, one per step of rollout 1")
    if a.tree:
        if proc.mode == "beam":
            probs = [[v.raw[v.token_index] for v in vs] for vs in views]
            title = f"{len(completions)} beams; edge label: p_model(token | path above)"
            labels = [f"score {r.score:.2f}, {r.finish_reason}" for r in rollouts]
        else:
            probs = [[v.processed[v.token_index] for v in vs] for vs in views]
            title = f"{len(completions)} rollouts ({proc.label()}); edge label: π(token | path above)"
            labels = [f"seed {r.seed}, {r.finish_reason}" for r in rollouts]
        d = a.tree_depth
        cut = [c[:d] for c in completions]
        probs = [p[:d] for p in probs]
        labels = [lab if len(c) <= d else "…" for c, lab in zip(completions, labels)]
        root = build_tree(cut, probs, labels)
        fig = figures.plot_tree(root, s.tok, prompt_text=text, title=title)
        from viz.tree import count_nodes

        write_figure(s, fig, a.tree, f"{len(fig.axes)} panel, {count_nodes(root)} nodes")


def write_figure(s: Session, fig, path, what: str) -> None:
    from viz.figures import save

    try:
        save(fig, path)
    except OSError as e:
        raise UsageError(f"cannot write {path}: {e.strerror or e}") from None
    s.note(f"wrote {path} ({what})")


def run_compare(s: Session, prompts: list[str], ids: list[list[int]]) -> None:
    import dataclasses

    import torch

    from viz import figures
    from viz.steps import distributions_under, next_token_logits
    from viz.terminal import render_compare

    a = s.args
    field, values = a.compare
    base = s.processing()
    settings = []
    for v in values:
        proc = dataclasses.replace(base, **{field: v})
        proc = dataclasses.replace(proc, mode="greedy" if proc.temperature == 0 else "sample")
        settings.append(proc)
    for p, (text, prompt_ids) in enumerate(zip(prompts, ids)):
        logits = next_token_logits(s.model, prompt_ids)  # (V,)
        raw = torch.log_softmax(logits, -1)
        dists = distributions_under(logits, prompt_ids, settings)
        top = raw.topk(a.top_tokens).indices
        shown = top.tolist()
        columns = [(q.label(), d[top].exp().tolist(), int(torch.isfinite(d).sum())) for q, d in zip(settings, dists)]
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
        device = pick_device(args.device)
        model, source = load_model(args.model, device, args.dtype)
        from model import get_tokenizer

        tokenizer = get_tokenizer()
        ids = encode_prompts(tokenizer, prompts, model.config.block_size,
                             1 if args.compare else args.max_new_tokens)
        s = Session(args, model, tokenizer, out, err)
        if not args.json:
            s.note(f"model: {source} ({model.num_params() / 1e6:.1f}M parameters, {device}, {args.dtype})")
        if args.compare:
            run_compare(s, prompts, ids)
        elif args.num_beams:
            run_beams(s, prompts, ids)
        else:
            run_sampling(s, prompts, ids)
        return 0
    except UsageError as e:
        print(f"sample.py: error: {_one_line(str(e))}", file=err)
        return 2
    except SystemExit as e:  # --help
        return int(e.code or 0)
    except KeyboardInterrupt:
        print(file=err)
        return 130
    except BrokenPipeError:  # `python sample.py ... --json | head -1`: the reader left, which is fine
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 0


def _one_line(text: str) -> str:
    return " ".join(text.split())


if __name__ == "__main__":
    sys.exit(main())
