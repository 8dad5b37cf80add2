"""Counter-based random numbers for sampling: a uniform per (seed, position, token id), no RNG state.

Both backends use the same integer hash (murmur3's 32-bit finaliser, twice), so they draw the same token
from the same inputs, and a row's draw never depends on the rows around it. torch has no uint32, so the
torch side keeps 32-bit values in int64 and masks after every multiply; the low 32 bits of an int64
product are those of the uint32 product, which is what the Triton kernel computes natively.
"""

import torch

MASK32 = 0xFFFFFFFF
GOLDEN = 0x9E3779B9  # 2^32 / phi: spreads consecutive counters before mixing
FMIX_C1 = 0x85EBCA6B
FMIX_C2 = 0xC2B2AE35
KEY2_SALT = 0x632BE5AB


def fmix32(h: torch.Tensor) -> torch.Tensor:
    """murmur3 finaliser on uint32 values held in an int64 tensor (a bijection with full avalanche)."""
    h = h ^ (h >> 16)
    h = (h * FMIX_C1) & MASK32
    h = h ^ (h >> 13)
    h = (h * FMIX_C2) & MASK32
    return h ^ (h >> 16)


def row_keys(seed: torch.Tensor, position: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Two 32-bit keys per row from int64 (seed, position), all 64 bits of each mixed in.  # (B,), (B,)"""
    seed, position = seed.to(torch.int64), position.to(torch.int64)
    h = fmix32((seed >> 32) & MASK32)
    h = fmix32(h ^ (seed & MASK32))
    h = fmix32(((h + GOLDEN) & MASK32) ^ ((position >> 32) & MASK32))
    k1 = fmix32(h ^ (position & MASK32))
    k2 = fmix32(k1 ^ KEY2_SALT)
    return k1, k2


def token_hash(tokens: torch.Tensor, k1: torch.Tensor, k2: torch.Tensor) -> torch.Tensor:
    """32-bit hash of token ids under per-row keys; tokens (B, n) int64, keys (B,) -> (B, n) int64."""
    h = fmix32(tokens ^ k1[:, None])
    return fmix32((h + k2[:, None]) & MASK32)


def hash_to_gumbel(h: torch.Tensor) -> torch.Tensor:
    """Uniform u = (top 24 bits + 0.5) / 2^24, exact in float32 and never 0 or 1; returns -log(-log u).

    Adding this Gumbel noise to log-probabilities and taking the argmax draws from their softmax
    (the exponential race of gpt-fast / vLLM), with no cumulative sum and no global RNG.
    """
    u = ((h >> 8).to(torch.float32) + 0.5) * (1.0 / 16777216.0)
    return -torch.log(-torch.log(u))
