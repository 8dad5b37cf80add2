"""score(): per-token log pi(y_t | x, y_<t) of given completions, batched, optionally with gradients.

Without params the log-probs are the raw model's (temperature 1, nothing processed): Rollout.model_logprobs.
With params they are those of the processed distribution generate drew from with those params
(the penalties, min_new_tokens and user processors, then temperature and the sampler's own top-k / top-p /
min-p / epsilon kept set): Rollout.logprobs. With grad=True they carry gradients to the model's parameters,
which is what a policy-gradient loss needs: a trainer that scores rollouts this way is exactly on-policy.
"""

from __future__ import annotations

import torch

from pigpt.kernels import token_logprobs
from pigpt.kernels.reference import logprob_at
from pigpt.model.head import fused_head

from .params import SamplingParams
from .processors import apply_processors
from .prompts import check_prompts, left_pad, stop_ids_of
from .text import encode_prompts, is_text


def score(model, prompts, completions, params: SamplingParams | None = None, *, grad: bool = False,
          keep=None, return_keep: bool = False, tokenizer=None):
    """Log-probabilities of each completion token given its prompt and the completion tokens before it.

    A prompt or a completion is a str or a token-id list; text is encoded in the model's text form with
    `tokenizer` (GPT-2's by default), as generate encodes prompts (decoding/text.py), a completion on its
    own (its tokens are what is scored: pass Rollout.tokens to score exactly what was drawn). A single
    prompt and completion give a 1-D float32 tensor [len(completion)]; lists of them give a list of such
    tensors, computed in one padded forward (a single prompt with a list of completions scores each
    completion after it). The LM head runs only at completion positions.

    For RL trainers (with params): return_keep=True also returns the top-k / top-p / min-p / epsilon kept sets
    the scores used (a bool mask over the scored tokens' vocabularies, or None when nothing is truncated); keep= scores
    the same prompts and completions on given kept sets: a frozen reference model, or the policy a few
    updates later, on the support the behaviour policy drew from.
    """
    single = _is_one(prompts) and _is_one(completions)
    if single:
        prompts, completions = [prompts], [completions]
    elif _is_one(prompts) and isinstance(completions, (list, tuple, torch.Tensor)):
        prompts = [prompts] * len(completions)
    if params is not None and not isinstance(params, SamplingParams):
        raise ValueError(f"params must be a SamplingParams or None, got {type(params).__name__}")
    prompts = check_prompts(model, prompts, 0, tokenizer=tokenizer)
    completions = _check_completions(model, prompts, encode_prompts(model, completions, tokenizer, what="completion"))
    if (keep is not None or return_keep) and params is None:
        raise ValueError("keep / return_keep are kept sets of a processed distribution: pass params")
    with torch.enable_grad() if grad else torch.inference_mode():
        out, kept = _score(model, prompts, completions, params, keep)
    out = out[0] if single else out
    return (out, kept) if return_keep else out


def _is_one(x) -> bool:
    """One prompt or completion: text or token ids ([] is one empty completion)."""
    if isinstance(x, torch.Tensor):
        return x.dim() == 1
    return is_text(x) or (isinstance(x, (list, tuple)) and all(isinstance(t, int) for t in x))


