"""The fused Triton sampling kernel: temperature, softmax, top-k, top-p, min-p, typical, epsilon, eta and the
draw in one launch.

One program per row streams the row in tiles of BLOCK tokens; nothing of size V is written back.
  1. stats pass: row max M, sum of exp(s - M), smallest finite value, argmax (greedy), NaN / +inf check.
  2. top-k threshold, then top-p threshold, each found without sorting by pivot bisection: a pass counts
     (or weighs) the tokens >= each of NP pivots spread over the bracket [a, b] that holds the answer,
     and also records, per pivot, the nearest row values on either side of it; the bracket shrinks to two
     neighbouring pivots snapped to row values, until a == b. The answer is the largest row value v with
     count(s >= v) >= k (top-k), or with mass(s >= v) >= p * mass(kept by top-k) (top-p): exactly the
     torch path's rule, ties with the threshold kept. Then min-p raises the threshold to m + log(min_p)
     (no pass); typical finds the mean logit c (one pass), bisects the same way on the key -|s - c| (the
     tokens closest to the mean first) and turns the answer into a band lo <= s <= hi (one pass); epsilon
     raises the threshold to the smallest token whose probability over the kept set reaches epsilon
     (two passes: the kept mass, then that token), and eta likewise.
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

from .hashing import GOLDEN as _GOLDEN, GROUP, GROUP_BIT, KEY2_SALT as _KEY2_SALT
from .interpreter import interpreting

NUM_PIVOTS = 16
GOLDEN = tl.constexpr(_GOLDEN)
KEY2_SALT = tl.constexpr(_KEY2_SALT)
# the bisection keeps (BISECT_BLOCK, NUM_PIVOTS) counters per lane: a smaller tile than the other passes
# so that its four counters stay in registers
BISECT_BLOCK = 256
NUM_WARPS = 8


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
def _row_keys(seed, position):
    """kernels.hashing.row_keys for one row: two uint32 keys from int64 (seed, position), all 64 bits mixed in.
    Hashed here rather than by torch: there it took ~60 small kernel launches, more than the sampling."""
    s = seed.to(tl.uint64, bitcast=True)
    q = position.to(tl.uint64, bitcast=True)
    h = _fmix32((s >> 32).to(tl.uint32))
    h = _fmix32(h ^ (s & 0xFFFFFFFF).to(tl.uint32))
    h = _fmix32((h + GOLDEN) ^ (q >> 32).to(tl.uint32))
    k1 = _fmix32(h ^ (q & 0xFFFFFFFF).to(tl.uint32))
    return k1, _fmix32(k1 ^ KEY2_SALT)


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
    """(max, sum exp(s - max), min finite value, #finite, first argmax, #NaN) of s = x / T.

    Each lane keeps its own running values (an online softmax per lane) and the lanes are reduced once,
    after the loop: a reduction across warps inside the loop costs a barrier per tile, which made this
    pass latency-bound on a GPU.
    """
    offs0 = tl.arange(0, BLOCK)
    m = tl.full((BLOCK,), float("-inf"), tl.float32)
    z = tl.zeros((BLOCK,), tl.float32)
    mn = tl.full((BLOCK,), float("inf"), tl.float32)
    n_fin = tl.zeros((BLOCK,), tl.int32)
    arg = tl.zeros((BLOCK,), tl.int32)  # per lane: the first offset holding its max (strict > below)
    n_nan = tl.zeros((BLOCK,), tl.int32)
    for start in range(0, V, BLOCK):
        offs = start + offs0
        s = _load_scaled(x_row, offs, V, unit_t, T)
        n_nan += (s != s).to(tl.int32)
        arg = tl.where(s > m, offs, arg)
        new_m = tl.maximum(m, s)
        safe_m = tl.where(new_m == float("-inf"), 0.0, new_m)
        z = z * tl.exp(m - safe_m) + tl.exp(s - safe_m)
        m = new_m
        finite = s > float("-inf")
        mn = tl.minimum(mn, tl.where(finite, s, float("inf")))
        n_fin += finite.to(tl.int32)
    row_m = tl.max(m, 0)
    safe_m = tl.where(row_m == float("-inf"), 0.0, row_m)
    row_z = tl.sum(tl.where(m > float("-inf"), z * tl.exp(m - safe_m), 0.0), 0)
    row_arg = tl.min(tl.where(m == row_m, arg, V), 0)
    return row_m, row_z, tl.min(mn, 0), tl.sum(n_fin, 0), row_arg, tl.sum(n_nan, 0)


@triton.jit
def _bisect(x_row, V, T, unit_t, m, a, fa_cnt, fa_mass, b, target, floor, c,
            USE_MASS: tl.constexpr, TYPICAL: tl.constexpr, BLOCK: tl.constexpr, NP: tl.constexpr):
    """Largest key value v in [a, b] with f(v) >= target, f = count or mass (exp(s - m)) of {key >= v}.

    The key is the row value s, or with TYPICAL -|(m - s) + c| for s >= floor (-inf below it, and no mass):
    the tokens closest to the mean first. Needs f(a) >= target and f < target above b; a need not be a key
    value. Returns (v, count(key >= v), mass(key >= v)); the two counts are exact only if the bracket moved
    off its starting a. Each round costs one pass; pivot NP - 1 sits on b, so every round either ends or
    lowers b.
    """
    offs0 = tl.arange(0, BLOCK)
    j = tl.arange(0, NP)
    frac = (j + 1).to(tl.float32) / NP
    while a < b:
        q = a * (1.0 - frac) + b * frac  # (NP,) no b - a: it may overflow
        q = tl.minimum(tl.maximum(q, a), b)
        q = tl.where(j == NP - 1, b, q)
        # per lane and pivot (BLOCK, NP), reduced over the lanes after the pass
        cnt = tl.zeros((BLOCK, NP), tl.int32)
        mass = tl.zeros((BLOCK, NP), tl.float32)
        below = tl.full((BLOCK, NP), float("-inf"), tl.float32)  # largest row value < q_j
        above = tl.full((BLOCK, NP), float("inf"), tl.float32)  # smallest row value >= q_j
        for start in range(0, V, BLOCK):
            offs = start + offs0
            s = _load_scaled(x_row, offs, V, unit_t, T)
            if TYPICAL:
                inside = s >= floor
                key = tl.where(inside, -tl.abs((m - s) + c), float("-inf"))
                e = tl.where(inside, tl.exp(s - m), 0.0)
            else:
                key = s
                e = tl.exp(s - m)
            ge = key[:, None] >= q[None, :]  # (BLOCK, NP); padding is -inf, never >= q
            cnt += ge.to(tl.int32)
            mass += tl.where(ge, e[:, None], 0.0)
            below = tl.maximum(below, tl.where(ge, float("-inf"), key[:, None]))
            above = tl.minimum(above, tl.where(ge, key[:, None], float("inf")))
        cnt = tl.sum(cnt, 0)
        mass = tl.sum(mass, 0)
        below = tl.max(below, 0)
        above = tl.min(above, 0)
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
def _sample_kernel(x_ptr, stride, T_ptr, k_ptr, p_ptr, lmp_ptr, typ_ptr, eps_ptr, eta_ptr, seed_ptr, pos_ptr, tok_ptr,
                   lp_ptr, V,
                   BLOCK: tl.constexpr, BLOCK_B: tl.constexpr, NP: tl.constexpr, GROUP: tl.constexpr,
                   GROUP_BIT: tl.constexpr):
    row = tl.program_id(0)
    x_row = x_ptr + row.to(tl.int64) * stride
    # parameters are clamped here, not checked: a check would need a host sync on every step
    T = tl.load(T_ptr + row)
    T = tl.where(T < 0.0, 0.0, T)  # a negative temperature would reverse the order
    k = tl.load(k_ptr + row)
    k = tl.where((k > 0) & (k < V), k, 0).to(tl.int32)  # 0 = off, and so is k >= V
    p = tl.load(p_ptr + row)
    p = tl.minimum(tl.maximum(p, 1.1754943508222875e-38), 1.0)  # 1 = off; p > 0
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
        t, _c, kept_mass = _bisect(x_row, V, T, unit_t, m, mn, n_fin, z, m, k.to(tl.float32), mn, 0.0,
                                   False, False, BLOCK_B, NP)
    target = p * kept_mass
    if (p < 1.0) & (~greedy) & (~bad):
        if target <= 1.0:
            t = m  # the max alone (mass exp(0) = 1) reaches p: no pass needed
        else:
            # Tokens below m - log(V / (1 - p)) carry less than (1 - p) of the mass together, so the
            # threshold lies above; start the bracket there (1 nat lower, for rounding).
            lb = m - tl.log(V.to(tl.float32) / (1.0 - p)) - 1.0
            a0 = tl.maximum(tl.maximum(t, mn), lb)
            t, _c, _m = _bisect(x_row, V, T, unit_t, m, a0, n_fin, kept_mass, m, target, mn, 0.0,
                                True, False, BLOCK_B, NP)
    u = tl.full((), float("inf"), tl.float32)  # the kept set's top: below the max only under typical
    mk = m  # the largest kept value
    if (~greedy) & (~bad):
        # min-p: p >= min_p * p_max is s >= m + log(min_p) (the log taken by torch: the same number as there)
        t = tl.maximum(t, m + tl.load(lmp_ptr + row))
        typ = tl.load(typ_ptr + row)
        if typ < 1.0:
            # typical: |-log p - H| = |(m - s) + c|, c = E[s - m] over the tokens kept so far (one pass); the
            # tokens closest to the mean are kept until their mass reaches typ * Z (bisection on the key
            # -|(m - s) + c|), and they are a band of values lo <= s <= hi (one pass for its ends)
            zc = tl.zeros((BLOCK,), tl.float32)
            ac = tl.zeros((BLOCK,), tl.float32)
            for start in range(0, V, BLOCK):
                s = _load_scaled(x_row, start + tl.arange(0, BLOCK), V, unit_t, T)
                e = tl.where(s >= t, tl.exp(s - m), 0.0)
                zc += e
                ac += tl.where(e > 0.0, e * (s - m), 0.0)
            zc = tl.sum(zc, 0)
            c = tl.math.div_rn(tl.sum(ac, 0), zc)
            # every kept key lies in [-(m - floor + |c|), 0]: the bracket, 1 nat wider for rounding
            a0 = -((m - tl.maximum(t, mn)) + tl.abs(c)) - 1.0
            top = tl.full((), 0.0, tl.float32)  # keys are <= 0; a tensor, as the loop reassigns it
            v, _c, _m = _bisect(x_row, V, T, unit_t, m, a0, n_fin, zc, top, typ * zc, t, c,
                                True, True, BLOCK_B, NP)
            lo = tl.full((BLOCK,), float("inf"), tl.float32)
            hi = tl.full((BLOCK,), float("-inf"), tl.float32)
            for start in range(0, V, BLOCK):
                s = _load_scaled(x_row, start + tl.arange(0, BLOCK), V, unit_t, T)
                kept = (s >= t) & (-tl.abs((m - s) + c) >= v)
                lo = tl.minimum(lo, tl.where(kept, s, float("inf")))
                hi = tl.maximum(hi, tl.where(kept, s, float("-inf")))
            t = tl.min(lo, 0)
            u = tl.max(hi, 0)
            mk = tl.minimum(m, u)
        eps = tl.load(eps_ptr + row)
        if eps > 0.0:
            # epsilon: p = exp(s - m) / Z >= epsilon over the tokens kept so far, the max always kept: one pass
            # for their mass Z, one for the smallest row value that passes (a threshold: p is monotone in s)
            zc = tl.zeros((BLOCK,), tl.float32)
            for start in range(0, V, BLOCK):
                s = _load_scaled(x_row, start + tl.arange(0, BLOCK), V, unit_t, T)
                zc += tl.where((s >= t) & (s <= u), tl.exp(s - mk), 0.0)
            zc = tl.sum(zc, 0)
            t_eps = tl.full((BLOCK,), float("inf"), tl.float32)
            for start in range(0, V, BLOCK):
                s = _load_scaled(x_row, start + tl.arange(0, BLOCK), V, unit_t, T)
                ok = (s >= t) & (s <= u) & (tl.math.div_rn(tl.exp(s - mk), zc) >= eps)  # IEEE division, as torch's
                t_eps = tl.minimum(t_eps, tl.where(ok, s, float("inf")))
            t = tl.maximum(t, tl.minimum(mk, tl.min(t_eps, 0)))
        eta = tl.load(eta_ptr + row)
        if eta > 0.0:
            # eta: the same with the cut min(eta, sqrt(eta) * exp(-H)), H the entropy of the tokens kept so far
            # (one pass for their mass and sum of e * (s - m)); sqrt_rn is correctly rounded, as torch's sqrt
            zc = tl.zeros((BLOCK,), tl.float32)
            ac = tl.zeros((BLOCK,), tl.float32)
            for start in range(0, V, BLOCK):
                s = _load_scaled(x_row, start + tl.arange(0, BLOCK), V, unit_t, T)
                e = tl.where((s >= t) & (s <= u), tl.exp(s - mk), 0.0)
                zc += e
                ac += tl.where(e > 0.0, e * (s - mk), 0.0)
            zc = tl.sum(zc, 0)
            h = tl.log(zc) - tl.math.div_rn(tl.sum(ac, 0), zc)
            cut = tl.minimum(eta, tl.sqrt_rn(eta) * tl.exp(-h))
            t_eta = tl.full((BLOCK,), float("inf"), tl.float32)
            for start in range(0, V, BLOCK):
                s = _load_scaled(x_row, start + tl.arange(0, BLOCK), V, unit_t, T)
                ok = (s >= t) & (s <= u) & (tl.math.div_rn(tl.exp(s - mk), zc) >= cut)
                t_eta = tl.minimum(t_eta, tl.where(ok, s, float("inf")))
            t = tl.maximum(t, tl.minimum(mk, tl.min(t_eta, 0)))

    # draw, in two races (kernels/hashing.py): groups of GROUP tokens by their kept mass, then the tokens
    # of the winning group; ties go to the lowest id, as on the torch path
    k1, k2 = _row_keys(tl.load(seed_ptr + row), tl.load(pos_ptr + row))
    offs0 = tl.arange(0, BLOCK)
    gj = tl.arange(0, BLOCK // GROUP)
    best_i = arg
    zk = z
    if (~greedy) & (~bad):
        # per group slot of the tile: its best score so far and that group (strict >: the lower id on ties)
        g_best = tl.full((BLOCK // GROUP,), float("-inf"), tl.float32)
        g_idx = tl.zeros((BLOCK // GROUP,), tl.int32)
        zv = tl.zeros((BLOCK,), tl.float32)
        for start in range(0, V, BLOCK):
            offs = start + offs0
            s = _load_scaled(x_row, offs, V, unit_t, T)
            e = tl.where((s >= t) & (s <= u), tl.exp(s - mk), 0.0)  # padding is -inf: mass 0
            zv += e
            w = tl.sum(tl.reshape(e, (BLOCK // GROUP, GROUP)), 1)  # (BLOCK // GROUP,) group masses
            gid = start // GROUP + gj
            score = tl.where(w > 0.0, tl.log(w) + _gumbel(gid.to(tl.uint32) | GROUP_BIT, k1, k2), float("-inf"))
            g_idx = tl.where(score > g_best, gid, g_idx)
            g_best = tl.maximum(g_best, score)
        zk = tl.sum(zv, 0)
        row_best = tl.max(g_best, 0)
        g_idx = tl.min(tl.where(g_best == row_best, g_idx, 2147483647), 0)
        offs = g_idx * GROUP + tl.arange(0, GROUP)
        s = _load_scaled(x_row, offs, V, unit_t, T)
        score = tl.where((s >= t) & (s <= u) & (offs < V), s + _gumbel(offs, k1, k2), float("-inf"))
        tile_best = tl.max(score, 0)
        best_i = tl.min(tl.where(score == tile_best, offs, V), 0)
    s_tok = _load_scaled(x_row, best_i, V, unit_t, T)
    lp = (s_tok - mk) - tl.log(zk)
    tl.store(tok_ptr + row, tl.where(bad, -1, best_i.to(tl.int64)))
    tl.store(lp_ptr + row, tl.where(bad, float("nan"), lp))


def _block_size(V: int) -> int:
    return max(GROUP, min(1024, triton.next_power_of_2(V)))  # whole groups per tile


def sample_triton(logits, T, k, p, seed, position, block: int | None = None, lmp=None, eps=None, eta=None, typ=None,
                  bisect_block: int = BISECT_BLOCK, num_warps: int = NUM_WARPS):
    """(tokens int64 (B,), logprobs float32 (B,)); parameters already normalised to (B,) tensors
    (kernels.params.normalize_params: seed and position int64, hashed into the row's keys by the kernel);
    lmp, eps, eta, typ: log(min_p), epsilon_cutoff, eta_cutoff and typical_p (kernels.params.normalize_cutoffs;
    None: off).

    No host sync: parameter values are clamped on the device rather than checked. One launch beside the
    two outputs' allocations: every small torch op here cost a kernel launch, and at batch 1 the launches
    took longer than the sampling.
    """
    if logits.device.type != "cuda" and not interpreting():
        raise ValueError("the Triton sampling backend needs CUDA tensors (or TRITON_INTERPRET=1 set before "
                         "triton is imported); use backend='torch' on CPU")
    B, V = logits.shape
    block = block or _block_size(V)
    x = logits if logits.stride(1) == 1 else logits.contiguous()
    tokens = torch.empty(B, dtype=torch.int64, device=x.device)
    logprobs = torch.empty(B, dtype=torch.float32, device=x.device)
    lmp = torch.full((B,), float("-inf"), device=x.device) if lmp is None else lmp  # log(min_p); -inf: off
    eps = torch.zeros(B, device=x.device) if eps is None else eps  # epsilon_cutoff; 0: off
    eta = torch.zeros(B, device=x.device) if eta is None else eta  # eta_cutoff; 0: off
    typ = torch.ones(B, device=x.device) if typ is None else typ  # typical_p; 1: off
    _sample_kernel[(B,)](x, x.stride(0), T, k, p, lmp, typ, eps, eta, seed, position, tokens, logprobs, V,
                         BLOCK=block, BLOCK_B=min(block, bisect_block), NP=NUM_PIVOTS, GROUP=GROUP,
                         GROUP_BIT=GROUP_BIT, num_warps=num_warps)
    return tokens, logprobs
