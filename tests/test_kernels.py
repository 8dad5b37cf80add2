"""kernels.sample_from_logits / process_logits (torch path) against transformers' warpers and exact statistics."""

import numpy as np
import pytest
import torch
from scipy import stats
from transformers.generation.logits_process import TemperatureLogitsWarper, TopKLogitsWarper, TopPLogitsWarper

from pigpt.kernels import process_logits, sample_from_logits
from pigpt.kernels.hashing import FMIX_C1, FMIX_C2, hash_to_gumbel, row_keys, token_hash

NEG_INF = float("-inf")


def peaked_logits(B, V, seed=0, scale=3.0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(B, V, generator=g) * scale


def hf_processed(x, temperature, top_k, top_p):
    """transformers' chain on one row set with shared params: processed scores (B, V)."""
    s = TemperatureLogitsWarper(temperature)(None, x.float())
    if top_k:
        s = TopKLogitsWarper(top_k)(None, s)
    if top_p < 1:
        s = TopPLogitsWarper(top_p)(None, s)
    return s


def assert_same_kept_set(ours, theirs):
    """Equal kept sets, except that tokens tied with the boundary value may go either way."""
    ours_kept, theirs_kept = ours > NEG_INF, theirs > NEG_INF
    diff = ours_kept ^ theirs_kept
    for b in diff.any(-1).nonzero()[:, 0].tolist():
        boundary = theirs[b][theirs_kept[b]].min()
        assert torch.all(theirs[b][diff[b]] == boundary) or torch.all(ours[b][diff[b]] > NEG_INF), b


def logits_with_ties(B, V, seed):
    """Peaked rows with runs of exactly tied values and -inf entries (as min_new_tokens / bans make)."""
    x = peaked_logits(B, V, seed).round(decimals=1)  # rounding creates many ties
    x[:, ::7] = NEG_INF
    return x


GRID = [(t, k, p) for t in (0.3, 1.0, 4.0) for k in (0, 1, 5, 50) for p in (0.05, 0.5, 0.9, 1.0)]


@pytest.mark.parametrize("make", [peaked_logits, logits_with_ties])
def test_process_logits_matches_transformers_warpers(make):
    x = make(16, 300, 1)
    for t, k, p in GRID:
        ours = process_logits(x, temperature=t, top_k=k, top_p=p)
        theirs = hf_processed(x, t, k, p)
        assert_same_kept_set(ours, theirs)
        same = (ours > NEG_INF) == (theirs > NEG_INF)
        rows = same.all(-1)
        torch.testing.assert_close(ours[rows], torch.log_softmax(theirs[rows], -1), rtol=0, atol=1e-5)


def test_process_logits_top_p_keeps_the_smallest_set_reaching_p():
    probs = torch.tensor([[0.5, 0.3, 0.15, 0.05]])
    x = probs.log()
    kept = lambda p: (process_logits(x, top_p=p) > NEG_INF)[0].tolist()  # noqa: E731
    assert kept(0.5) == [True, False, False, False]  # mass 0.5 reaches p = 0.5 exactly
    assert kept(0.51) == [True, True, False, False]  # the crossing token is included
    assert kept(0.96) == [True, True, True, True]
    assert kept(1e-9) == [True, False, False, False]  # never empty
    ties = torch.tensor([[2.0, 1.0, 1.0, 1.0, 0.0]])
    assert (process_logits(ties, top_k=2) > NEG_INF)[0].tolist() == [True, True, True, True, False]


def test_greedy_is_argmax_with_raw_log_softmax():
    x = peaked_logits(8, 1000, 2)
    tok, lp = sample_from_logits(x, temperature=0.0, top_k=5, top_p=0.5, seed=3)
    assert torch.equal(tok, x.argmax(-1))
    torch.testing.assert_close(lp, torch.log_softmax(x, -1).gather(1, tok[:, None])[:, 0], rtol=0, atol=1e-6)
    point = process_logits(x, temperature=0.0)
    assert torch.equal(point.argmax(-1), tok) and torch.all((point > NEG_INF).sum(-1) == 1)


@pytest.mark.parametrize("V", [1, 2, 64, 65, 1000, 50257])
def test_draws_lie_in_kept_set_with_exact_logprob(V):
    x = logits_with_ties(6, V, V) if V > 7 else peaked_logits(6, V, V)
    grid = GRID if V <= 1000 else [(1.0, 50, 0.9), (1.0, 0, 0.9), (0.7, 0, 1.0), (1.0, 1000, 0.95)]
    for t, k, p in grid:
        ref = process_logits(x, temperature=t, top_k=k, top_p=p)
        tok, lp = sample_from_logits(x, temperature=t, top_k=k, top_p=p, seed=torch.arange(6) + k, position=V)
        assert tok.dtype == torch.int64 and lp.dtype == torch.float32
        expect = ref.gather(1, tok[:, None])[:, 0]
        assert torch.all(expect > NEG_INF), (t, k, p)
        # the sampler's kept mass and the reference's log_softmax sum 50K float32 terms in different orders:
        # they differed by 1.2e-5 at a -0.72 log-prob on one CPU (AMD EPYC), hence the relative term
        torch.testing.assert_close(lp, expect, rtol=1e-5, atol=1e-5)


def test_windows_escalate_past_ties_and_wide_nuclei():
    V = 5000
    x = torch.full((4, V), -5.0)
    x[0, :100] = 1.0  # top_k = 50 lands inside 100 tied values: all 100 are kept (wider than 64)
    x[1] = torch.linspace(0, -0.01, V)  # nearly flat: the nucleus spans most of the row
    x[2, :3000] = 2.0  # ties that spill past the 512 and 2048 windows
    x[3, 7] = 30.0  # one dominant token
    for k, p in [(50, 1.0), (0, 0.9), (50, 0.9), (600, 0.99), (0, 0.999)]:
        ref = process_logits(x, top_k=k, top_p=p)
        tok, lp = sample_from_logits(x, top_k=k, top_p=p, seed=11)
        torch.testing.assert_close(lp, ref.gather(1, tok[:, None])[:, 0], rtol=0, atol=1e-5)
    assert (process_logits(x, top_k=50)[0] > NEG_INF).sum() == 100
    seen = set(sample_from_logits(x[:1].expand(400, V), top_k=50, seed=torch.arange(400))[0].tolist())
    assert seen <= set(range(100)) and len(seen) > 90  # draws spread over all 100 tied tokens


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_precision_logits_are_read_as_float32(dtype):
    x = peaked_logits(8, 777, 5).to(dtype)
    for kw in (dict(top_k=50, top_p=0.9), dict(top_p=0.8), dict(temperature=0.0), dict()):
        a = sample_from_logits(x, seed=4, **kw)
        b = sample_from_logits(x.float(), seed=4, **kw)
        assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])