def _check_completions(model, prompts, completions) -> list[list[int]]:
    if isinstance(completions, torch.Tensor):
        completions = completions.tolist()
    if not isinstance(completions, (list, tuple)) or len(completions) != len(prompts):
        got = len(completions) if isinstance(completions, (list, tuple)) else type(completions).__name__
        raise ValueError(f"completions must be a list with one completion (a str or a token-id list) per prompt "
                         f"({len(prompts)}), got {got}")
    for i, c in enumerate(completions):
        if not (isinstance(c, (list, tuple)) or (isinstance(c, torch.Tensor) and c.dim() == 1)):
            raise ValueError(f"completion {i} is {type(c).__name__} {c!r:.60}; completions must each be a str or a "
                             "token-id list")
    out = [c.tolist() if isinstance(c, torch.Tensor) else list(c) for c in completions]
    V, ctx = model.config.vocab_size, model.config.block_size
    for i, (p, c) in enumerate(zip(prompts, out)):
        bad = next((t for t in c if isinstance(t, bool) or not isinstance(t, int) or not 0 <= t < V), None)
        if bad is not None:
            raise ValueError(f"completion {i} holds {bad!r}, not a token id in [0, {V}); pass text, or encode it "
                             "with the model's tokenizer (pigpt.decoding.encode_prompts)")
        if len(p) + len(c) - 1 > ctx:  # the last token is predicted, never fed
            fix = (f"shorten the prompt (keep its last {ctx - len(c) + 1} tokens)" if len(c) <= ctx else
                   f"the completion alone is longer than the context: score at most its first {ctx} tokens")
            raise ValueError(f"prompt {i} ({len(p)} tokens) + completion {i} ({len(c)} tokens) needs "
                             f"{len(p) + len(c) - 1} positions, more than the model's context of {ctx}; {fix}")
    return out


CHUNK = 256  # scored tokens per head product without gradients: [256, 50257] float32 is ~50 MB, reused


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
    step = torch.tensor([t for _, t in entries], dtype=torch.long, device=device)
    pos = torch.tensor([len(prompts[i]) - 1 + t for i, t in entries], dtype=torch.long, device=device)
    y = torch.tensor([completions[i][t] for i, t in entries], dtype=torch.long, device=device)
    hist = _history(prompts, completions, T, device) if params is not None else None
    if torch.is_grad_enabled() and params is not None and not params.logits_processors:
        # the fused head: one [tokens, vocab] buffer (the logits' gradient), built in cache-sized chunks
        lp, kept = _head_logprobs(h[row, pos], model.transformer.wte.weight, y, model, hist, row, step, params, keep)
        return _per_completion(lp, entries, lens), kept
    # Under autograd one product of the head serves all entries (the graph keeps them anyway); without it,
    # chunks keep the [tokens, vocab] intermediates small and in cache instead of a fresh ~400 MB each.
    size = len(entries) if torch.is_grad_enabled() else CHUNK
    lps, keeps = [], []
    for a in range(0, len(entries), size):
        sl = slice(a, a + size)
        logits = model.lm_head(h[row[sl], pos[sl]]).float()  # (m, V): the head only where a token is scored
        if params is None:
            lps.append(logprob_at(logits, y[sl]))
            continue
        scores = _processed(model, logits, hist, row[sl], step[sl], params)
        lp, kp = token_logprobs(scores, y[sl], **params.sampler, keep=None if keep is None else keep[sl],
                                return_keep=True)
        lps.append(lp)
        keeps.append(kp)
    kept = None if not keeps or keeps[0] is None else torch.cat(keeps)
    return _per_completion(torch.cat(lps), entries, lens), kept


def _per_completion(lp, entries, lens) -> list[torch.Tensor]:
    """t-major entries back to one tensor per completion (row-major order)."""
    order = sorted(range(len(entries)), key=lambda m: entries[m])
    return list(lp[torch.tensor(order, dtype=torch.long, device=lp.device)].split(lens))


