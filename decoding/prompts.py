"""Prompt validation and the shared prefill: ragged prompts, left-padded, one forward for all of them."""

from __future__ import annotations

import torch

from model import EOT_TOKEN


def check_prompts(model, prompts, max_new_tokens: int, *, what: str = "prompts") -> list[list[int]]:
    """Validate a list of token-id lists against the model's vocabulary and context; return plain lists."""
    if isinstance(prompts, torch.Tensor):
        if prompts.dim() != 2:
            raise ValueError(f"{what} as a tensor must be [batch, length], got shape {tuple(prompts.shape)}")
        prompts = prompts.tolist()
    if not isinstance(prompts, (list, tuple)) or not prompts:
        raise ValueError(f"{what} must be a non-empty list of token-id lists, e.g. [tokenizer.encode('Hi')]")
    if all(isinstance(t, int) for t in prompts):
        raise ValueError(f"{what} must be a list of token-id lists; wrap a single prompt: [prompt]")
    cfg = model.config
    out = []
    for i, p in enumerate(prompts):
        p = p.tolist() if isinstance(p, torch.Tensor) else list(p)
        if not p:
            raise ValueError(f"prompt {i} is empty; start it with at least one token (e.g. EOT_TOKEN={EOT_TOKEN})")
        for tok in p:
            if isinstance(tok, bool) or not isinstance(tok, int) or not 0 <= tok < cfg.vocab_size:
                raise ValueError(
                    f"prompt {i} holds {tok!r}, not a token id in [0, {cfg.vocab_size}); encode text with "
                    "model.get_tokenizer()"
                )
        if len(p) + max_new_tokens > cfg.block_size:
            raise ValueError(
                f"prompt {i} has {len(p)} tokens and max_new_tokens is {max_new_tokens}: {len(p) + max_new_tokens} "
                f"exceeds the model's context of {cfg.block_size} tokens; shorten the prompt (keep its last "
                f"{max(cfg.block_size - max_new_tokens, 0)} tokens) or lower max_new_tokens"
            )
        out.append(p)
    return out


def check_stop_ids(model, stop_token_ids) -> list[int]:
    for tok in stop_token_ids:
        if not 0 <= tok < model.config.vocab_size:
            raise ValueError(f"stop token id {tok} is outside the vocabulary [0, {model.config.vocab_size})")
    return list(dict.fromkeys(stop_token_ids))


def left_pad(prompts: list[list[int]], device) -> tuple[torch.Tensor, list[int]]:
    """idx [B, P] with each prompt right-aligned, and pad[b] = slots of padding before row b's prompt."""
    P = max(len(p) for p in prompts)
    pad = [P - len(p) for p in prompts]
    # padding slots are never attended; fill them with the row's first token (harmless for the penalty too)
    rows = [[p[0]] * k + p for p, k in zip(prompts, pad)]
    return torch.tensor(rows, dtype=torch.long, device=device), pad


@torch.inference_mode()
def prefill(model, prompts: list[list[int]], max_new_tokens: int):
    """One forward over all prompts. Returns (idx [B, P], cache with room for max_new_tokens, logits [B, V])."""
    idx, pad = left_pad(prompts, model.device)  # (B, P)
    cache = model.new_cache(idx.shape[0], idx.shape[1] + max_new_tokens, pad=pad)
    logits = model(idx, cache, last_only=True)[:, -1].float()  # (B, V)
    return idx, cache, logits
