"""The torch sampling path: the CPU path users run, and the reference the Triton kernel must match.

No full-vocabulary sort unless a row needs it. Rows with top-k take `topk` windows of growing width (64,
512, 4096, 32768, then a sort) until the window provably holds the whole kept set (no tie spilling past
it); rows with top-p alone find their nucleus from a one-pass histogram of the mass below the row max
and sort only the few tokens of the bin where the mass crosses p; untruncated rows skip all that. The draw
races groups of 64 tokens by their kept mass, then the tokens of the winning group (kernels/hashing.py),
so noise is hashed for ~V / 64 + 64 ids a row. min-p, epsilon and eta, after top-k / top-p, only raise a row's
threshold (`_cut`): no sort either. Typical sampling keeps a band of values around the row's mean (a lower
threshold t and an upper u), found with the nucleus' histogram over the distance to the mean: every kept
set is t <= s <= u (u = +inf unless typical is on). Rows resolve independently, so a row's result never
depends on the rows beside it.
"""

import torch
import torch.nn.functional as F

from .hashing import GROUP, group_hash, hash_to_gumbel, row_keys, token_hash
from .params import check_finite
from .reference import effective_top_k, partition, topk_threshold, topp_threshold

WINDOWS = (64, 512, 4096, 32768)
NBINS, BIN_W = 64, 0.25  # nucleus histogram: 16 nats below the row max, then one catch-all bin
NEG_INF = float("-inf")


def _rows(x: torch.Tensor, rows: torch.Tensor, n: int) -> torch.Tensor:
    # Gathering rows copies them: skip it when every row is taken.
    return x if rows.numel() == n else x.index_select(0, rows)


def _first_window(k: torch.Tensor, V: int) -> torch.Tensor:
    """Width of each row's first window: the smallest one holding k + 1 values (the +1 detects ties)."""
    w = torch.full_like(k, V)
    for width in reversed(WINDOWS):
        w = torch.where((k > 0) & (k + 1 <= width) & (width < V), width, w)
    return w


def _race(base, ids, k1, k2, *, groups=False):
    """Gumbel-max over entries (n, m): argmax of base + noise(id), returned as the winning id (n,).

    base: scaled logits of token ids, or log-masses of group ids (groups=True: the group hash);
    -inf entries never win. Ties go to the lowest id (as in the Triton kernel), whatever the entries' order.
    """
    h = group_hash(ids, k1, k2) if groups else token_hash(ids, k1, k2)
    score = hash_to_gumbel(h).add_(base)
    best = score.amax(-1, keepdim=True)
    return torch.where(score == best, ids, torch.iinfo(ids.dtype).max).amin(-1).long()


def _check_scale(mx):
    if not torch.isfinite(mx).all():
        raise ValueError("logits / temperature overflows float32 (temperature too small for these "
                         "logits); use temperature=0 for greedy decoding")


def _group_masses(e):
    """Mass of each group of GROUP consecutive tokens, rows e (n, V) -> (n, ceil(V / GROUP)), summed in float64:
    the row's total is then its `partition` (as every log-prob in pigpt takes it: reference.logprob_at)."""
    n, V = e.shape
    full = V // GROUP
    w = e[:, : full * GROUP].view(n, full, GROUP).sum(-1, dtype=torch.float64)
    return torch.cat((w, e[:, full * GROUP:].sum(-1, keepdim=True, dtype=torch.float64)), 1) if V % GROUP else w


def _cut_off(s, t, u):
    """(n, m) bool: the entries outside the kept band t <= s <= u (u None: no upper bound)."""
    out = s < t[:, None]
    return out if u is None else out.logical_or_(s > u[:, None])