def per_row_params(B, seed):
    g = torch.Generator().manual_seed(seed)
    return dict(
        temperature=torch.tensor([0.0, 0.5, 1.0, 2.0])[torch.randint(0, 4, (B,), generator=g)],
        top_k=torch.tensor([0, 1, 20, 50, 5000])[torch.randint(0, 5, (B,), generator=g)],
        top_p=torch.tensor([1.0, 0.9, 0.5, 0.01])[torch.randint(0, 4, (B,), generator=g)],
        seed=torch.randint(0, 2**40, (B,), generator=g),
        position=torch.randint(0, 4096, (B,), generator=g),
    )


def test_per_row_parameters_equal_one_call_per_row():
    B, V = 24, 2000
    x = peaked_logits(B, V, 6)
    prm = per_row_params(B, 6)
    tok, lp = sample_from_logits(x, **prm)
    for b in range(B):
        one = {name: v[b].item() for name, v in prm.items()}
        t1, l1 = sample_from_logits(x[b:b + 1], **one)
        assert t1.item() == tok[b].item() and l1.item() == lp[b].item(), b
        ref = process_logits(x[b:b + 1], temperature=one["temperature"], top_k=one["top_k"], top_p=one["top_p"])
        if one["temperature"] > 0:
            assert abs(ref[0, t1].item() - l1.item()) <= 1e-5


