"""score(): per-token log pi(y_t | x, y_<t) of given completions, batched, optionally with gradients.

Without params the log-probs are the raw model's (temperature 1, nothing processed): Rollout.model_logprobs.
With params they are those of the processed distribution generate drew from with those params
(repetition penalty, min_new_tokens and user processors, then temperature and the sampler's own top-k /
top-p kept set): Rollout.logprobs. With grad=True they carry gradients to the model's parameters, which is
what a policy-gradient loss needs: a trainer that scores rollouts this way is exactly on-policy.
"""

from __future__ import annotations

import torch

from kernels import token_logprobs

from .params import SamplingParams
from .processors import apply_processors
from .prompts import check_prompts, left_pad, stop_ids_of


def score(model, prompts, completions, params: SamplingParams | None = None, *, grad: bool = False,
          keep=None, return_keep: bool = False):
    """Log-probabilities of each completion token given its prompt and the completion tokens before it.

    A single prompt and completion (lists of ints) give a 1-D float32 tensor [len(completion)]; lists of
    lists give a list of such tensors, computed in one padded forward (a single prompt with a list of
    completions scores each completion after it). The LM head runs only at completion positions.

    For RL trainers (with params): return_keep=True also returns the top-k / top-p kept sets the scores
    used (a bool mask over the scored tokens' vocabularies, or None when nothing is truncated); keep= scores
    the same prompts and completions on given kept sets: a frozen reference model, or the policy a few
    updates later, on the support the behaviour policy drew from.
    """
    single = _is_ids(prompts) and _is_ids(completions)
    if single:
        prompts, completions = [prompts], [completions]
    elif _is_ids(prompts):
        prompts = [prompts] * len(completions)
    if params is not None and not isinstance(params, SamplingParams):
        raise ValueError(f"params must be a SamplingParams or None, got {type(params).__name__}")
    prompts = check_prompts(model, prompts, 0)
    completions = _check_completions(model, prompts, completions)
    if (keep is not None or return_keep) and params is None:
        raise ValueError("keep / return_keep are kept sets of a processed distribution: pass params")
    with torch.enable_grad() if grad else torch.inference_mode():
        out, kept = _score(model, prompts, completions, params, keep)
    out = out[0] if single else out
    return (out, kept) if return_keep else out


def _is_ids(x) -> bool:
    if isinstance(x, torch.Tensor):
        return x.dim() == 1
    return isinstance(x, (list, tuple)) and all(isinstance(t, int) for t in x)  # [] is one empty completion


def _check_completions(model, prompts, completions) -> list[list[int]]:
    if isinstance(completions, torch.Tensor):
        completions = completions.tolist()
    if not isinstance(completions, (list, tuple)) or len(completions) != len(prompts):
        got = len(completions) if isinstance(completions, (list, tuple)) else type(completions).__name__
        raise ValueError(f"completions must be a list with one token-id list per prompt ({len(prompts)}), got {got}")
    out = [c.tolist() if isinstance(c, torch.Tensor) else list(c) for c in completions]
    nonempty = [i for i, c in enumerate(out) if c]
    if nonempty:
        check_prompts(model, [out[i] for i in nonempty], 0, what="completion")
    ctx = model.config.block_size
    for i, (p, c) in enumerate(zip(prompts, out)):
        if len(p) + len(c) - 1 > ctx:  # the last token is predicted, never fed
            raise ValueError(f"prompt {i} ({len(p)} tokens) + completion {i} ({len(c)} tokens) needs "
                             f"{len(p) + len(c) - 1} positions, more than the model's context of {ctx}; "
                             f"shorten the prompt (keep its last {max(ctx - len(c) + 1, 1)} tokens)")
    return out


def _score(model, prompts, completions, params, keep=None):
    device = model.device
    lens = [len(c) for c in completions]
    T = max(lens)
    empty = torch.zeros(0, dtype=torch.float32, device=device)
    if T == 0:
        return [empty for _ in completions], None
    # Right-padded rows prompt + completion[:-1]: with causal attention no real position sees the padding.
    rows = [p + c[:-1] for p, c in zip(prompts, completions)]
    width = max(len(r) for r in rows)
    idx = torch.zeros(len(rows), width, dtype=torch.long)
    for i, r in enumerate(rows):
        idx[i, :len(r)] = torch.tensor(r, dtype=torch.long)
    h = model.hidden(idx.to(device))  # (N, W, C)
    # completion tokens in t-major order, so that every step t is one contiguous block of entries
    entries = [(i, t) for t in range(T) for i in range(len(completions)) if t < lens[i]]
    row = torch.tensor([i for i, _ in entries], dtype=torch.long, device=device)  # (M,)
    pos = torch.tensor([len(prompts[i]) - 1 + t for i, t in entries], dtype=torch.long, device=device)
    y = torch.tensor([completions[i][t] for i, t in entries], dtype=torch.long, device=device)
    logits = model.lm_head(h[row, pos]).float()  # (M, V): the head only where a token is scored
    if params is None:
        lp = logits.gather(1, y[:, None])[:, 0] - torch.logsumexp(logits, -1)
    else:
        scores = _processed(model, logits, prompts, completions, lens, params)
        lp, keep = token_logprobs(scores, y, temperature=params.temperature, top_k=params.top_k, top_p=params.top_p,
                                  keep=keep, return_keep=True)
    # back to one tensor per completion: entry (i, t) sits at offset[t] + (rank of i among rows alive at t)
    order = sorted(range(len(entries)), key=lambda m: entries[m])  # row-major
    lp = lp[torch.tensor(order, dtype=torch.long, device=device)]
    return list(lp.split(lens)), keep


def _processed(model, logits, prompts, completions, lens, params):
    """The processors over every scored position, as generate ran them at each step t: the history of
    entry (i, t) is prompt i + completion i[:t], left-padded as in generate. logits (M, V) in t-major order."""
    if params.repetition_penalty == 1.0 and params.min_new_tokens == 0 and not params.logits_processors:
        return logits  # nothing acts before temperature / top-k / top-p
    stop_ids = stop_ids_of(model, params.stop_token_ids)
    device = logits.device
    idx, _ = left_pad(prompts, device)  # (N, P)
    P, T = idx.shape[1], max(lens)
    hist = torch.cat([idx, idx[:, :1].expand(-1, T)], 1)  # (N, P + T), the tail filled with a no-op id
    for i, c in enumerate(completions):
        hist[i, P:P + len(c)] = torch.tensor(c, dtype=torch.long)
    alive = [torch.tensor([i for i, n in enumerate(lens) if t < n], dtype=torch.long, device=device) for t in range(T)]
    if params.logits_processors:  # transformers' convention: one step (one history length) a call
        blocks = list(logits.split([a.numel() for a in alive]))
        return torch.cat([apply_processors(b, params, hist[a, : P + t], t, stop_ids)
                          for t, (a, b) in enumerate(zip(alive, blocks))])
    # the built-in processors take every entry at once: entry (i, t) sees hist[i] with the tokens from
    # position P + t on replaced by the row's first token (a no-op for the penalty)
    row, t = torch.cat(alive), torch.cat([torch.full((a.numel(),), t, device=device) for t, a in enumerate(alive)])
    ids = hist[row]  # (M, P + T)
    future = torch.arange(P + T, device=device)[None, :] >= (P + t)[:, None]
    ids = torch.where(future, ids[:, :1], ids)
    return apply_processors(logits, params, ids, t, stop_ids)
