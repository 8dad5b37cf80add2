"""Logits processors that run before sampling, with transformers' exact semantics, in one function.

`apply_processors` is the one place the order lives, as in transformers: repetition penalty, the
min_new_tokens mask, then the user's `SamplingParams.logits_processors`; temperature / top-k / top-p come
after, inside `kernels.sample_from_logits` (`sampler_logprobs` gives that last stage's log-probs, for
whoever shows them: the pictures). generate, the stream, beam search, score and the pictures all call it.
Processors act on float32 logits [B, V] (or log-probs, in beam search) and return a tensor of the same shape.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from pigpt.kernels import process_logits


def apply_repetition_penalty(logits: torch.Tensor, token_ids, penalty: float, *, inplace: bool = False):
    """transformers' RepetitionPenaltyLogitsProcessor: logits [B, V], token_ids [B, L] -> [B, V].

    For every distinct id in row b of `token_ids` (prompt + completion so far), its logit s becomes s * penalty
    if s < 0, else s / penalty: once per id, however often it occurs. `token_ids` is a LongTensor [B, L]
    (repeat an id already in the row to pad a ragged batch: repeats change nothing) or a list of B id lists.
    penalty == 1.0 returns `logits` unchanged. With inplace=False the input is not modified.
    """
    if penalty == 1.0:
        return logits
    ids = _as_id_matrix(token_ids, logits.shape[0], logits.device)  # (B, L)
    if ids.shape[1] == 0:
        return logits
    if logits.requires_grad:
        # gather/scatter would hand a repeated id's gradient back once per occurrence: a mask sees it once
        seen = torch.zeros_like(logits, dtype=torch.bool).scatter_(1, ids, True)  # (B, V)
        return torch.where(seen, torch.where(logits < 0, logits * penalty, logits / penalty), logits)
    seen = logits.gather(1, ids)  # (B, L)
    # every occurrence of an id reads the same unpenalised logit, so duplicate writes agree
    seen = torch.where(seen < 0, seen * penalty, seen / penalty)
    out = logits if inplace else logits.clone()
    return out.scatter_(1, ids, seen)


def apply_min_new_tokens(logits: torch.Tensor, num_generated, min_new_tokens: int, stop_token_ids,
                         *, inplace: bool = False):
    """transformers' MinNewTokensLengthLogitsProcessor: logits [B, V] -> [B, V].

    While `num_generated` (tokens already generated in the completion: 0 for the first new token; an int,
    or a tensor [B] with one count per row) is below `min_new_tokens`, the logits of `stop_token_ids`
    (ints, or a LongTensor) are set to -inf. With inplace=False the input is not modified.
    """
    if len(stop_token_ids) == 0 or min_new_tokens == 0:
        return logits
    if not isinstance(num_generated, torch.Tensor) and num_generated >= min_new_tokens:
        return logits
    stop = torch.as_tensor(stop_token_ids, dtype=torch.long, device=logits.device)
    out = logits if inplace else logits.clone()
    if isinstance(num_generated, torch.Tensor):
        rows = (num_generated < min_new_tokens).nonzero()[:, 0]
        out[rows[:, None], stop[None, :]] = float("-inf")
    else:
        out[:, stop] = float("-inf")
    return out


def apply_processors(scores: torch.Tensor, params, input_ids: torch.Tensor, num_generated: int, stop_ids,
                     *, inplace: bool = False) -> torch.Tensor:
    """transformers' processors, in its order: scores [B, V] -> [B, V].

    input_ids [B, L]: prompt + the tokens generated so far (left padding repeats the row's first token,
    which changes nothing for the penalty); num_generated: tokens already generated (0 for the first), an
    int or, for rows at different steps (score), a tensor [B] (user processors then need one step a call);
    stop_ids: the run's stop tokens (min_new_tokens masks them). Differentiable when not inplace: score
    recomputes log-probs with gradients through it. With inplace=False `scores` is never modified.
    """
    out = apply_repetition_penalty(scores, input_ids, params.repetition_penalty, inplace=inplace)
    out = apply_min_new_tokens(out, num_generated, params.min_new_tokens, stop_ids,
                               inplace=inplace or out is not scores)
    for proc in params.logits_processors:
        if out is scores and not inplace:
            out = scores.clone()  # user processors may write in place, as transformers' own do
        out = proc(input_ids, out)
        if not isinstance(out, torch.Tensor) or out.shape != scores.shape:
            got = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
            raise ValueError(f"logits processor {proc!r} returned {got}, not scores of shape {tuple(scores.shape)}")
    return out


def sampler_logprobs(scores: torch.Tensor, params) -> torch.Tensor:
    """Log-probs (B, V) of the distribution a sampling step draws from, given its scores after
    `apply_processors`: temperature, top-k and top-p as the sampler applies them (kernels.process_logits),
    -inf outside the kept set."""
    return process_logits(scores, temperature=params.temperature, top_k=params.top_k, top_p=params.top_p)


def _as_id_matrix(token_ids, batch: int, device) -> torch.Tensor:
    if isinstance(token_ids, torch.Tensor):
        ids = token_ids.to(device=device, dtype=torch.long)
        if ids.dim() == 1:
            ids = ids.expand(batch, -1)
    else:
        rows = [list(r) for r in token_ids]
        if isinstance(token_ids, Sequence) and len(rows) != batch:
            raise ValueError(f"token_ids has {len(rows)} rows for {batch} rows of logits")
        width = max((len(r) for r in rows), default=0)
        # pad each row with one of its own ids (a no-op for the penalty); an empty row pads with nothing
        padded = [r + [r[0]] * (width - len(r)) if r else None for r in rows]
        if any(p is None for p in padded) and width:
            raise ValueError("apply_repetition_penalty: pass a tensor to mix empty and non-empty rows")
        ids = torch.tensor(padded if width else [[]] * batch, dtype=torch.long, device=device)
    if ids.dim() != 2 or ids.shape[0] != batch:
        raise ValueError(f"token_ids must be [batch={batch}, length], got shape {tuple(ids.shape)}")
    return ids
