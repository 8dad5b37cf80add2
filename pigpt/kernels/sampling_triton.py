"""The fused Triton sampling kernel: temperature, softmax, top-k, top-p and the draw in one launch.

One program per row streams the row in tiles of BLOCK tokens; nothing of size V is written back.
  1. stats pass: row max M, sum of exp(s - M), smallest finite value, argmax (greedy), NaN / +inf check.
  2. top-k threshold, then top-p threshold, each found without sorting by pivot bisection: a pass counts
     (or weighs) the tokens >= each of NP pivots spread over the bracket [a, b] that holds the answer,
     and also records, per pivot, the nearest row values on either side of it; the bracket shrinks to two
     neighbouring pivots snapped to row values, until a == b. The answer is the largest row value v with
     count(s >= v) >= k (top-k), or with mass(s >= v) >= p * mass(kept by top-k) (top-p): exactly the
     torch path's rule, ties with the threshold kept.
  3. draw pass: two exponential races (Gumbel-max) over tokens >= the threshold with the same
     counter-based hash as kernels.hashing, so both backends draw the same token: groups of GROUP tokens
     by their kept mass (one pass), then the GROUP tokens of the winner (one load); the kept mass gives
     the log-prob.
A row with NaN or +inf logits (or logits / temperature overflowing) gets token -1 and log-prob NaN:
raising would need a host sync on every step.
"""

import torch
import triton
import triton.language as tl

from .hashing import GROUP, GROUP_BIT
from .interpreter import interpreting

NUM_PIVOTS = 16


@triton.jit
def _fmix32(h):
    # murmur3 finaliser on uint32 (the literals are uint32 in Triton, so products wrap mod 2^32)
    h ^= h >> 16
    h *= 0x85EBCA6B
    h ^= h >> 13
    h *= 0xC2B2AE35
    h ^= h >> 16
    return h


@triton.jit
def _gumbel(offs, k1, k2):
    """Gumbel noise of tokens `offs` under row keys (k1, k2): kernels.hashing.hash_to_gumbel(token_hash)."""
    h = _fmix32(offs.to(tl.uint32) ^ k1)
    h = _fmix32(h + k2)
    u = ((h >> 9).to(tl.float32) + 0.5) * (1.0 / 8388608.0)  # 23 bits: u < 1 exactly
    return -tl.log(-tl.log(u))


@triton.jit
def _load_scaled(x_row, offs, V, unit_t, T):
    x = tl.load(x_row + offs, mask=offs < V, other=float("-inf")).to(tl.float32)
    # div_rn: IEEE division, as torch's; Triton's `/` is div.full.f32 (2 ulp) on NVIDIA GPUs
    return tl.where(unit_t, x, tl.math.div_rn(x, T))


@triton.jit
def _row_stats(x_row, V, T, unit_t, BLOCK: tl.constexpr):
    """(max, sum exp(s - max), min finite value, #finite, first argmax, #NaN) of s = x / T."""
    offs0 = tl.arange(0, BLOCK)
    m = tl.full((), float("-inf"), tl.float32)
    z = tl.zeros((), tl.float32)
    mn = tl.full((), float("inf"), tl.float32)
    n_fin = tl.zeros((), tl.int32)
    arg = tl.zeros((), tl.int32)
    n_nan = tl.zeros((), tl.int32)
    for start in range(0, V, BLOCK):
        offs = start + offs0
        s = _load_scaled(x_row, offs, V, unit_t, T)
        n_nan += tl.sum((s != s).to(tl.int32), 0)
        tile_max = tl.max(s, 0)
        tile_arg = tl.min(tl.where(s == tile_max, offs, V), 0)
        arg = tl.where(tile_max > m, tile_arg, arg)
        new_m = tl.maximum(m, tile_max)
        safe_m = tl.where(new_m == float("-inf"), 0.0, new_m)
        z = z * tl.exp(m - safe_m) + tl.sum(tl.exp(s - safe_m), 0)
        m = new_m
        finite = s > float("-inf")
        mn = tl.minimum(mn, tl.min(tl.where(finite, s, float("inf")), 0))
        n_fin += tl.sum(finite.to(tl.int32), 0)
    return m, z, mn, n_fin, arg, n_nan


