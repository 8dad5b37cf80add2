"""SamplingParams: every knob of a sampling run, validated once, up front."""

from __future__ import annotations

import math
from dataclasses import dataclass

from model import EOT_TOKEN

MAX_SEED = 2**62  # seeds (and seed + n) stay well inside int64


@dataclass(frozen=True)
class SamplingParams:
    """How `generate` draws completions.

    temperature: 0 is greedy (argmax); > 0 divides the logits before top-k / top-p.
    top_k: keep the k most likely tokens (ties with the k-th survive, as in transformers); 0 is off.
    top_p: keep the smallest top set with probability mass >= top_p; 1.0 is off.
    repetition_penalty: transformers' (CTRL) penalty over prompt + completion tokens; 1.0 is off.
    min_new_tokens: stop tokens are masked until this many tokens were generated.
    max_new_tokens: completion length cap (finish_reason "length").
    stop_token_ids: tokens that end a completion (kept as its last token).
    stop: stop strings; a completion ends with the token whose text completes one of them.
    n: rollouts per prompt. seed: rollout i uses seed + i; None draws a fresh seed per prompt.
    """

    temperature: float = 1.0
    top_k: int = 0
    top_p: float = 1.0
    repetition_penalty: float = 1.0
    min_new_tokens: int = 0
    max_new_tokens: int = 64
    stop_token_ids: tuple[int, ...] = (EOT_TOKEN,)
    stop: tuple[str, ...] = ()
    n: int = 1
    seed: int | None = None

    def __post_init__(self):
        # normalise lists to tuples so that params stay hashable and immutable
        object.__setattr__(self, "stop_token_ids", _int_tuple("stop_token_ids", self.stop_token_ids))
        object.__setattr__(self, "stop", _str_tuple(self.stop))
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
            _check_int("seed", self.seed, lo=0, hint=f"in [0, 2**62) or None for a fresh seed")
            if self.seed >= MAX_SEED:
                raise ValueError(f"SamplingParams.seed must be in [0, 2**62) or None, got {self.seed}")

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
