"""SamplingParams: every knob of a sampling run, validated once, up front. The one settings object for
drawing from the policy: generate, stream, score, beam search (its processors and lengths) and the
pictures all read it."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from pigpt.kernels import MAX_SEED


@dataclass(frozen=True)
class SamplingParams:
    """How `generate` draws completions.

    temperature: 0 is greedy (argmax); > 0 divides the logits before top-k / top-p.
    top_k: keep the k most likely tokens (ties with the k-th survive, as in transformers); 0 is off.
    top_p: keep the smallest top set with probability mass >= top_p; 1.0 is off.
    repetition_penalty: transformers' (CTRL) penalty over prompt + completion tokens; 1.0 is off.
    min_new_tokens: stop tokens are masked until this many tokens were generated.
    max_new_tokens: completion length cap (finish_reason "length").
    stop_token_ids: tokens that end a completion (kept as its last token); None: the model's end-of-text
        id (model.config.eos_token_id); () for none.
    stop: stop strings; a completion ends with the token whose text completes one of them.
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
    repetition_penalty: float = 1.0
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
        _check_number("temperature", self.temperature, lo=0.0, hint=">= 0 (0 means greedy)")
        _check_int("top_k", self.top_k, lo=0, hint=">= 0 (0 disables top-k)")
        _check_number("top_p", self.top_p, lo=0.0, lo_open=True, hi=1.0, hint="in (0, 1] (1.0 disables top-p)")
        _check_number("repetition_penalty", self.repetition_penalty, lo=0.0, lo_open=True,
                      hint="> 0 (1.0 disables it)")
        _check_int("min_new_tokens", self.min_new_tokens, lo=0, hint=">= 0")
        _check_int("max_new_tokens", self.max_new_tokens, lo=1, hint=">= 1")
        if self.min_new_tokens > self.max_new_tokens:
            raise ValueError(
                f"SamplingParams.min_new_tokens ({self.min_new_tokens}) must be <= max_new_tokens "
                f"({self.max_new_tokens})"
            )
        _check_int("n", self.n, lo=1, hint=">= 1")
        if self.seed is not None:
            seeds = self.seed if isinstance(self.seed, Sequence) and not isinstance(self.seed, str) else None
            if seeds is not None:
                seeds = tuple(seeds)
                if not seeds:
                    raise ValueError("SamplingParams.seed as a list needs one seed per prompt, got an empty list")
                object.__setattr__(self, "seed", seeds)
            for s in seeds if seeds is not None else (self.seed,):
                _check_int("seed", s, lo=0, hint="in [0, 2**62), a list of those (one per prompt), or None "
                                                   "for a fresh seed")
                if s >= MAX_SEED:
                    raise ValueError(f"SamplingParams.seed must be in [0, 2**62), got {s}")

    @property
    def greedy(self) -> bool:
        return self.temperature == 0


def _check_number(name, value, *, lo=None, hi=None, lo_open=False, hint=""):
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ValueError(f"SamplingParams.{name} must be a finite number {hint}, got {value!r}")
    if lo is not None and (value < lo or (lo_open and value == lo)):
        raise ValueError(f"SamplingParams.{name} must be {hint}, got {value!r}")
    if hi is not None and value > hi:
        raise ValueError(f"SamplingParams.{name} must be {hint}, got {value!r}")


def _check_int(name, value, *, lo, hint):
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"SamplingParams.{name} must be an integer {hint}, got {value!r}")
    if value < lo:
        raise ValueError(f"SamplingParams.{name} must be {hint}, got {value!r}")


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
        values = (values,)
    out = tuple(values)
    for s in out:
        if not isinstance(s, str) or not s:
            raise ValueError(f"SamplingParams.stop must hold non-empty strings, got {s!r}")
    return out


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
