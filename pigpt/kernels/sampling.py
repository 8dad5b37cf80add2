"""The public entry point: validation, backend choice, per-row keys."""

import os

import torch

from .params import check_logits, normalize_cutoffs, normalize_params
from .reference import logprob_at
from .sampling_torch import keep_bounds, sample_torch

ENV_BACKEND = "PIGPT_SAMPLING_BACKEND"
BACKENDS = ("auto", "torch", "triton")


def resolve_backend(backend: str, device: torch.device) -> str:
    """'auto' -> $PIGPT_SAMPLING_BACKEND if set, else 'triton' on CUDA and 'torch' elsewhere."""
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    if backend == "auto":
        backend = os.environ.get(ENV_BACKEND, "").strip().lower() or "auto"
        if backend not in BACKENDS:
            raise ValueError(f"${ENV_BACKEND} must be one of {BACKENDS[1:]}, got {backend!r}")
    if backend == "auto":
        backend = "triton" if device.type == "cuda" else "torch"
    return backend


def sample_from_logits(logits, *, temperature=1.0, top_k=0, top_p=1.0, min_p=0.0, typical_p=1.0, epsilon_cutoff=0.0,
                       eta_cutoff=0.0, seed=0, position=0, backend="auto"):
    """Draw one token per row of logits (B, V): returns (tokens int64 (B,), logprobs float32 (B,)).

    transformers' order: logits / temperature -> top-k (ties with the k-th value kept; 0 or >= V = off)
    -> top-p (smallest top set with mass >= p, crossing token and its ties included; 1 = off) -> min-p
    (keep p >= min_p * p_max; 0 = off) -> typical (the tokens with -log p closest to the entropy, until their
    mass reaches typical_p, crossing token and ties included; 1 = off) -> epsilon (keep p >= epsilon_cutoff,
    p over the tokens kept so far, and the most likely kept token always; 0 = off) -> eta (epsilon with the
    cut min(eta, sqrt(eta) * exp(-entropy)); 0 = off) -> draw.
    temperature 0 is greedy: token = argmax(logits), logprob = log_softmax(logits)[token] over the raw row.
    The draw is an exponential race (Gumbel-max) with noise hashed from (seed, position, id), in two levels
    (64-token groups by kept mass, then the winning group's tokens; exact): no RNG state, and a row's token
    does not depend on its batch. logprobs are those of the processed distribution.
    NaN / +inf logits raise ValueError on the torch path (see docs/sampling.md for the Triton path).
    """
    check_logits(logits)
    T, k, p, seed_t, pos_t = normalize_params(logits, temperature, top_k, top_p, seed, position)
    lmp, eps, eta, typ = normalize_cutoffs(logits, min_p, epsilon_cutoff, eta_cutoff, typical_p)
    if logits.shape[0] == 0:  # e.g. every rollout already finished
        return (torch.empty(0, dtype=torch.int64, device=logits.device),
                torch.empty(0, dtype=torch.float32, device=logits.device))
    if resolve_backend(backend, logits.device) == "triton":
        from .sampling_triton import sample_triton  # imported lazily: triton is optional on CPU

        return sample_triton(logits, T, k, p, seed_t, pos_t, lmp=lmp, eps=eps, eta=eta, typ=typ)
    return sample_torch(logits, T, k, p, seed_t, pos_t, lmp, eps, eta, typ)


def token_logprobs(logits, tokens, *, temperature=1.0, top_k=0, top_p=1.0, min_p=0.0, typical_p=1.0,
                   epsilon_cutoff=0.0, eta_cutoff=0.0, keep=None, return_keep=False):
    """log p(tokens) (B,) float32 under the distribution `sample_from_logits` draws from, differentiable in
    `logits` (B, V): the same kept set (the sampler's own thresholds, found without gradients), then a
    log-softmax over it. These are the numbers sample_from_logits reports as log-probs, so a trainer that
    recomputes them with gradients scores exactly the distribution the tokens were drawn from.
    temperature 0 is greedy: log_softmax(logits)[token] over the whole row. A token outside the kept set
    gets -inf.

    keep: a kept-set mask (B, V) bool to use instead of this row's own (an RL trainer scores a reference
    model, or a policy several updates later, on the support the behaviour policy drew from). return_keep:
    also return the mask used (None when nothing is truncated).
    """
    check_logits(logits)
    T, k, p, _, _ = normalize_params(logits, temperature, top_k, top_p, 0, 0)
    lmp, eps, eta, typ = normalize_cutoffs(logits, min_p, epsilon_cutoff, eta_cutoff, typical_p)
    tokens = torch.as_tensor(tokens, dtype=torch.long, device=logits.device).reshape(-1)
    if tokens.numel() != logits.shape[0]:
        raise ValueError(f"tokens must hold one id per row of logits ({logits.shape[0]}), got {tokens.numel()}")
    if keep is not None and keep.shape != logits.shape:
        raise ValueError(f"keep must be a mask of the logits' shape {tuple(logits.shape)}, got {tuple(keep.shape)}")
    x = logits.float()
    B, V = x.shape
    greedy = T == 0
    T1 = torch.where(greedy, 1.0, T)
    s = x if bool((T1 == 1).all()) else x / T1[:, None]  # (B, V); no pass over the logits when T is 1
    if keep is None:
        # only rows that truncate need the kept-set search (and its copy of their logits)
        cut = (lmp > float("-inf")) | (typ < 1) | (eps > 0) | (eta > 0)
        rows = ((~greedy) & (((k > 0) & (k < V)) | (p < 1) | cut)).nonzero()[:, 0]
        if rows.numel():
            with torch.no_grad():
                xd = x.detach()
                t = torch.full_like(T, float("-inf"))
                u = torch.full_like(T, float("inf"))
                t[rows], u[rows] = keep_bounds(xd if rows.numel() == B else xd.index_select(0, rows), T[rows],
                                               k[rows], p[rows], lmp[rows], typ[rows], eps[rows], eta[rows])
                sd = s.detach()
                keep = (sd >= t[:, None]) & (sd <= u[:, None])
    kept = s if keep is None else s.masked_fill(~keep, float("-inf"))
    lp = logprob_at(kept, tokens)
    return (lp, keep) if return_keep else lp
