"""The public entry point: validation, backend choice, per-row keys."""

import os

import torch

from .hashing import row_keys
from .params import check_logits, normalize_params
from .sampling_torch import sample_torch

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


def sample_from_logits(logits, *, temperature=1.0, top_k=0, top_p=1.0, seed=0, position=0, backend="auto"):
    """Draw one token per row of logits (B, V): returns (tokens int64 (B,), logprobs float32 (B,)).

    transformers' order: logits / temperature -> top-k (ties with the k-th value kept; 0 or >= V = off)
    -> top-p (smallest top set with mass >= p, crossing token and its ties included; 1 = off) -> draw.
    temperature 0 is greedy: token = argmax(logits), logprob = log_softmax(logits)[token] over the raw row.
    The draw is an exponential race (Gumbel-max) with noise hashed from (seed, position, id), in two levels
    (64-token groups by kept mass, then the winning group's tokens; exact): no RNG state, and a row's token
    does not depend on its batch. logprobs are those of the processed distribution.
    NaN / +inf logits raise ValueError on the torch path (see docs/sampling.md for the Triton path).
    """
    check_logits(logits)
    T, k, p, seed_t, pos_t = normalize_params(logits, temperature, top_k, top_p, seed, position)
    if logits.shape[0] == 0:  # e.g. every rollout already finished
        return (torch.empty(0, dtype=torch.int64, device=logits.device),
                torch.empty(0, dtype=torch.float32, device=logits.device))
    k1, k2 = row_keys(seed_t, pos_t)
    if resolve_backend(backend, logits.device) == "triton":
        from .sampling_triton import sample_triton  # imported lazily: triton is optional on CPU

        return sample_triton(logits, T, k, p, k1, k2)
    return sample_torch(logits, T, k, p, k1, k2)
