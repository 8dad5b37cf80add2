"""The torch sampling path: the CPU path users run, and the reference the Triton kernel must match.

No full-vocabulary sort unless a row needs it: each row takes `topk` windows of growing width (64, 512,
4096, 32768, then a sort) until its window provably holds the whole kept set (top-k reached without a
tie spilling past the window; top-p mass reached), and noise is hashed only for tokens in the window.
Rows resolve independently, so a row's result never depends on the rows beside it.
"""

import torch

from .hashing import hash_to_gumbel, token_hash
from .reference import effective_top_k, logsumexp, topk_threshold, topp_threshold

WINDOWS = (64, 512, 4096, 32768)
NEG_INF = float("-inf")


def _rows(x: torch.Tensor, rows: torch.Tensor, n: int) -> torch.Tensor:
    # Gathering rows copies them: skip it when every row is taken.
    return x if rows.numel() == n else x.index_select(0, rows)


def _first_window(k: torch.Tensor, p: torch.Tensor, V: int) -> torch.Tensor:
    """Width of each row's first window: the smallest one holding k + 1 values (the +1 detects ties)."""
    w = torch.full_like(k, V)
    for width in reversed(WINDOWS):
        w = torch.where((k > 0) & (k + 1 <= width) & (width < V), width, w)
    # top-p alone: start small, since real models' nuclei are small.
    return torch.where((k == 0) & (p < 1), min(WINDOWS[0], V), w)


def _draw(vals, idx, t, k1, k2):
    """Exponential race over kept entries (vals >= t) of the window: (tokens, log-probs)."""
    kept = vals >= t[:, None]  # (n, m); a prefix when vals is sorted
    lse = logsumexp(vals.masked_fill(~kept, NEG_INF))
    if not torch.isfinite(lse).all():
        raise ValueError("logits / temperature overflows float32 (temperature too small for these "
                         "logits); use temperature=0 for greedy decoding")
    score = (vals + hash_to_gumbel(token_hash(idx, k1, k2))).masked_fill(~kept, NEG_INF)
    a = score.argmax(-1, keepdim=True)
    return idx.gather(1, a)[:, 0], vals.gather(1, a)[:, 0] - lse


def _resolve(vals, idx, k, p, lse_full, full: bool):
    """Thresholds from a descending window (n, m); returns (t, resolved) per row.

    full=True means the window is the whole row, so every row resolves.
    """
    t_k = topk_threshold(vals, k)
    kept_k = vals >= t_k[:, None]
    lse_k = torch.where(k > 0, logsumexp(vals.masked_fill(~kept_k, NEG_INF)), lse_full)
    t_p, mass = topp_threshold(vals, lse_k, p, t_k)
    t = torch.maximum(t_k, t_p)
    if full:
        return t, torch.ones_like(k, dtype=torch.bool)
    last = vals[:, -1]
    tie_spills = (last > NEG_INF) & ((last >= t) | ((k > 0) & (last >= t_k)))
    mass_short = (k == 0) & (p < 1) & (mass < p)
    return t, ~(tie_spills | mass_short)


def _sample_rows(x, T, k, p, k1, k2):
    """Sample rows that all have temperature > 0. x (n, V) float32."""
    n, V = x.shape
    tokens = torch.empty(n, dtype=torch.int64, device=x.device)
    logprobs = torch.empty(n, dtype=torch.float32, device=x.device)
    k = effective_top_k(k, V)
    # top-p without top-k normalises over the whole row: one full pass for those rows only.
    lse_full = torch.zeros(n, device=x.device)
    needs_lse = ((k == 0) & (p < 1)).nonzero()[:, 0]
    if needs_lse.numel():
        rows = _rows(x, needs_lse, n)
        lse_full[needs_lse] = logsumexp(rows / T[needs_lse, None])
    width = _first_window(k, p, V)
    pending = torch.ones(n, dtype=torch.bool, device=x.device)
    for m in (*[w for w in WINDOWS if w < V], V):
        take = (pending & (width <= m)).nonzero()[:, 0]
        if take.numel() == 0:
            continue
        xr, Tr = _rows(x, take, n), T[take, None]
        kr, pr = k[take], p[take]
        if m == V and not bool(((kr > 0) | (pr < 1)).any()):
            # Nothing truncated: every token is a candidate, no ordering needed.
            vals, idx = xr / Tr, torch.arange(V, device=x.device).expand(take.numel(), V)
            t, done = torch.full_like(pr, NEG_INF), torch.ones_like(kr, dtype=torch.bool)
        else:
            vals, idx = (xr.sort(-1, descending=True) if m == V else xr.topk(m, -1))
            vals = vals / Tr  # dividing by T > 0 keeps the order, so the window is that of x / T
            t, done = _resolve(vals, idx, kr, pr, lse_full[take], full=m == V)
        # Kept entries are a prefix of a sorted window (or all of an unsorted one): hash noise only for
        # the widest kept prefix.
        kept_w = max(int((vals >= t[:, None]).sum(-1).max()), 1)
        vals, idx = vals[:, :kept_w], idx[:, :kept_w]
        d = done.nonzero()[:, 0]
        rows = take[d]
        tok, lp = _draw(vals[d], idx[d], t[d], k1[rows], k2[rows])
        tokens[rows], logprobs[rows] = tok, lp
        pending[rows] = False
        width[take] = m + 1  # unresolved rows move on to the next window
    return tokens, logprobs


def _check_finite(x: torch.Tensor) -> torch.Tensor:
    """Row maxima; raises on NaN, +inf, or a row with no finite logit (max propagates NaN)."""
    mx = x.amax(-1)
    if torch.isnan(mx).any():
        raise ValueError("logits contain NaN (check the model's forward pass / dtype overflow)")
    if (mx == float("inf")).any():
        raise ValueError("logits contain +inf; mask tokens with -inf instead")
    if (mx == NEG_INF).any():
        raise ValueError("a row of logits is entirely -inf: nothing can be drawn")
    return mx


def sample_torch(logits, T, k, p, k1, k2):
    """(tokens int64 (B,), logprobs float32 (B,)); parameters already normalised to (B,) tensors."""
    x = logits.float()
    _check_finite(x)
    B = x.shape[0]
    greedy = T == 0
    if bool(greedy.all()):
        tok = x.argmax(-1)
        return tok, x.gather(1, tok[:, None])[:, 0] - logsumexp(x)
    tokens = torch.empty(B, dtype=torch.int64, device=x.device)
    logprobs = torch.empty(B, dtype=torch.float32, device=x.device)
    g = greedy.nonzero()[:, 0]
    if g.numel():
        xg = x.index_select(0, g)
        tok = xg.argmax(-1)
        tokens[g], logprobs[g] = tok, xg.gather(1, tok[:, None])[:, 0] - logsumexp(xg)
    r = (~greedy).nonzero()[:, 0]
    xr = _rows(x, r, B)
    tokens[r], logprobs[r] = _sample_rows(xr, T[r], k[r], p[r], k1[r], k2[r])
    return tokens, logprobs