def test_batch_invariance_under_shuffles_and_other_rows():
    B, V = 32, 3000
    x = peaked_logits(B, V, 7)
    prm = per_row_params(B, 7)
    tok, lp = sample_from_logits(x, **prm)
    for trial in range(3):
        perm = torch.randperm(B, generator=torch.Generator().manual_seed(trial))
        other = peaked_logits(B, V, 100 + trial, scale=1.0)  # flat rows take the slow paths beside ours
        xx = torch.cat([x[perm], other])
        pp = {n: torch.cat([v[perm], v[perm]]) for n, v in prm.items()}
        t2, l2 = sample_from_logits(xx, **pp)
        assert torch.equal(t2[:B], tok[perm]) and torch.equal(l2[:B], lp[perm])


def test_same_inputs_same_draws_and_seeds_or_positions_change_them():
    x = peaked_logits(1, 2000, 8, scale=1.0).expand(64, -1)
    a = sample_from_logits(x, top_p=0.95, seed=5, position=9)
    assert torch.equal(a[0], sample_from_logits(x, top_p=0.95, seed=5, position=9)[0])
    assert len(set(a[0].tolist())) == 1  # same (seed, position): same token in every row
    by_seed = sample_from_logits(x, top_p=0.95, seed=torch.arange(64), position=9)[0]
    by_pos = sample_from_logits(x, top_p=0.95, seed=5, position=torch.arange(64))[0]
    assert len(set(by_seed.tolist())) > 50 and len(set(by_pos.tolist())) > 50


STAT_CASES = [  # (temperature, top_k, top_p)
    (1.0, 0, 1.0), (0.7, 0, 0.9), (1.5, 6, 1.0), (1.0, 10, 0.8), (2.0, 0, 0.5),
]


@pytest.mark.parametrize("V", [40, 333])  # one group of 64 tokens; six, the last one partial
@pytest.mark.parametrize("t,k,p", STAT_CASES)
def test_draw_frequencies_match_the_processed_distribution(t, k, p, V):
    """40,000 draws (distinct seeds, then distinct positions) from a fixed row; chi-square p-value > 1e-4
    over categories with expected count >= 5 (pooled otherwise), and total variation < 0.02 (V = 40)
    or < 0.05 (V = 333: more categories, so more sampling noise: its expectation here is ~0.03)."""
    N = 20_000
    row = peaked_logits(1, V, 9, scale=1.5)
    expect = process_logits(row, temperature=t, top_k=k, top_p=p).exp()[0].double()
    x = row.expand(N, V)
    for kw in (dict(seed=torch.arange(N), position=3), dict(seed=12345, position=torch.arange(N) + 2**33)):
        tok, _ = sample_from_logits(x, temperature=t, top_k=k, top_p=p, **kw)
        counts = torch.bincount(tok, minlength=V).double()
        assert counts[expect == 0].sum() == 0
        e = expect * N
        big = e >= 5
        obs = torch.cat([counts[big], counts[~big].sum()[None]]).numpy()
        exp_ = torch.cat([e[big], e[~big].sum()[None]]).numpy()
        keep = exp_ > 0
        exp_ = exp_ * (obs.sum() / exp_[keep].sum())  # float32 probabilities sum to 1 only to ~1e-7
        pval = stats.chisquare(obs[keep], exp_[keep]).pvalue if keep.sum() > 1 else 1.0
        tv = 0.5 * (counts / N - expect).abs().sum().item()
        assert pval > 1e-4 and tv < (0.02 if V <= 64 else 0.05), (kw.keys(), pval, tv)


