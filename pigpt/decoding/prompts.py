"""Inputs of a decoding run, checked once: prompts against the model, stop tokens, seeds, the tokenizer
for stop strings; and the left padding of ragged prompts."""

from __future__ import annotations

import random

import torch

from pigpt.kernels import MAX_SEED


def check_prompts(model, prompts, max_new_tokens: int, *, what: str = "prompt") -> list[list[int]]:
    """Validate a list of token-id lists against the model's vocabulary and context; return plain lists.
    `what` names the items in errors ("prompt", "completion")."""
    if isinstance(prompts, torch.Tensor):
        if prompts.dim() != 2:
            raise ValueError(f"{what}s as a tensor must be [batch, length], got shape {tuple(prompts.shape)}")
        prompts = prompts.tolist()
    if not isinstance(prompts, (list, tuple)) or not prompts:
        raise ValueError(f"{what}s must be a non-empty list of token-id lists, e.g. [tokenizer.encode('Hi')]")
    if all(isinstance(t, int) for t in prompts):
        raise ValueError(f"{what}s must be a list of token-id lists; wrap a single {what}: [{what}]")
    cfg = model.config
    out = []
    for i, p in enumerate(prompts):
        p = p.tolist() if isinstance(p, torch.Tensor) else list(p)
        if not p:
            raise ValueError(f"{what} {i} is empty; start it with at least one token (e.g. the end-of-text id "
                             f"{cfg.eos_token_id})")
        for tok in p:
            if isinstance(tok, bool) or not isinstance(tok, int) or not 0 <= tok < cfg.vocab_size:
                raise ValueError(
                    f"{what} {i} holds {tok!r}, not a token id in [0, {cfg.vocab_size}); encode text with "
                    "the model's tokenizer (model.get_tokenizer())"
                )
        if len(p) + max_new_tokens > cfg.block_size:
            room = cfg.block_size - max_new_tokens
            fix = (f"shorten the {what} (keep its last {room} tokens) or lower max_new_tokens" if room > 0 else
                   f"lower max_new_tokens below {cfg.block_size}")
            raise ValueError(
                f"{what} {i} has {len(p)} tokens and max_new_tokens is {max_new_tokens}: {len(p) + max_new_tokens} "
                f"exceeds the model's context of {cfg.block_size} tokens; {fix}"
            )
        out.append(p)
    return out


def stop_ids_of(model, stop_token_ids) -> list[int]:
    """The run's stop tokens: the given ids (checked), or the model's end-of-text id when None."""
    if stop_token_ids is None:
        eos = model.config.eos_token_id
        stop_token_ids = () if eos is None else (eos,)
    for tok in stop_token_ids:
        if not 0 <= tok < model.config.vocab_size:
            raise ValueError(f"stop token id {tok} is outside the vocabulary [0, {model.config.vocab_size})")
    return list(dict.fromkeys(stop_token_ids))


def tokenizer_for(model, tokenizer=None):
    """The tokenizer that turns tokens into text for stop strings: the one given, else GPT-2's when the
    model has GPT-2's vocabulary."""
    if tokenizer is not None:
        return tokenizer
    from pigpt.model import get_tokenizer

    enc = get_tokenizer()
    if model.config.vocab_size != enc.n_vocab:
        raise ValueError(f"stop strings need the model's tokenizer: its vocabulary has {model.config.vocab_size} "
                         f"tokens, GPT-2's {enc.n_vocab}; pass tokenizer=")
    return enc


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