@triton.jit
def _bisect(x_row, V, T, unit_t, m, a, fa_cnt, fa_mass, b, target,
            USE_MASS: tl.constexpr, BLOCK: tl.constexpr, NP: tl.constexpr):
    """Largest row value v in [a, b] with f(v) >= target, f = count or mass (exp(s - m)) of {s >= v}.

    Needs f(a) >= target and f < target above b; a need not be a row value. Returns (v, count(s >= v),
    mass(s >= v)); the two counts are exact only if the bracket moved off its starting a.
    Each round costs one pass; pivot NP - 1 sits on b, so every round either ends or lowers b.
    """
    offs0 = tl.arange(0, BLOCK)
    j = tl.arange(0, NP)
    frac = (j + 1).to(tl.float32) / NP
    while a < b:
        q = a * (1.0 - frac) + b * frac  # (NP,) no b - a: it may overflow
        q = tl.minimum(tl.maximum(q, a), b)
        q = tl.where(j == NP - 1, b, q)
        cnt = tl.zeros((NP,), tl.int32)
        mass = tl.zeros((NP,), tl.float32)
        below = tl.full((NP,), float("-inf"), tl.float32)  # largest row value < q_j
        above = tl.full((NP,), float("inf"), tl.float32)  # smallest row value >= q_j
        for start in range(0, V, BLOCK):
            offs = start + offs0
            s = _load_scaled(x_row, offs, V, unit_t, T)
            e = tl.exp(s - m)
            ge = s[:, None] >= q[None, :]  # (BLOCK, NP); padding is -inf, never >= q
            cnt += tl.sum(ge.to(tl.int32), 0)
            mass += tl.sum(tl.where(ge, e[:, None], 0.0), 0)
            below = tl.maximum(below, tl.max(tl.where(ge, float("-inf"), s[:, None]), 0))
            above = tl.minimum(above, tl.min(tl.where(ge, s[:, None], float("inf")), 0))
        if USE_MASS:
            ok = mass >= target
        else:
            ok = cnt.to(tl.float32) >= target
        n_ok = tl.sum(ok.to(tl.int32), 0)  # f is non-increasing in q: pivots 0 .. n_ok - 1 pass
        pick_a = j == n_ok - 1
        pick_b = j == n_ok
        a_new = tl.max(tl.where(pick_a, above, float("-inf")), 0)
        fa_cnt = tl.where(n_ok > 0, tl.max(tl.where(pick_a, cnt, 0), 0), fa_cnt)
        fa_mass = tl.where(n_ok > 0, tl.max(tl.where(pick_a, mass, 0.0), 0), fa_mass)
        a = tl.where(n_ok > 0, a_new, a)
        b = tl.where(n_ok < NP, tl.max(tl.where(pick_b, below, float("-inf")), 0), b)
    return a, fa_cnt, fa_mass


