"""Sampling: temperature -> top-k -> top-p -> min-p -> epsilon -> draw (transformers' warper order), with
counter-based noise keyed by (seed, position, token).

    tokens, logprobs = sample_from_logits(logits, temperature=0.8, top_k=50, top_p=0.9, seed=s, position=t)
    tokens, logprobs = sample_from_logits(logits, min_p=0.05, seed=s, position=t)

Every parameter is a Python scalar or a per-row tensor (B,). backend="auto" runs the Triton kernel on
CUDA tensors and torch otherwise; the environment variable PIGPT_SAMPLING_BACKEND=torch|triton overrides
"auto". Both backends draw the same tokens. See docs/sampling.md.
"""

from .reference import process_logits
from .params import MAX_SEED
from .sampling import sample_from_logits, token_logprobs

__all__ = ["sample_from_logits", "process_logits", "token_logprobs", "MAX_SEED"]
