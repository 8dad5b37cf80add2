"""SamplingParams: every knob of a sampling run, validated once, up front. The one settings object for
drawing from the policy: generate, stream, score, beam search (its processors and lengths) and the
pictures all read it.

`check_sampling` is the one check of sampling settings: SamplingParams runs it on every field, and the
command lines (pigpt-sample, pigpt-train, GRPO) run it on their flags before loading anything, naming each
setting as the user did (`--top-p must be in (0, 1] (1 turns top-p off), got 1.5`). The ranges of the
sampler's own settings (temperature, top_k, top_p, min_p, typical_p, epsilon_cutoff, eta_cutoff, seed) are the
kernel's rules
(kernels.params.RULES).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from pigpt.kernels.params import RULES, check_value


@dataclass(frozen=True)
class SamplingParams:
    """How `generate` draws completions.

    temperature: 0 is greedy (argmax); > 0 divides the logits before top-k / top-p.
    top_k: keep the k most likely tokens (ties with the k-th survive, as in transformers); 0 is off.
    top_p: keep the smallest top set with probability mass >= top_p; 1.0 is off.
    min_p: keep the tokens with probability >= min_p * (the most likely token's); 0.0 is off.
    typical_p: typical sampling (transformers' TypicalLogitsWarper): keep the tokens whose -log p is closest to
        the entropy until their mass reaches typical_p; 1.0 is off.
    epsilon_cutoff: keep the tokens with probability >= epsilon_cutoff (over the tokens kept so far), and the
        most likely always; 0.0 is off. The rules run in transformers' order: temperature, top-k, top-p,
        min-p, typical, epsilon, eta (docs/sampling.md).
    eta_cutoff: epsilon sampling with the cutoff min(eta_cutoff, sqrt(eta_cutoff) * exp(-entropy)) (the
        entropy of the tokens kept so far; transformers' EtaLogitsWarper); 0.0 is off.
    repetition_penalty: transformers' (CTRL) penalty over prompt + completion tokens; 1.0 is off.
    presence_penalty, frequency_penalty: vLLM's / OpenAI's additive penalties over the completion's tokens so
        far: a token generated c times loses frequency_penalty * c + presence_penalty * (c > 0) of its logit,
        after the repetition penalty and before temperature (decoding/processors.py); 0.0 is off, [-2, 2].
    min_new_tokens: stop tokens are masked until this many tokens were generated.
    max_new_tokens: completion length cap (finish_reason "length").
    stop_token_ids: tokens that end a completion (kept as its last token); None: the model's end-of-text
        id (model.config.eos_token_id); () for none.
    stop: stop strings; a completion ends with the token whose text completes one of them (as text is
        typed: matched in the model's text form, decoding.text.stop_strings).
    n: rollouts per prompt.
    seed: an int s: rollout i of prompt p uses seed s + p * n + i (every rollout of the batch its own
        noise); a list of one seed per prompt: rollout i of prompt p uses seed[p] + i; None: a fresh seed
        per prompt. A rollout depends only on (model, prompt, params, its seed): Rollout.seed replays it
        alone with n=1.
    logits_processors: callables in transformers' LogitsProcessor convention,
        (input_ids [B, L] = prompt + tokens so far, scores [B, V]) -> scores, applied after the repetition
        penalty and min_new_tokens and before temperature / top-k / top-p, as transformers applies a
        `logits_processor=` list (its own processor objects work unchanged).
    """

    temperature: float = 1.0
    top_k: int = 0
    top_p: float = 1.0
    min_p: float = 0.0
    typical_p: float = 1.0
    epsilon_cutoff: float = 0.0
    eta_cutoff: float = 0.0
    repetition_penalty: float = 1.0
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    min_new_tokens: int = 0
    max_new_tokens: int = 64
    stop_token_ids: tuple[int, ...] | None = None
    stop: tuple[str, ...] = ()
    n: int = 1
    seed: int | tuple[int, ...] | None = None
    logits_processors: tuple[Callable, ...] = ()

    def __post_init__(self):
        # normalise lists to tuples so that params stay hashable and immutable
        if self.stop_token_ids is not None:
            object.__setattr__(self, "stop_token_ids", _int_tuple("stop_token_ids", self.stop_token_ids))
        object.__setattr__(self, "stop", _str_tuple(self.stop))
        object.__setattr__(self, "logits_processors", _callables(self.logits_processors))
        if self.seed is not None and isinstance(self.seed, Sequence) and not isinstance(self.seed, str):
            seeds = tuple(self.seed)
            if not seeds:
                raise ValueError("SamplingParams.seed as a list needs one seed per prompt, got an empty list")
            object.__setattr__(self, "seed", seeds)
        check_sampling({f: getattr(self, f) for f in SETTINGS})

    @property
    def greedy(self) -> bool:
        return self.temperature == 0

    @property
    def sampler(self) -> dict:
        """The sampler's own settings, under kernels.sample_from_logits / token_logprobs / process_logits'
        keyword names: every caller passes them through this one dict."""
        return {f: getattr(self, f) for f in SAMPLER}

    @property
    def needs_history(self) -> bool:
        """Whether a processor reads the tokens so far (the penalties, user processors)."""
        return bool(self.repetition_penalty != 1.0 or self.presence_penalty or self.frequency_penalty
                    or self.logits_processors)

    @property
    def truncates(self) -> bool:
        """Whether a truncation rule (top-k, top-p, min-p, typical, epsilon, eta) is on."""
        return bool(self.top_k or self.top_p < 1 or self.min_p > 0 or self.typical_p < 1 or self.epsilon_cutoff > 0
                    or self.eta_cutoff > 0)


# the kernel's settings, in its order
SAMPLER = ("temperature", "top_k", "top_p", "min_p", "typical_p", "epsilon_cutoff", "eta_cutoff")


# field: (kind, ok, what is allowed): the settings' rules besides the kernel's (kernels.params.RULES)
SETTINGS = {
    "temperature": ("number", None, None),
    "top_k": ("integer", None, None),
    "top_p": ("number", None, None),
    "min_p": ("number", None, None),
    "typical_p": ("number", None, None),
    "epsilon_cutoff": ("number", None, None),
    "eta_cutoff": ("number", None, None),
    "repetition_penalty": ("number", lambda v: v > 0, "> 0 (1 turns it off)"),
    "presence_penalty": ("number", lambda v: -2 <= v <= 2, "in [-2, 2] (0 turns it off)"),  # vLLM's / OpenAI's range
    "frequency_penalty": ("number", lambda v: -2 <= v <= 2, "in [-2, 2] (0 turns it off)"),
    "min_new_tokens": ("integer", lambda v: v >= 0, ">= 0"),
    "max_new_tokens": ("integer", lambda v: v >= 1, ">= 1"),
    "n": ("integer", lambda v: v >= 1, ">= 1"),
    "seed": ("integer", None, None),  # None (a fresh seed) or one per prompt are SamplingParams' own forms
    "stop": ("strings", None, None),
}


def check_sampling(settings: dict, name=None) -> None:
    """The one check of sampling settings: raise ValueError naming the first bad one, and why.

    settings: any of SETTINGS' fields and their values (a seed may be None or a list, one per prompt).
    name(field) -> what the user calls the setting: a command line passes its flags (see `flag`); the
    default is "SamplingParams.<field>". min_new_tokens must not exceed max_new_tokens when both are given.
    """
    name = name or (lambda f: f"SamplingParams.{f}")
    for field, value in settings.items():
        if field not in SETTINGS:
            raise ValueError(f"unknown sampling setting {field!r}; known: {', '.join(SETTINGS)}")
        kind, ok, allowed = SETTINGS[field]
        if field == "seed" and value is None:
            continue
        if kind == "strings":
            for v in (value,) if isinstance(value, str) else value:
                if not isinstance(v, str) or not v:
                    raise ValueError(f"{name(field)} must hold non-empty strings, got {v!r}")
            continue
        allowed = allowed or RULES[field][2]
        for v in value if field == "seed" and isinstance(value, (list, tuple)) else (value,):
            if not _is_number(v, integer=kind == "integer"):
                what = "an integer" if kind == "integer" else "a finite number"
                raise ValueError(f"{name(field)} must be {what} {allowed}, got {v!r}")
            if ok is None:
                check_value(field, v, name(field))  # the kernel's rule
            elif not ok(v):
                raise ValueError(f"{name(field)} must be {allowed}, got {v!r}")
    lo, hi = settings.get("min_new_tokens"), settings.get("max_new_tokens")
    if lo is not None and hi is not None and lo > hi:
        raise ValueError(f"{name('min_new_tokens')} ({lo}) must be <= {name('max_new_tokens')} ({hi})")


def _is_number(v, integer: bool) -> bool:
    if isinstance(v, bool) or not isinstance(v, int if integer else (int, float)):
        return False
    return integer or math.isfinite(v)


def flag(field: str) -> str:
    """A setting's command-line flag: max_new_tokens -> --max-new-tokens."""
    return "--" + field.replace("_", "-")


def _int_tuple(name, values) -> tuple[int, ...]:
    if isinstance(values, int) and not isinstance(values, bool):
        values = (values,)
    try:
        out = tuple(values)
    except TypeError:
        raise ValueError(f"SamplingParams.{name} must be a sequence of token ids, got {values!r}") from None
    for v in out:
        if isinstance(v, bool) or not isinstance(v, int) or v < 0:
            raise ValueError(f"SamplingParams.{name} must hold non-negative token ids, got {v!r}")
    return out


def _str_tuple(values) -> tuple[str, ...]:
    if isinstance(values, str):
        return (values,)
    try:
        return tuple(values)  # check_sampling checks the strings
    except TypeError:
        raise ValueError(f"SamplingParams.stop must be a list of stop strings, got {values!r}") from None


def _callables(values) -> tuple[Callable, ...]:
    if callable(values):
        values = (values,)
    try:
        out = tuple(values)
    except TypeError:
        raise ValueError(f"SamplingParams.logits_processors must be a list of callables, got {values!r}") from None
    for f in out:
        if not callable(f):
            raise ValueError(f"SamplingParams.logits_processors must hold callables "
                             f"(input_ids, scores) -> scores, got {f!r}")
    return out