def _head_logprobs(h, w, y, model, history, row, step, params, keep):
    """log p(y) under the processed distribution of `params` for hidden states h (M, C) and the tied head
    W (V, C), through model/head.py's fused head: returns (logp (M,), kept sets or None).

    Through autograd the same maths keeps half a dozen [M, V] tensors (logits, penalised, scaled, masked,
    their softmax, and as many gradients), each a fresh ~400 MB at M = 2048 that a CPU page-faults in. Here
    each chunk's logits, processors, kept set and softmax live in cache, and only dlogp/dlogits (M, V) is
    written: (onehot - softmax over the kept set) / T, times the penalty's factor on penalised tokens.
    Requires no user processors (they may be any torch code; score then runs the plain autograd path).
    """
    T1 = params.temperature if params.temperature > 0 else 1.0

    def chunk_fn(x, sl, y_sl, g):  # x (m, V) float32 logits of entries sl; g (m, V): dlogp/dlogits
        scores = _processed(model, x, history, row[sl], step[sl], params)
        lp, kp = token_logprobs(scores, y_sl, **params.sampler, keep=None if keep is None else keep[sl],
                                return_keep=True)
        # softmax over the kept set: exp(s - logsumexp) = exp(s - (s_y - lp)), 0 outside it
        s_y = scores.gather(1, y_sl[:, None])[:, 0] / T1
        torch.div(scores, T1, out=g).sub_((s_y - lp)[:, None]).exp_()
        if kp is not None:
            g.masked_fill_(~kp, 0.0)
        g.neg_().scatter_add_(1, y_sl[:, None], torch.ones_like(lp)[:, None])  # onehot - softmax
        g.mul_(1.0 / T1)
        if params.repetition_penalty != 1.0:  # d(penalised)/d(logit): pen below 0, 1/pen above, on seen ids
            seen = torch.zeros_like(g, dtype=torch.bool).scatter_(1, _ids(history, row[sl], step[sl]), True)
            pen = params.repetition_penalty
            g.mul_(torch.where(seen, torch.where(x < 0, pen, 1.0 / pen), 1.0))
        return lp, kp

    # batch-invariant: the model's own head, whose logits are then the decode steps' bit for bit
    logits_fn = model.lm_head if getattr(model, "batch_invariant", False) else None
    return fused_head(h, w, y, chunk_fn, dtype=torch.float32, chunk=GRAD_CHUNK, logits_fn=logits_fn)


GRAD_CHUNK = 64  # rows of [rows, vocab] float32 per chunk of the fused head: 64 x 50257 x 4 B ~ 13 MB


def _history(prompts, completions, T: int, device) -> tuple[torch.Tensor, int]:
    """(hist (N, P + T), P): every row's prompt, left-padded as generate pads it, then its completion, the
    tail filled with the row's first token (a no-op for the penalty)."""
    idx, _ = left_pad(prompts, device)  # (N, P)
    P = idx.shape[1]
    hist = torch.cat([idx, idx[:, :1].expand(-1, T)], 1)
    for i, c in enumerate(completions):
        hist[i, P:P + len(c)] = torch.tensor(c, dtype=torch.long)
    return hist, P


def _processed(model, logits, history, row, step, params):
    """The processors over scored entries (row i, step t) of logits (m, V), t-major, as generate ran them
    at step t: with input_ids = prompt i + completion i[:t]."""
    if not params.needs_history and params.min_new_tokens == 0:
        return logits  # nothing acts before temperature and the truncation rules
    stop_ids = stop_ids_of(model, params.stop_token_ids)
    hist, P = history
    if params.logits_processors:  # transformers' convention: one step (one history length) a call
        ts, counts = torch.unique_consecutive(step, return_counts=True)
        blocks = logits.split(counts.tolist())
        rows = row.split(counts.tolist())
        return torch.cat([apply_processors(b, params, hist[r, : P + int(t)], int(t), stop_ids)
                          for t, r, b in zip(ts, rows, blocks)])
    return apply_processors(logits, params, _ids(history, row, step), step, stop_ids)


def _ids(history, row, step) -> torch.Tensor:
    """input_ids of entries (row i, step t) at once (m, P + T): prompt i + completion i[:t], right-aligned as
    generate's are (the tokens generated so far in the last t columns, which the presence / frequency
    penalties count), after T - t copies of the row's first token (a no-op for every penalty)."""
    hist, P = history
    W = hist.shape[1]  # P + T
    src = torch.arange(W, device=hist.device)[None, :] - (W - P - step)[:, None]  # column j <- j - (T - t)
    ids = hist[row]
    return torch.where(src >= 0, ids.gather(1, src.clamp(min=0)), ids[:, :1])