def test_hash_is_the_uint32_murmur_finaliser():
    """The torch int32 hash equals a plain uint32 implementation (what the Triton kernel computes)."""
    def fmix(h):
        h = h ^ (h >> np.uint32(16))
        h = h * np.uint32(FMIX_C1)
        h = h ^ (h >> np.uint32(13))
        h = h * np.uint32(FMIX_C2)
        return h ^ (h >> np.uint32(16))

    k1, k2 = row_keys(torch.tensor([0, -1, 2**62, 7]), torch.tensor([0, 5, -3, 2**40]))
    tokens = torch.arange(0, 200_000, 7).expand(4, -1)
    ours = token_hash(tokens, k1, k2).numpy().view(np.uint32)
    a, b = k1.numpy().view(np.uint32)[:, None], k2.numpy().view(np.uint32)[:, None]
    with np.errstate(over="ignore"):
        ref = fmix(fmix(tokens.numpy().astype(np.uint32) ^ a) + b)
    assert np.array_equal(ours, ref)
    assert len(set(k1.tolist())) == 4


def test_row_keys_of_a_few_rows_equal_the_tensor_path():
    """A few CPU rows are keyed in Python integers, many with tensor ops: both must give the same keys."""
    from pigpt.kernels.hashing import _row_keys_tensor

    g = torch.Generator().manual_seed(0)
    seed = torch.cat([torch.tensor([0, -1, 2**62, -(2**63), 2**63 - 1]), torch.randint(-(2**62), 2**62, (59,), generator=g)])
    pos = torch.cat([torch.tensor([0, 5, -3, 2**40, -1]), torch.randint(0, 2**40, (59,), generator=g)])
    for rows in (slice(0, 1), slice(0, 5), slice(0, 64)):
        fast, ref = row_keys(seed[rows], pos[rows]), _row_keys_tensor(seed[rows], pos[rows])
        assert all(torch.equal(a, b) and a.dtype == torch.int32 and a.is_contiguous() for a, b in zip(fast, ref))


def test_gumbel_noise_is_finite_at_the_extreme_hashes():
    """The top hash values once rounded u to exactly 1.0 (24 bits + 0.5 needs 25 in float32): infinite
    noise, and NaN on a -inf logit, which argmax picks. Every 23-bit bucket edge must give finite noise."""
    edges = torch.tensor([0, 1, 511, 512, 2**31 - 1, -(2**31), -1, -512, -513], dtype=torch.int32)
    g = hash_to_gumbel(edges.clone())
    assert torch.isfinite(g).all(), g
    assert g.max() < 17 and g.min() > -3  # -log(-log(1 - 2^-24)) ~ 16.6, -log(-log 2^-24) ~ -2.8
    # a row of -inf (banned) tokens next to one allowed token: the allowed one is always drawn
    x = torch.full((4096, 300), float("-inf"))
    x[:, 123] = 0.0
    tok, lp = sample_from_logits(x, seed=torch.arange(4096), position=7)
    assert (tok == 123).all() and (lp == 0).all()


@pytest.mark.parametrize("bad,match", [
    (dict(temperature=-0.1), "temperature"), (dict(temperature=float("nan")), "temperature"),
    (dict(top_p=0.0), "top_p"), (dict(top_p=1.5), "top_p"), (dict(top_k=-1), "top_k"),
    (dict(top_k=2.5), "top_k"), (dict(top_k=torch.tensor([1.0, 2.0])), "top_k"),
    (dict(top_p=torch.tensor([0.5, 0.5, 0.5])), "top_p"), (dict(seed=2**64), "seed"),
    (dict(temperature=torch.tensor([1.0, -1.0])), "temperature"), (dict(backend="cuda"), "backend"),
    (dict(top_p="0.9"), "top_p"),
])
def test_bad_parameters_raise_value_error_naming_them(bad, match):
    with pytest.raises(ValueError, match=match):
        sample_from_logits(torch.zeros(2, 10), **bad)


