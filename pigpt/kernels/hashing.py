"""Counter-based random numbers for sampling: a uniform per (seed, position, token id), no RNG state.

Both backends use the same integer hash (murmur3's 32-bit finaliser, twice), so they draw the same token
from the same inputs, and a row's draw never depends on the rows around it. torch lacks fast uint32
arithmetic, so the torch side holds the bits in int32: products wrap identically, and right shifts are
masked to make them logical. The Triton kernel computes the same thing in uint32.
"""

import torch

GOLDEN = 0x9E3779B9  # 2^32 / phi: spreads consecutive counters before mixing
FMIX_C1 = 0x85EBCA6B
FMIX_C2 = 0xC2B2AE35
KEY2_SALT = 0x632BE5AB
GROUP = 64  # tokens per group in the two-level draw: group g holds token ids [64 g, 64 g + 64)
GROUP_BIT = 1 << 31  # group g is hashed as the id g | 2^31, which no token id (< 2^31) shares


def _signed(c: int) -> int:
    """The int32 with the bits of uint32 `c`."""
    return c - (1 << 32) if c >= (1 << 31) else c


def to_int32_bits(v: torch.Tensor) -> torch.Tensor:
    """Low 32 bits of an int64 tensor, as int32."""
    v = v & 0xFFFFFFFF
    return torch.where(v >= (1 << 31), v - (1 << 32), v).to(torch.int32)


def fmix32(h: torch.Tensor, scratch: torch.Tensor | None = None) -> torch.Tensor:
    """murmur3 finaliser on int32 bit patterns (a bijection with full avalanche), in place on `h`.

    In place with one scratch buffer: the hash runs over every kept token, and allocating a temporary
    per step would cost more than the arithmetic.
    """
    t = torch.empty_like(h) if scratch is None else scratch
    for shift, mask, mult in ((16, 0xFFFF, FMIX_C1), (13, 0x7FFFF, FMIX_C2), (16, 0xFFFF, None)):
        torch.bitwise_right_shift(h, shift, out=t)
        h ^= t.bitwise_and_(mask)  # masked: a logical shift
        if mult is not None:
            h *= _signed(mult)
    return h


def row_keys(seed: torch.Tensor, position: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Two int32 keys per row from int64 (seed, position), all 64 bits of each mixed in.  # (B,), (B,)

    A few rows on the CPU (a decode step of n rollouts) are hashed as Python integers: the same arithmetic,
    ~50x fewer dispatches than the ~50 tensor ops below, which cost ~0.1 ms a step."""
    if seed.device.type == "cpu" and seed.numel() <= 64:
        keys = [_row_keys_int(s, p) for s, p in zip(seed.tolist(), position.tolist())]
        k = torch.tensor([[_signed(k) for k in ks] for ks in zip(*keys)] or [[], []], dtype=torch.int32)
        return k[0], k[1]  # each contiguous (the Triton kernel reads them by pointer)
    return _row_keys_tensor(seed, position)


def _row_keys_tensor(seed: torch.Tensor, position: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    seed, position = seed.to(torch.int64), position.to(torch.int64)
    h = fmix32(to_int32_bits(seed >> 32))
    h = fmix32(h ^ to_int32_bits(seed))
    h = fmix32((h + _signed(GOLDEN)) ^ to_int32_bits(position >> 32))
    k1 = fmix32(h ^ to_int32_bits(position))
    k2 = fmix32(k1 ^ KEY2_SALT)
    return k1, k2


def _fmix32_int(h: int) -> int:
    """fmix32 on a uint32 held in a Python int."""
    h ^= h >> 16
    h = (h * FMIX_C1) & 0xFFFFFFFF
    h ^= h >> 13
    h = (h * FMIX_C2) & 0xFFFFFFFF
    return h ^ (h >> 16)


def _row_keys_int(seed: int, position: int) -> tuple[int, int]:
    """_row_keys_tensor for one row, in Python integers: (k1, k2) as uint32 values."""
    s, p = seed & 0xFFFFFFFFFFFFFFFF, position & 0xFFFFFFFFFFFFFFFF  # int64 bits
    h = _fmix32_int(s >> 32)
    h = _fmix32_int(h ^ (s & 0xFFFFFFFF))
    h = _fmix32_int(((h + GOLDEN) & 0xFFFFFFFF) ^ (p >> 32))
    k1 = _fmix32_int(h ^ (p & 0xFFFFFFFF))
    return k1, _fmix32_int(k1 ^ KEY2_SALT)


def token_hash(tokens: torch.Tensor, k1: torch.Tensor, k2: torch.Tensor) -> torch.Tensor:
    """32-bit hash (int32 bits) of token ids under per-row keys; tokens (B, n), keys (B,) -> (B, n)."""
    h = tokens.to(torch.int32) ^ k1[:, None]
    scratch = torch.empty_like(h)
    fmix32(h, scratch)
    h += k2[:, None]
    return fmix32(h, scratch)


def group_hash(groups: torch.Tensor, k1: torch.Tensor, k2: torch.Tensor) -> torch.Tensor:
    """token_hash of group ids (B, n): the same hash on g | 2^31, so group and token noise never collide."""
    return token_hash(groups.to(torch.int64) - GROUP_BIT, k1, k2)  # g - 2^31 has the bits of g | 2^31


def hash_to_gumbel(h: torch.Tensor) -> torch.Tensor:
    """Uniform u = (top 23 bits + 0.5) / 2^23, exact in float32 and in [2^-24, 1 - 2^-24]; returns -log(-log u).

    23 bits, not 24: (2^24 - 1 + 0.5) needs 25 significant bits, rounds to 2^24 in float32 and would make
    u = 1, an infinite noise and, on a -inf logit, a NaN score that argmax would pick.
    Adding this Gumbel noise to the scaled logits and taking the argmax draws from their softmax
    (the exponential race of gpt-fast / vLLM), with no cumulative sum and no global RNG. The samplers
    race twice (groups of GROUP tokens by their log-mass, then the tokens of the winning group), so
    noise is hashed for ~V / 64 + 64 ids a row instead of V. Consumes h.
    """
    u = h.bitwise_right_shift_(9).bitwise_and_(0x7FFFFF).to(torch.float32)
    u += 0.5
    u *= 1.0 / 8388608.0
    return u.log_().neg_().log_().neg_()
