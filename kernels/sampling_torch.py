"""The torch sampling path: the CPU path users run, and the reference the Triton kernel must match.

No full-vocabulary sort unless a row needs it. Rows with top-k take `topk` windows of growing width (64,
512, 4096, 32768, then a sort) until the window provably holds the whole kept set (no tie spilling past
it); rows with top-p alone gather their nucleus from a one-pass histogram of the mass below the row max.
Noise is hashed only for kept tokens. Rows resolve independently, so a row's result never depends on
the rows beside it.
"""

import torch

from .hashing import hash_to_gumbel, token_hash
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


def _draw(vals, idx, t, k1, k2):
    """Exponential race over the kept entries (vals >= t) of windows (n, m): (tokens, log-probs)."""
    kept = vals >= t[:, None]  # (n, m)
    mx = vals.amax(-1)  # the row max: always kept
    z = partition(vals.masked_fill(~kept, NEG_INF), mx)
    if not torch.isfinite(mx).all():
        raise ValueError("logits / temperature overflows float32 (temperature too small for these "
                         "logits); use temperature=0 for greedy decoding")
    score = hash_to_gumbel(token_hash(idx, k1, k2))
    score += vals
    if bool((t > NEG_INF).any()):
        score.masked_fill_(~kept, NEG_INF)
    a = score.argmax(-1, keepdim=True)
    return idx.gather(1, a)[:, 0].long(), (vals.gather(1, a)[:, 0] - mx) - torch.log(z)


def _resolve(vals, k, p, z_full, full: bool, closed: bool = False):
    """Thresholds from descending windows (n, m); returns (t, resolved) per row.

    z_full: mass of the whole row (for top-p without top-k). full: the window is the whole row, so every
    row resolves. closed: the window holds every token >= its smallest value (no tie can spill past it).
    """
    mx = vals[:, 0]
    t_k = topk_threshold(vals, k)
    z_k = torch.where(k > 0, partition(vals.masked_fill(vals < t_k[:, None], NEG_INF), mx), z_full)
    t_p, reached = topp_threshold(vals, mx, z_k, p, t_k)
    t = torch.maximum(t_k, t_p)
    if full:
        return t, torch.ones_like(k, dtype=torch.bool)
    last = vals[:, -1]
    tie_spills = (last > NEG_INF) & ((last >= t) | ((k > 0) & (last >= t_k))) & (not closed)
    mass_short = (k == 0) & (p < 1) & ~reached
    return t, ~(tie_spills | mass_short)


def _nucleus_window(s, mx, p):
    """For top-p without top-k: (vals, idx) descending, padded with -inf, holding each row's nucleus; Z.

    One pass bins every token by its distance below the row max mx (BIN_W nats a bin) and sums each
    bin's mass; the bins down to the one where the mass reaches p (plus a margin for rounding) hold the
    nucleus. Only those tokens are gathered and sorted: a few thousand, not the vocabulary.
    """
    n, V = s.shape
    d = mx[:, None] - s  # (n, V) >= 0; +inf for masked tokens
    e = torch.neg(d).exp_()  # exp(s - mx)
    b = d.mul_(1.0 / BIN_W).clamp_(max=NBINS - 1).to(torch.int32).long()  # via int32: much faster
    # scatter_add accumulates each row in token order, whatever the batch: Z stays batch-invariant
    mass = torch.zeros(n, NBINS, device=s.device).scatter_add_(1, b, e)  # (n, NBINS)
    z = mass.sum(-1, dtype=torch.float64).float()
    need = (p + 1e-4).clamp(max=1.0) * z
    last_bin = (mass.cumsum(-1) < need[:, None]).sum(-1).clamp(max=NBINS - 1)
    cand = b <= last_bin[:, None]  # (n, V)
    count = cand.sum(-1)
    r, c = cand.nonzero(as_tuple=True)  # row-major: each row's candidates are contiguous
    pos = torch.arange(r.numel(), device=s.device) - (count.cumsum(0) - count)[r]
    m = int(count.max())
    vals = torch.full((n, m), NEG_INF, device=s.device)
    idx = torch.zeros((n, m), dtype=torch.int64, device=s.device)
    vals[r, pos], idx[r, pos] = s[r, c], c
    vals, order = vals.sort(-1, descending=True)
    return vals, idx.gather(1, order), z