def test_empty_batch_gives_empty_results():
    tok, lp = sample_from_logits(torch.zeros(0, 10), top_p=0.9, seed=torch.zeros(0, dtype=torch.long))
    assert tok.shape == (0,) and tok.dtype == torch.int64 and lp.shape == (0,) and lp.dtype == torch.float32
    assert process_logits(torch.zeros(0, 10), top_k=3).shape == (0, 10)


def test_bad_logits_raise_value_error():
    with pytest.raises(ValueError, match="shape"):
        sample_from_logits(torch.zeros(2, 3, 10))
    with pytest.raises(ValueError, match="float32"):
        sample_from_logits(torch.zeros(2, 10, dtype=torch.int64))
    for fill, match in ((float("nan"), "NaN"), (float("inf"), r"\+inf")):
        x = torch.zeros(2, 10)
        x[1, 3] = fill
        for t in (0.0, 1.0):
            with pytest.raises(ValueError, match=match):
                sample_from_logits(x, temperature=t)
    with pytest.raises(ValueError, match="entirely -inf"):
        sample_from_logits(torch.full((1, 10), NEG_INF))
    with pytest.raises(ValueError, match="NaN"):
        process_logits(torch.full((1, 10), float("nan")))
    with pytest.raises(ValueError, match="temperature"):
        sample_from_logits(torch.tensor([[1e30, 0.0]]), temperature=1e-30)


def test_backend_choice_and_environment_override(monkeypatch):
    x = peaked_logits(4, 100, 10)
    monkeypatch.setenv("PIGPT_SAMPLING_BACKEND", "torch")
    a = sample_from_logits(x, seed=1)
    monkeypatch.setenv("PIGPT_SAMPLING_BACKEND", "bogus")
    with pytest.raises(ValueError, match="PIGPT_SAMPLING_BACKEND"):
        sample_from_logits(x, seed=1)
    monkeypatch.delenv("PIGPT_SAMPLING_BACKEND")
    assert torch.equal(a[0], sample_from_logits(x, seed=1, backend="auto")[0])  # CPU tensors: torch


@pytest.mark.parametrize("make", [peaked_logits, logits_with_ties])
def test_token_logprobs_are_the_samplers_logprobs_with_gradients(make):
    """token_logprobs re-scores drawn tokens under the sampler's own kept set: the numbers
    sample_from_logits reported, and gradients of a log-softmax over that set (process_logits's)."""
    from pigpt.kernels import token_logprobs

    x = make(24, 300, 2)
    for t, k, p in GRID + [(0.0, 0, 1.0)]:
        tok, lp = sample_from_logits(x, temperature=t, top_k=k, top_p=p, seed=torch.arange(24))
        xg = x.clone().requires_grad_(True)
        ours = token_logprobs(xg, tok, temperature=t, top_k=k, top_p=p)
        torch.testing.assert_close(ours.detach(), lp, rtol=0, atol=1e-5)
        ours.sum().backward()
        ref_x = x.clone().requires_grad_(True)
        keep = process_logits(x, temperature=t, top_k=k, top_p=p) > NEG_INF
        s = ref_x if t == 0 else ref_x / t
        ref = torch.log_softmax(s if t == 0 else s.masked_fill(~keep, NEG_INF), -1).gather(1, tok[:, None])
        ref.sum().backward()
        torch.testing.assert_close(xg.grad, ref_x.grad, rtol=0, atol=1e-5)


def test_seeds_follow_one_rule_everywhere():
    """Seeds are integers in [0, 2**62) for the kernel as for SamplingParams."""
    from pigpt.decoding import SamplingParams

    x = peaked_logits(2, 50)
    for bad in (-1, 2**62):
        with pytest.raises(ValueError, match=r"seed must be in \[0, 2\*\*62\)"):
            sample_from_logits(x, seed=bad)
        with pytest.raises(ValueError, match=r"seed must be in \[0, 2\*\*62\)"):
            sample_from_logits(x, seed=torch.tensor([0, bad]))
        with pytest.raises(ValueError, match=r"seed must be in \[0, 2\*\*62\)"):
            SamplingParams(seed=bad)
    sample_from_logits(x, seed=2**62 - 1)
