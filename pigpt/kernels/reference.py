"""The processed distribution, computed the plain way (full sort): the reference the fast paths match."""

import torch
import torch.nn.functional as F

from .params import check_finite, check_logits, normalize_cutoffs, normalize_params


def partition(v: torch.Tensor, mx: torch.Tensor) -> torch.Tensor:
    """Z = sum(exp(v - mx)) over the last dim, summed in float64, as float32.  # (B,)

    Log-probs are then (s - mx) - log(Z): s - mx is exact, so a large scale (tiny temperature) costs
    no precision, as it would through a rounded logsumexp. The float64 sum keeps rows batch-invariant:
    torch splits a reduction differently for different batch shapes, and float32 sums would then differ
    in the last bit with the batch around a row; float64 sums round to the same float32 but with
    probability ~1e-8.
    """
    return torch.exp(v - mx[:, None]).sum(-1, dtype=torch.float64).float()


def logprob_at(s: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
    """log softmax(s)[token] per row of s (B, V) (-inf entries weigh nothing): (s_token - m) - log(Z), m the row's
    max (taken as a constant: the value does not depend on it, so neither does the gradient), Z its `partition`.
    The one log-prob formula: the sampler's draws, token_logprobs, score and the raw model's log-probs all take
    it, so that equal logits give equal log-probs bit for bit; differentiable in s."""
    m = s.detach().amax(-1)
    return (s.gather(1, tokens[:, None])[:, 0] - m) - torch.log(partition(s, m))


def topk_threshold(vals: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
    """k-th largest value per row of descending `vals`; -inf where top-k is off (k == 0).  # (B,)"""
    kth = vals.gather(1, (k - 1).clamp(0, vals.shape[1] - 1)[:, None])[:, 0]
    return torch.where(k > 0, kth, float("-inf"))


def topp_threshold(vals, mx, z_kept, p, floor):
    """Smallest value kept by top-p over descending `vals` (entries below `floor` weigh nothing).

    A token is kept iff the mass of tokens strictly above it is < p: the smallest top set whose mass
    reaches p, the crossing token included, and every token tied with a kept one kept too. Masses are
    exp(s - mx), compared with p * z_kept (as the Triton kernel does).
    Returns (threshold (B,), whether the window's mass reaches p (B,)).
    """
    w = torch.exp(vals - mx[:, None]).masked_fill(vals < floor[:, None], 0.0)  # (B, m)
    cum = w.cumsum(-1)
    excl = F.pad(cum[:, :-1], (1, 0))  # mass strictly before each position
    target = (p * z_kept)[:, None]
    # excl is non-decreasing and excl[:, 0] = 0 < target (clamped for rows where top-p is off)
    last = ((excl < target).sum(-1) - 1).clamp(min=0)
    t = vals.gather(1, last[:, None])[:, 0]
    return torch.where(p < 1, t, float("-inf")), cum[:, -1] >= target[:, 0]


def effective_top_k(top_k: torch.Tensor, V: int) -> torch.Tensor:
    """top_k with every 'off' spelling (0, negative, >= V) mapped to 0."""
    return torch.where((top_k > 0) & (top_k < V), top_k, 0)


def process_logits(logits, *, temperature=1.0, top_k=0, top_p=1.0, min_p=0.0, typical_p=1.0, epsilon_cutoff=0.0,
                   eta_cutoff=0.0) -> torch.Tensor:
    """Log-probabilities (B, V) float32 of the distribution `sample_from_logits` draws from.

    temperature -> top-k -> top-p -> min-p -> typical -> epsilon -> eta as in transformers, then log-softmax over
    the kept set; removed tokens are -inf. A row with temperature 0 (greedy) is a point mass: 0 at
    argmax(logits), -inf elsewhere.
    """
    check_logits(logits)
    T, k, p, _, _ = normalize_params(logits, temperature, top_k, top_p, 0, 0)
    lmp, eps, eta, typ = normalize_cutoffs(logits, min_p, epsilon_cutoff, eta_cutoff, typical_p)
    x = logits.float()
    check_finite(x)
    B, V = x.shape
    greedy = T == 0
    s = x / torch.where(greedy, 1.0, T)[:, None]  # (B, V)
    vals = s.sort(-1, descending=True).values
    t_k = topk_threshold(vals, effective_top_k(k, V))
    mx = vals[:, 0]
    z_k = partition(vals.masked_fill(vals < t_k[:, None], float("-inf")), mx)
    t_p, _ = topp_threshold(vals, mx, z_k, p, t_k)
    t = torch.maximum(torch.maximum(t_k, t_p), mx + lmp)  # min-p: p >= min_p * p_max
    # typical: |-log p - H| = |(mx - s) + E[s - mx]| smallest first until the mass reaches typical_p; a band
    e = torch.exp(vals - mx[:, None]).masked_fill(vals < t[:, None], 0.0)
    z = e.sum(-1, dtype=torch.float64).float()
    a = torch.where(e > 0, e * (vals - mx[:, None]), 0.0).sum(-1, dtype=torch.float64).float()
    d = ((mx[:, None] - vals) + (a / z)[:, None]).abs().masked_fill(vals < t[:, None], float("inf"))
    d_sorted, order = d.sort(dim=-1, stable=True)
    excl = F.pad(e.gather(1, order).cumsum(-1)[:, :-1], (1, 0))
    last = ((excl < (typ * z)[:, None]).sum(-1) - 1).clamp(min=0)
    band = (d <= d_sorted.gather(1, last[:, None])) & (vals >= t[:, None])
    on = typ < 1
    u = torch.where(on, torch.where(band, vals, float("-inf")).amax(-1), float("inf"))
    t = torch.where(on, torch.where(band, vals, float("inf")).amin(-1), t)
    m = torch.minimum(mx, u)  # the largest kept value
    out_of = (vals < t[:, None]) | (vals > u[:, None])
    # epsilon: p >= epsilon, p = exp(s - m) / Z over the tokens kept so far; the largest kept always
    e = torch.exp(vals - m[:, None]).masked_fill(out_of, 0.0)
    z = e.sum(-1, dtype=torch.float64).float()
    t_eps = torch.where(e / z[:, None] >= eps[:, None], vals, float("inf")).amin(-1)
    t = torch.where(eps > 0, torch.maximum(t, torch.minimum(m, t_eps)), t)
    # eta: the same with the cut min(eta, sqrt(eta) * exp(-H)), H the entropy of the tokens kept so far
    out_of = (vals < t[:, None]) | (vals > u[:, None])
    e = torch.exp(vals - m[:, None]).masked_fill(out_of, 0.0)
    z = e.sum(-1, dtype=torch.float64).float()
    h = torch.log(z) - torch.where(e > 0, e * (vals - m[:, None]), 0.0).sum(-1, dtype=torch.float64).float() / z
    cut = torch.minimum(eta, torch.sqrt(eta) * torch.exp(-h))
    t_eta = torch.where(e / z[:, None] >= cut[:, None], vals, float("inf")).amin(-1)
    t = torch.where(eta > 0, torch.maximum(t, torch.minimum(m, t_eta)), t)
    out = torch.log_softmax(s.masked_fill((s < t[:, None]) | (s > u[:, None]), float("-inf")), -1)
    point_mass = torch.full_like(out, float("-inf")).scatter_(1, x.argmax(-1, keepdim=True), 0.0)
    return torch.where(greedy[:, None], point_mass, out)