@triton.jit
def _sample_kernel(x_ptr, stride, T_ptr, k_ptr, p_ptr, k1_ptr, k2_ptr, tok_ptr, lp_ptr, V,
                   BLOCK: tl.constexpr, NP: tl.constexpr, GROUP: tl.constexpr, GROUP_BIT: tl.constexpr):
    row = tl.program_id(0)
    x_row = x_ptr + row.to(tl.int64) * stride
    T = tl.load(T_ptr + row)
    k = tl.load(k_ptr + row)  # 0 = off (the wrapper maps every 'off' spelling to 0)
    p = tl.load(p_ptr + row)  # 1 = off
    greedy = T == 0.0
    unit_t = greedy | (T == 1.0)  # greedy reads the raw row
    T = tl.where(greedy, 1.0, T)
    m, z, mn, n_fin, arg, n_nan = _row_stats(x_row, V, T, unit_t, BLOCK)
    bad = (n_nan > 0) | (m == float("inf")) | (m == float("-inf"))

    # top-k: -inf threshold keeps the whole row (k off, or fewer finite tokens than k)
    t = tl.full((), float("-inf"), tl.float32)
    kept_mass = z
    do_k = (k > 0) & (n_fin >= k) & (~greedy) & (~bad)
    if do_k:
        t, _c, kept_mass = _bisect(x_row, V, T, unit_t, m, mn, n_fin, z, m, k.to(tl.float32),
                                   False, BLOCK, NP)
    target = p * kept_mass
    if (p < 1.0) & (~greedy) & (~bad):
        if target <= 1.0:
            t = m  # the max alone (mass exp(0) = 1) reaches p: no pass needed
        else:
            # Tokens below m - log(V / (1 - p)) carry less than (1 - p) of the mass together, so the
            # threshold lies above; start the bracket there (1 nat lower, for rounding).
            lb = m - tl.log(V.to(tl.float32) / (1.0 - p)) - 1.0
            a0 = tl.maximum(tl.maximum(t, mn), lb)
            t, _c, _m = _bisect(x_row, V, T, unit_t, m, a0, n_fin, kept_mass, m, target,
                                True, BLOCK, NP)

    # draw, in two races (kernels/hashing.py): groups of GROUP tokens by their kept mass, then the tokens
    # of the winning group; ties go to the lowest id, as on the torch path
    k1 = tl.load(k1_ptr + row).to(tl.uint32, bitcast=True)
    k2 = tl.load(k2_ptr + row).to(tl.uint32, bitcast=True)
    offs0 = tl.arange(0, BLOCK)
    gj = tl.arange(0, BLOCK // GROUP)
    best_i = arg
    zk = tl.zeros((), tl.float32)
    if (~greedy) & (~bad):
        g_best = tl.full((), float("-inf"), tl.float32)
        g_idx = tl.zeros((), tl.int32)
        for start in range(0, V, BLOCK):
            offs = start + offs0
            s = _load_scaled(x_row, offs, V, unit_t, T)
            e = tl.where(s >= t, tl.exp(s - m), 0.0)  # padding is -inf: mass 0
            zk += tl.sum(e, 0)
            w = tl.sum(tl.reshape(e, (BLOCK // GROUP, GROUP)), 1)  # (BLOCK // GROUP,) group masses
            gid = start // GROUP + gj
            score = tl.where(w > 0.0, tl.log(w) + _gumbel(gid.to(tl.uint32) | GROUP_BIT, k1, k2), float("-inf"))
            tile_best = tl.max(score, 0)
            tile_g = tl.min(tl.where(score == tile_best, gid, 2147483647), 0)
            g_idx = tl.where(tile_best > g_best, tile_g, g_idx)
            g_best = tl.maximum(g_best, tile_best)
        offs = g_idx * GROUP + tl.arange(0, GROUP)
        s = _load_scaled(x_row, offs, V, unit_t, T)
        score = tl.where((s >= t) & (offs < V), s + _gumbel(offs, k1, k2), float("-inf"))
        tile_best = tl.max(score, 0)
        best_i = tl.min(tl.where(score == tile_best, offs, V), 0)
    else:
        zk = z
    s_tok = _load_scaled(x_row, best_i, V, unit_t, T)
    lp = (s_tok - m) - tl.log(zk)
    tl.store(tok_ptr + row, tl.where(bad, -1, best_i.to(tl.int64)))
    tl.store(lp_ptr + row, tl.where(bad, float("nan"), lp))


def _block_size(V: int) -> int:
    return max(GROUP, min(1024, triton.next_power_of_2(V)))  # whole groups per tile


def sample_triton(logits, T, k, p, k1, k2, block: int | None = None):
    """(tokens int64 (B,), logprobs float32 (B,)); parameters already normalised to (B,) tensors.

    No host sync: parameter values are clamped on the device rather than checked.
    """
    if logits.device.type != "cuda" and not interpreting():
        raise ValueError("the Triton sampling backend needs CUDA tensors (or TRITON_INTERPRET=1 set before "
                         "triton is imported); use backend='torch' on CPU")
    B, V = logits.shape
    x = logits if logits.stride(1) == 1 else logits.contiguous()
    k_eff = torch.where((k > 0) & (k < V), k, 0).to(torch.int32)
    p_eff = p.clamp(min=torch.finfo(torch.float32).tiny, max=1.0)
    T = T.clamp(min=0.0)  # unchecked on the GPU: a negative temperature would reverse the order
    tokens = torch.empty(B, dtype=torch.int64, device=x.device)
    logprobs = torch.empty(B, dtype=torch.float32, device=x.device)
    _sample_kernel[(B,)](x, x.stride(0), T, k_eff, p_eff, k1, k2, tokens, logprobs, V,
                         BLOCK=block or _block_size(V), NP=NUM_PIVOTS, GROUP=GROUP, GROUP_BIT=GROUP_BIT,
                         num_warps=8)
    return tokens, logprobs
