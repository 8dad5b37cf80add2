"""score(): per-token log pi(y_t | x, y_<t) under the raw model distribution."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .prompts import check_prompts


@torch.inference_mode()
def score(model, prompt, completion) -> torch.Tensor:
    """Log-probabilities [len(completion)] (float32) of each completion token given the prompt and the tokens
    before it, under the model's raw softmax (no temperature, truncation or penalty).

    The prompt is prefilled once into a KV cache and only the completion's positions go through the LM head,
    so a long prompt costs one forward and no [T, vocab] logits.
    """
    (prompt,) = check_prompts(model, [prompt], 0, what="prompt")
    completion = completion.tolist() if isinstance(completion, torch.Tensor) else list(completion)
    if not completion:
        return torch.zeros(0, dtype=torch.float32, device=model.device)
    (completion,) = check_prompts(model, [completion], 0, what="completion")
    total = len(prompt) + len(completion)
    if total > model.config.block_size:
        raise ValueError(
            f"prompt ({len(prompt)} tokens) + completion ({len(completion)} tokens) = {total} tokens exceeds the "
            f"model's context of {model.config.block_size}; shorten the prompt"
        )
    device = model.device
    y = torch.tensor(completion, dtype=torch.long, device=device)  # (Tc,)
    cache = model.new_cache(1, total)
    first = model(torch.tensor([prompt], device=device), cache, last_only=True)[0]  # (1, V)
    if len(completion) > 1:
        rest = model(y[None, :-1], cache)[0]  # (Tc-1, V)
        logits = torch.cat([first, rest], dim=0)
    else:
        logits = first
    logp = F.log_softmax(logits.float(), dim=-1)  # (Tc, V)
    return logp.gather(1, y[:, None])[:, 0]
