"""Inputs of a decoding run, checked once: prompts (text or token ids) against the model, stop tokens, seeds,
the tokenizer for stop strings; and the left padding of ragged prompts.

`check_prompts` is the one place prompts are taken in: text is encoded by decoding/text.py's
`encode_prompts`, and every prompt is checked against the vocabulary and the context here, for generate,
stream, beam_search, score and the command lines alike (they name the length setting by their flag)."""

from __future__ import annotations

import random

import torch

from pigpt.kernels import MAX_SEED

from .text import encode_prompts, is_text, tokenizer_for  # noqa: F401  (tokenizer_for: re-exported)

PROMPTS_HELP = "a str, or a non-empty list of prompts, each a str or a token-id list"


def check_prompts(model, prompts, max_new_tokens: int, *, what: str = "prompt", tokenizer=None, name=None,
                  length: str = "max_new_tokens") -> list[list[int]]:
    """Prompts as plain token-id lists, checked against the model's vocabulary and context.

    prompts: a str (one prompt), or a list (or [batch, length] tensor) whose items are each a str, a
    token-id list or a 1-D tensor; text is encoded in the model's text form (decoding/text.py). A bare list
    of ints is refused (one prompt, or a batch of one-token prompts?): wrap it, [ids].
    Errors name item i as name(i) (default "<what> i"; a command line numbers its prompts from 1) and the
    length setting as `length` (a command line passes its flag, e.g. --max-new-tokens).
    """
    if is_text(prompts):
        prompts = [prompts]
    if isinstance(prompts, torch.Tensor):
        if prompts.dim() != 2:
            raise ValueError(f"{what}s as a tensor must be [batch, length], got shape {tuple(prompts.shape)}")
        prompts = prompts.tolist()
    if not isinstance(prompts, (list, tuple)) or not prompts:
        raise ValueError(f"{what}s must be {PROMPTS_HELP}; got {_kind(prompts)}")
    if all(isinstance(t, int) for t in prompts):
        raise ValueError(f"{what}s must be a list of token-id lists (or text), not one list of ints (one {what}, "
                         f"or many one-token {what}s?); wrap a single {what}'s ids: [ids]")
    for i, p in enumerate(prompts):
        if not (is_text(p) or isinstance(p, (list, tuple)) or (isinstance(p, torch.Tensor) and p.dim() == 1)):
            raise ValueError(f"{what} {i} is {_kind(p)}; {what}s must be {PROMPTS_HELP}")
    prompts = encode_prompts(model, prompts, tokenizer, what=what)
    name = name or (lambda i: f"{what} {i}")
    cfg = model.config
    out = []
    for i, p in enumerate(prompts):
        p = p.tolist() if isinstance(p, torch.Tensor) else list(p)
        if not p:
            raise ValueError(f"{name(i)} is empty; start it with at least one token (e.g. '<|endoftext|>', the "
                             f"end-of-text id {cfg.eos_token_id})")
        for tok in p:
            if isinstance(tok, bool) or not isinstance(tok, int) or not 0 <= tok < cfg.vocab_size:
                raise ValueError(
                    f"{name(i)} holds {tok!r}, not a token id in [0, {cfg.vocab_size}); pass text, or encode it "
                    "with the model's tokenizer (pigpt.decoding.encode_prompts)"
                )
        _check_length(name(i), len(p), max_new_tokens, cfg.block_size, length, what)
        out.append(p)
    return out


def _check_length(which: str, n: int, max_new_tokens: int, context: int, length: str = "max_new_tokens",
                 what: str = "prompt") -> None:
    """The context-length check: n prompt tokens and max_new_tokens new ones must fit in the context."""
    if n + max_new_tokens <= context:
        return
    if n + min(max_new_tokens, 1) > context:  # the prompt alone leaves no room for a new token
        keep = context - max(max_new_tokens, 1)
        fix = (f"shorten it (keep its last {keep} tokens)" if keep > 0 else f"shorten it and lower {length}")
        raise ValueError(f"{which} is {n} tokens, longer than the model's context of {context} tokens (with room "
                         f"for one new token); {fix}")
    fix = (f"use {length} {context - n} or a shorter {what} (keep its last {context - max_new_tokens} tokens)"
           if max_new_tokens < context else f"lower {length} below {context} (to {context - n} for this {what})")
    raise ValueError(f"{which} is {n} tokens and {length} is {max_new_tokens}: {n + max_new_tokens} exceeds the "
                     f"model's context of {context} tokens; {fix}")


def _kind(x) -> str:
    return f"an empty {type(x).__name__}" if isinstance(x, (list, tuple)) and not x else \
        f"{type(x).__name__} {x!r}"[:80]


def stop_ids_of(model, stop_token_ids) -> list[int]:
    """The run's stop tokens: the given ids (checked), or the model's end-of-text id when None."""
    if stop_token_ids is None:
        eos = model.config.eos_token_id
        stop_token_ids = () if eos is None else (eos,)
    for tok in stop_token_ids:
        if not 0 <= tok < model.config.vocab_size:
            raise ValueError(f"stop token id {tok} is outside the vocabulary [0, {model.config.vocab_size})")
    return list(dict.fromkeys(stop_token_ids))


def draw_seed() -> int:
    """A fresh seed from the OS, leaving torch's global RNG alone."""
    return random.SystemRandom().randrange(MAX_SEED)


def rollout_seeds(seed, num_prompts: int, n: int, greedy: bool = False) -> list[int | None]:
    """The seed of every rollout, prompt-major (row p * n + i is rollout i of prompt p).

    An int s: s + p * n + i, so that every rollout of a batch draws its own noise. A list: seed[p] + i.
    None: a fresh seed per prompt, + i. Greedy decoding draws no noise: every seed is None.
    docs/decoding.md states the same rule.
    """
    if greedy:
        return [None] * (num_prompts * n)
    if seed is None:
        base = [draw_seed() for _ in range(num_prompts)]
    elif isinstance(seed, int):
        base = [seed + p * n for p in range(num_prompts)]
    else:
        if len(seed) != num_prompts:
            raise ValueError(f"SamplingParams.seed has {len(seed)} seeds for {num_prompts} prompts; "
                             "give one per prompt, or a single int")
        base = list(seed)
    seeds = [s + i for s in base for i in range(n)]
    if seeds and max(seeds) >= MAX_SEED:
        raise ValueError(f"seed {max(seeds)} (base seed + rollout index) is not below 2**62; use a smaller seed")
    return seeds


def left_pad(prompts: list[list[int]], device) -> tuple[torch.Tensor, list[int]]:
    """idx [B, P] with each prompt right-aligned, and pad[b] = slots of padding before row b's prompt."""
    P = max(len(p) for p in prompts)
    pad = [P - len(p) for p in prompts]
    # padding slots are never attended; fill them with the row's first token (harmless for the penalty too)
    rows = [[p[0]] * k + p for p, k in zip(prompts, pad)]
    return torch.tensor(rows, dtype=torch.long, device=device), pad