def _finish(out, rows, vals, idx, t, k1, k2):
    """Draw for `rows` from their resolved windows; noise is hashed only for the widest kept prefix."""
    if rows.numel() == 0:
        return
    tokens, logprobs = out
    kept_w = max(int((vals >= t[:, None]).sum(-1).max()), 1)  # kept entries are a prefix when sorted
    tokens[rows], logprobs[rows] = _draw(vals[:, :kept_w], idx[:, :kept_w], t, k1[rows], k2[rows])


def _scale(x, T):
    """x / T per row, without a pass over x when every T is 1."""
    return x if bool((T == 1).all()) else x / T[:, None]


def _sample_rows(x, mx, T, k, p, k1, k2):
    """Sample rows that all have temperature > 0. x (n, V) float32, mx its row maxima."""
    n, V = x.shape
    out = (torch.empty(n, dtype=torch.int64, device=x.device), torch.empty(n, dtype=torch.float32, device=x.device))
    k = effective_top_k(k, V)
    pending = torch.ones(n, dtype=torch.bool, device=x.device)
    width = _first_window(k, V)
    z_full = torch.zeros(n, device=x.device)
    nucleus = ((k == 0) & (p < 1)).nonzero()[:, 0]
    if nucleus.numel():
        # max(x / T) == max(x) / T exactly: rounding is monotone
        vals, idx, z = _nucleus_window(_scale(_rows(x, nucleus, n), T[nucleus]), mx[nucleus] / T[nucleus],
                                       p[nucleus])
        z_full[nucleus] = z
        t, done = _resolve(vals, k[nucleus], p[nucleus], z, full=vals.shape[1] == V, closed=True)
        d = done.nonzero()[:, 0]
        _finish(out, nucleus[d], vals[d], idx[d], t[d], k1, k2)
        pending[nucleus[d]] = False
        width[nucleus] = V  # a rounding miss falls back to the full sort
    for m in (*[w for w in WINDOWS if w < V], V):
        take = (pending & (width <= m)).nonzero()[:, 0]
        if take.numel() == 0:
            continue
        xr, Tr = _rows(x, take, n), T[take, None]
        kr, pr = k[take], p[take]
        if m == V and not bool(((kr > 0) | (pr < 1)).any()):
            # Nothing truncated: every token is a candidate, no ordering needed.
            vals, idx = _scale(xr, T[take]), torch.arange(V, device=x.device, dtype=torch.int32).expand(take.numel(), V)
            t, done = torch.full_like(pr, NEG_INF), torch.ones_like(kr, dtype=torch.bool)
        else:
            vals, idx = (xr.sort(-1, descending=True) if m == V else xr.topk(m, -1))
            vals = vals / Tr  # dividing by T > 0 keeps the order, so the window is that of x / T
            t, done = _resolve(vals, kr, pr, z_full[take], full=m == V)
        d = done.nonzero()[:, 0]
        _finish(out, take[d], vals[d], idx[d], t[d], k1, k2)
        pending[take[d]] = False
        width[take] = m + 1  # unresolved rows move on to the next window
    return out


def _greedy(x):
    """argmax and its log-probability under log_softmax of the raw row."""
    tok = x.argmax(-1)
    mx = x.gather(1, tok[:, None])[:, 0]
    return tok, -torch.log(partition(x, mx))


def sample_torch(logits, T, k, p, k1, k2):
    """(tokens int64 (B,), logprobs float32 (B,)); parameters already normalised to (B,) tensors."""
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
    tokens[r], logprobs[r] = _sample_rows(_rows(x, r, B), mx[r], T[r], k[r], p[r], k1[r], k2[r])
    return tokens, logprobs