def _kept_group_masses(s, mx, t, truncated, e=None, u=None):
    """Group masses of exp(s - mx) over the kept tokens (t <= s <= u): (n, V) -> (n, G).

    Without `e`, rows go through in blocks of ~1M entries: the exp temporary is then a few MB that the
    allocator reuses, not a fresh logits-sized buffer (13 MB at B = 64) mapped and page-faulted in on
    every decode step. e: exp(s - mx) when the caller has it (it is overwritten).
    """
    if e is not None:
        if truncated:
            e.masked_fill_(_cut_off(s, t, u), 0.0)
        return _group_masses(e)
    n, V = s.shape
    rows = max(1, (1 << 20) // V)
    out = []
    for i in range(0, n, rows):
        e = torch.sub(s[i:i + rows], mx[i:i + rows, None]).exp_()  # one temporary of the block's size, not two
        if truncated:
            e.masked_fill_(_cut_off(s[i:i + rows], t[i:i + rows], None if u is None else u[i:i + rows]), 0.0)
        out.append(_group_masses(e))
    return out[0] if len(out) == 1 else torch.cat(out)


def _draw_dense(s, mx, t, k1, k2, e=None, u=None):
    """The two-level race over full rows s (n, V) (scaled logits) keeping t <= s <= u: (tokens, log-probs).

    An exact draw from the kept softmax: the group wins with probability (its kept mass) / (kept mass),
    then the token within it with probability (its mass) / (the group's). Noise is hashed for the
    ceil(V / GROUP) groups and the GROUP tokens of the winner, not for all V tokens.
    e: exp(s - mx) when the caller has it (it is overwritten). u: the band's top (typical), None or +inf: none.
    """
    n, V = s.shape
    _check_scale(mx)
    if u is not None and bool((u < float("inf")).any()):
        mx, e = torch.minimum(mx, u), None  # typical may cut the max: masses relative to the largest kept value
    else:
        u = None
    w = _kept_group_masses(s, mx, t, u is not None or bool((t > NEG_INF).any()), e, u)  # (n, G)
    # float64 total: rows stay bit-identical across batch shapes (see reference.partition)
    z = w.sum(-1).float()
    gids = torch.arange(w.shape[1], device=s.device).expand(n, -1)
    g = _race(w.float().log(), gids, k1, k2, groups=True)  # (n,)
    ids = g[:, None] * GROUP + torch.arange(GROUP, device=s.device)  # (n, GROUP) the winner's tokens
    vals = s.gather(1, ids.clamp(max=V - 1))
    vals.masked_fill_((ids >= V) | _cut_off(vals, t, u), NEG_INF)
    tok = _race(vals, ids, k1, k2)
    return tok, (s.gather(1, tok[:, None])[:, 0] - mx) - torch.log(z)


def _draw_sparse(vals, idx, t, k1, k2, V, u=None):
    """The two-level race over entries (n, m) (values, token ids), keeping t <= vals <= u.

    The same draw as _draw_dense on the full rows (group masses summed from the kept entries), for
    windows that hold every kept token: top-k rows never build the full row.
    """
    n, m = vals.shape
    kept = ~_cut_off(vals, t, u)
    mx = vals.amax(-1) if u is None else torch.minimum(vals.amax(-1), u)  # the largest kept value
    _check_scale(mx)
    e = torch.exp(vals - mx[:, None]).masked_fill_(~kept, 0.0)  # (n, m)
    z = e.sum(-1, dtype=torch.float64).float()
    idx = idx.long()
    grp = idx // GROUP
    G = -(-V // GROUP)
    w = torch.zeros(n, G, device=vals.device).scatter_add_(1, grp, e).gather(1, grp)  # (n, m) group mass
    g = _race(w.masked_fill(~kept, 0.0).log(), grp, k1, k2, groups=True)  # (n,)
    tok = _race(vals.masked_fill((grp != g[:, None]) | ~kept, NEG_INF), idx, k1, k2)
    s_tok = torch.where(idx == tok[:, None], vals, NEG_INF).amax(-1)
    return tok, (s_tok - mx) - torch.log(z)


def _mass_quantile(d, e, target):
    """Per row of (n, m): the smallest value v of d with mass(d <= v) >= target (e the masses, d >= 0, +inf for
    entries that weigh nothing), +inf where rounding keeps the mass short of the target. The nucleus' method
    (`_nucleus_threshold`) on d instead of the distance below the max: a histogram of d, then a sort of the one
    bin where the mass crosses the target."""
    n = d.shape[0]
    b = (d * (1.0 / BIN_W)).clamp_(max=NBINS - 1).to(torch.int32).long()  # (n, m); +inf -> the catch-all bin
    mass = torch.zeros(n, NBINS, device=d.device).scatter_add_(1, b, e)  # (n, NBINS), in token order
    cum = mass.cumsum(-1)
    L = (cum < target[:, None]).sum(-1).clamp(max=NBINS - 1)  # the crossing bin
    below = torch.where(L > 0, cum.gather(1, (L - 1).clamp(min=0)[:, None])[:, 0], 0.0)  # < target
    neg, idx = _compact(b == L[:, None], -d)  # the crossing bin's -d, padded with -inf
    neg, order = neg.sort(-1, descending=True)  # d ascending
    w = e.gather(1, idx.gather(1, order)).masked_fill_(neg == NEG_INF, 0.0)
    excl = below[:, None] + F.pad(w.cumsum(-1)[:, :-1], (1, 0))  # mass strictly before each entry
    last = ((excl < target[:, None]).sum(-1) - 1).clamp(min=0)
    return -neg.gather(1, last[:, None])[:, 0]


def _typical_band(vals, mx, t, typ):
    """Typical sampling over rows vals (n, m) holding every token kept so far (s >= t; mx the max, kept):
    the band (lo, hi) of values kept, each (n,).

    transformers' TypicalLogitsWarper keeps the tokens closest to the entropy, |-log p - H| smallest first,
    until their mass reaches typical_p (the crossing one and its ties included). With log p = s - mx - log Z
    and H = log Z - E[s - mx], -log p - H = (mx - s) + E[s - mx]: the distance of s from its mean under p.
    That distance (rounded as the Triton kernel rounds it) falls then rises with s, so the tokens within any
    distance of the mean are a band of values: the kept set is lo <= s <= hi.
    """
    below_t = vals < t[:, None]
    diff = vals - mx[:, None]  # s - mx, once: -(s - mx) is exactly mx - s, so d rounds as the kernel's does
    e = torch.exp(diff).masked_fill_(below_t, 0.0)
    z = e.sum(-1, dtype=torch.float64).float()  # float64 sums: batch-invariant (reference.partition)
    a = torch.where(e > 0, e * diff, 0.0).sum(-1, dtype=torch.float64).float()
    d = diff.neg_().add_((a / z)[:, None]).abs_().masked_fill_(below_t, float("inf"))
    kept = (d <= _mass_quantile(d, e, typ * z)[:, None]).logical_and_(~below_t)
    return (torch.where(kept, vals, float("inf")).amin(-1), torch.where(kept, vals, NEG_INF).amax(-1))


def _cut(vals, mx, t, lmp, typ, eps, eta):
    """min-p, typical, epsilon, eta (transformers' order: after top-k and top-p) on rows vals (n, m) that hold
    every token kept so far, threshold t; mx (n,) the rows' max. lmp (n,): log(min_p), -inf when off; typ
    (n,): typical_p, 1 when off; eps, eta (n,): epsilon_cutoff, eta_cutoff, 0 when off
    (kernels.params.normalize_cutoffs). Returns the kept band (t, u), each (n,): kept iff t <= s <= u; u is
    +inf unless typical is on.

    min-p keeps p >= min_p * p_max, i.e. s >= mx + log(min_p): a threshold on the max, no pass. Typical keeps a
    band (`_typical_band`). Epsilon keeps p >= epsilon, p = exp(s - m) / Z over the tokens kept so far (what
    transformers' warper sees, and in its domain: a probability exactly at epsilon is kept or not as its
    softmax rounds), and the largest kept value m always (its min_tokens_to_keep=1); p is monotone in s, so
    that is a threshold too: the smallest kept row value.
    """
    t = torch.maximum(t, mx + lmp)
    u = torch.full_like(t, float("inf"))
    on = typ < 1
    top = None  # the upper bound the masks need: none (no extra pass) unless typical is on
    if bool(on.any()):
        lo, hi = _typical_band(vals, mx, t, typ)
        t, u = torch.where(on, lo, t), torch.where(on, hi, u)
        top = u
    m = torch.minimum(mx, u)  # the largest kept value: typical may cut the max
    on = eps > 0
    if bool(on.any()):
        e = torch.exp(vals - m[:, None]).masked_fill_(_cut_off(vals, t, top), 0.0)
        z = e.sum(-1, dtype=torch.float64).float()  # as reference.partition: batch-invariant
        t_eps = torch.where(e / z[:, None] >= eps[:, None], vals, float("inf")).amin(-1)
        t = torch.where(on, torch.maximum(t, torch.minimum(m, t_eps)), t)
    on = eta > 0
    if bool(on.any()):
        # eta: epsilon with the cut min(eta, sqrt(eta) * exp(-H)), H the entropy of the tokens kept so far
        e = torch.exp(vals - m[:, None]).masked_fill_(_cut_off(vals, t, top), 0.0)
        z = e.sum(-1, dtype=torch.float64).float()
        a = torch.where(e > 0, e * (vals - m[:, None]), 0.0).sum(-1, dtype=torch.float64).float()
        cut = torch.minimum(eta, torch.sqrt(eta) * torch.exp(-(torch.log(z) - a / z)))
        t_eta = torch.where(e / z[:, None] >= cut[:, None], vals, float("inf")).amin(-1)
        t = torch.where(on, torch.maximum(t, torch.minimum(m, t_eta)), t)
    return t, u


def _resolve(vals, k, p, full: bool):
    """Thresholds from descending top-k windows (n, m); returns (t, resolved) per row.

    full: the window is the whole row, so every row resolves.
    """
    mx = vals[:, 0]
    t_k = topk_threshold(vals, k)
    z_k = partition(vals.masked_fill(vals < t_k[:, None], NEG_INF), mx)
    t_p, _ = topp_threshold(vals, mx, z_k, p, t_k)  # the window holds the whole top-k set
    t = torch.maximum(t_k, t_p)
    if full:
        return t, torch.ones_like(k, dtype=torch.bool)
    last = vals[:, -1]
    tie_spills = (last > NEG_INF) & (last >= t_k)  # a tie with the k-th value may lie past the window
    return t, ~tie_spills


def _compact(mask, s):
    """Ragged selection -> padded (vals (n, m), -inf padding; idx (n, m) int64), each row in token order."""
    n = mask.shape[0]
    count = mask.sum(-1)
    r, c = mask.nonzero(as_tuple=True)  # row-major: each row's entries are contiguous
    pos = torch.arange(r.numel(), device=s.device) - (count.cumsum(0) - count)[r]
    m = max(int(count.max()), 1)
    vals = torch.full((n, m), NEG_INF, device=s.device)
    idx = torch.zeros((n, m), dtype=torch.int64, device=s.device)
    vals[r, pos], idx[r, pos] = s[r, c], c
    return vals, idx


def _nucleus_threshold(s, mx, p):
    """Top-p without top-k, with no sort of the row: the threshold (n,) on rows s (n, V) (scaled logits),
    and exp(s - mx) (n, V), which the draw reuses.

    One pass bins every token by its distance below the row max mx (BIN_W nats a bin) and sums each
    bin's mass. Bins above the one where the cumulative mass crosses p are kept whole, bins below it
    dropped; only the crossing bin's few tokens are sorted, to place the threshold inside it.
    """
    e = torch.sub(s, mx[:, None]).exp_()  # (n, V) exp(s - mx)
    # bin = floor((mx - s) / BIN_W), monotone in s; -inf tokens land in the last bin. Via int32: much faster.
    b = torch.sub(mx[:, None], s).mul_(1.0 / BIN_W).clamp_(max=NBINS - 1).to(torch.int32).long()  # (n, V)
    # scatter_add accumulates each row in token order, whatever the batch: Z stays batch-invariant
    mass = torch.zeros(s.shape[0], NBINS, device=s.device).scatter_add_(1, b, e)  # (n, NBINS)
    z = mass.sum(-1, dtype=torch.float64).float()
    target = p * z
    cum = mass.cumsum(-1)
    L = (cum < target[:, None]).sum(-1).clamp(max=NBINS - 1)  # the crossing bin
    above = torch.where(L > 0, cum.gather(1, (L - 1).clamp(min=0)[:, None])[:, 0], 0.0)  # < target
    bvals = _compact(b == L[:, None], s)[0].sort(-1, descending=True).values  # (n, mb) the crossing bin
    w = torch.exp(bvals - mx[:, None])
    excl = above[:, None] + F.pad(w.cumsum(-1)[:, :-1], (1, 0))  # mass strictly above each token
    last = ((excl < target[:, None]).sum(-1) - 1).clamp(min=0)
    # bins are monotone in s: every token of a higher bin is > t, every token of a lower one < t,
    # so the kept set (ties with t included) is just s >= t
    return bvals.gather(1, last[:, None])[:, 0], e


def _nucleus(s, mx, p, lmp, typ, eps, eta, k1, k2):
    """Top-p rows without top-k: (tokens, log-probs), drawn on the full rows with the nucleus threshold
    (raised by min-p / epsilon, banded by typical)."""
    t, e = _nucleus_threshold(s, mx, p)
    t, u = _cut(s, mx, t, lmp, typ, eps, eta)
    return _draw_dense(s, mx, t, k1, k2, e=e, u=u)


def _finish(out, rows, vals, idx, t, u, k1, k2, V):
    """Draw for `rows` from their resolved windows; noise is hashed only for the widest prefix >= t."""
    if rows.numel() == 0:
        return
    tokens, logprobs = out
    kept_w = max(int((vals >= t[:, None]).sum(-1).max()), 1)  # entries >= t are a prefix when sorted
    tokens[rows], logprobs[rows] = _draw_sparse(vals[:, :kept_w], idx[:, :kept_w], t, k1[rows], k2[rows], V,
                                                None if bool((u == float("inf")).all()) else u)


def _scale(x, T):
    """x / T per row, without a pass over x when every T is 1."""
    return x if bool((T == 1).all()) else x / T[:, None]


def _topk_windows(x, T, k, p, lmp, typ, eps, eta, rows):
    """Top-k rows, resolved: yields (rows, vals, idx, t, u) with each row's descending window of x / T that
    provably holds its whole kept set, and its kept band (min-p / typical / epsilon / eta included: they only
    shrink the set). Windows grow (WINDOWS, then a full sort) until no tie with the k-th value can spill past
    them. x (n, V) float32; T, k, p, lmp, typ, eps, eta per row (n,); rows (r,)."""
    if rows.numel() == 0:  # ~20 small ops for nothing, every step of untruncated or top-p-only sampling
        return
    V = x.shape[1]
    width = _first_window(k, V)
    pending = torch.zeros(x.shape[0], dtype=torch.bool, device=x.device)
    pending[rows] = True
    for m in (*[w for w in WINDOWS if w < V], V):
        take = (pending & (width <= m)).nonzero()[:, 0]
        if take.numel() == 0:
            continue
        xr, Tr = _rows(x, take, x.shape[0]), T[take, None]
        vals, idx = (xr.sort(-1, descending=True) if m == V else xr.topk(m, -1))
        vals = vals / Tr  # dividing by T > 0 keeps the order, so the window is that of x / T
        t, done = _resolve(vals, k[take], p[take], full=m == V)
        d = done.nonzero()[:, 0]
        vals, idx, t = vals[d], idx[d], t[d]
        t, u = _cut(vals, vals[:, 0], t, lmp[take[d]], typ[take[d]], eps[take[d]], eta[take[d]])
        yield take[d], vals, idx, t, u
        pending[take[d]] = False
        width[take] = m + 1  # unresolved rows move on to the next window


def _routes(k, p):
    """Rows by how their kept set is found: untruncated, top-p alone (nucleus), top-k (windows)."""
    return (((k == 0) & (p == 1)).nonzero()[:, 0], ((k == 0) & (p < 1)).nonzero()[:, 0],
            (k > 0).nonzero()[:, 0])


def _sample_rows(x, mx, T, k, p, lmp, typ, eps, eta, k1, k2):
    """Sample rows that all have temperature > 0. x (n, V) float32, mx its row maxima."""
    n, V = x.shape
    out = (torch.empty(n, dtype=torch.int64, device=x.device), torch.empty(n, dtype=torch.float32, device=x.device))
    k = effective_top_k(k, V)
    plain, nucleus, windowed = _routes(k, p)
    if plain.numel():
        # No top-k / top-p: every token is a candidate unless a later rule cuts; no ordering needed.
        s, mx_s = _scale(_rows(x, plain, n), T[plain]), mx[plain] / T[plain]
        t0 = torch.full((plain.numel(),), NEG_INF, device=x.device)
        t, u = _cut(s, mx_s, t0, lmp[plain], typ[plain], eps[plain], eta[plain])
        out[0][plain], out[1][plain] = _draw_dense(s, mx_s, t, k1[plain], k2[plain], u=u)
    if nucleus.numel():
        # max(x / T) == max(x) / T exactly: rounding is monotone
        out[0][nucleus], out[1][nucleus] = _nucleus(_scale(_rows(x, nucleus, n), T[nucleus]),
                                                    mx[nucleus] / T[nucleus], p[nucleus], lmp[nucleus], typ[nucleus],
                                                    eps[nucleus], eta[nucleus], k1[nucleus], k2[nucleus])
    for rows, vals, idx, t, u in _topk_windows(x, T, k, p, lmp, typ, eps, eta, windowed):
        _finish(out, rows, vals, idx, t, u, k1, k2, V)
    return out


def keep_bounds(x, T, k, p, lmp, typ, eps, eta):
    """The band of each row's kept set, exactly as the sampler finds it: a token is kept iff t <= x / T <= u.
    x (n, V) float32, every T > 0; lmp, typ, eps, eta: log(min_p) (-inf: off), typical_p (1: off),
    epsilon_cutoff and eta_cutoff (0: off); returns (t, u), each (n,) float32 (-inf, +inf: nothing truncated)."""
    n, V = x.shape
    t = torch.full((n,), NEG_INF, device=x.device)
    u = torch.full((n,), float("inf"), device=x.device)
    k = effective_top_k(k, V)
    plain, nucleus, windowed = _routes(k, p)
    cuts = (lmp[plain] > NEG_INF) | (typ[plain] < 1) | (eps[plain] > 0) | (eta[plain] > 0)
    plain = plain[cuts.nonzero()[:, 0]]  # rows cut by a later rule
    if plain.numel():
        s = _scale(_rows(x, plain, n), T[plain])
        t[plain], u[plain] = _cut(s, s.amax(-1), t[plain], lmp[plain], typ[plain], eps[plain], eta[plain])
    if nucleus.numel():
        s = _scale(_rows(x, nucleus, n), T[nucleus])
        mx = s.amax(-1)
        t[nucleus], u[nucleus] = _cut(s, mx, _nucleus_threshold(s, mx, p[nucleus])[0], lmp[nucleus], typ[nucleus],
                                      eps[nucleus], eta[nucleus])
    for rows, _, _, t_rows, u_rows in _topk_windows(x, T, k, p, lmp, typ, eps, eta, windowed):
        t[rows], u[rows] = t_rows, u_rows
    return t, u


def _greedy(x):
    """argmax and its log-probability under log_softmax of the raw row."""
    tok = x.argmax(-1)
    mx = x.gather(1, tok[:, None])[:, 0]
    return tok, -torch.log(partition(x, mx))


def sample_torch(logits, T, k, p, seed, position, lmp, eps, eta, typ):
    """(tokens int64 (B,), logprobs float32 (B,)); parameters already normalised to (B,) tensors. Noise keys
    are hashed for the rows that draw (temperature > 0) only: greedy rows need none."""
    x = logits.float()
    mx = check_finite(x)
    B = x.shape[0]
    greedy = T == 0
    if bool(greedy.all()):
        return _greedy(x)
    tokens = torch.empty(B, dtype=torch.int64, device=x.device)
    logprobs = torch.empty(B, dtype=torch.float32, device=x.device)
    g = greedy.nonzero()[:, 0]
    if g.numel():
        tokens[g], logprobs[g] = _greedy(x.index_select(0, g))
    r = (~greedy).nonzero()[:, 0]
    if not torch.isfinite(mx[r] / T[r]).all():
        raise ValueError("logits / temperature overflows float32 (temperature too small for these "
                         "logits); use temperature=0 for greedy decoding")
    tokens[r], logprobs[r] = _sample_rows(_rows(x, r, B), mx[r], T[r], k[r], p[r], lmp[r], typ[r], eps[r], eta[r],
                                          *row_keys(seed[r], position[r]))
    return tokens, logprobs
