"""The sampler's newer knobs (issue 23): min-p, typical, epsilon and eta, each against transformers' own warper
(MinPLogitsWarper, TypicalLogitsWarper, EpsilonLogitsWarper, EtaLogitsWarper) in its generate() order, on random and shipped-model logits; the
sampler's draws, token_logprobs, generate, score and the command lines with each. Then vLLM's / OpenAI's
presence and frequency penalties, against a plain implementation of OpenAI's formula run as a transformers
logits processor.

Kept sets must be identical and the processed distribution equal to 1e-6; the Triton kernel's tokens are
checked in test_kernels_triton.py."""

from collections import Counter

import pytest
import torch
from scipy import stats
from transformers.generation.logits_process import (EpsilonLogitsWarper, EtaLogitsWarper, MinPLogitsWarper,
                                                    RepetitionPenaltyLogitsProcessor, TemperatureLogitsWarper,
                                                    TopKLogitsWarper, TopPLogitsWarper, TypicalLogitsWarper)

from pigpt.decoding import SamplingParams, generate, score
from pigpt.kernels import process_logits, sample_from_logits, token_logprobs
from pigpt.model import DEFAULT_MODEL, GPT, get_tokenizer
from pigpt.model.textform import for_model

NEG_INF = float("-inf")
TEXTS = ["Which is the largest ocean?", "def fibonacci(n):\n", "Once upon a time"]


class OpenAIPenalties:
    """OpenAI's presence / frequency penalties, written from its API reference as a transformers logits
    processor: logit[j] -= c[j] * frequency + (c[j] > 0) * presence, c[j] = count of j among the tokens
    generated after the first `prompt_len` of input_ids. A plain loop over a Counter: the reference."""

    def __init__(self, prompt_len, presence=0.0, frequency=0.0):
        self.prompt_len, self.presence, self.frequency = prompt_len, presence, frequency

    def __call__(self, input_ids, scores):
        scores = scores.clone()
        for b in range(scores.shape[0]):
            for tok, c in Counter(input_ids[b, self.prompt_len:].tolist()).items():
                scores[b, tok] -= c * self.frequency + self.presence
        return scores


def hf_chain(x, temperature=1.0, top_k=0, top_p=1.0, min_p=0.0, typical_p=1.0, epsilon_cutoff=0.0, eta_cutoff=0.0,
             repetition_penalty=1.0, presence_penalty=0.0, frequency_penalty=0.0, ids=None, prompt_len=None,
             dtype=torch.float32):
    """transformers' processed scores, its warpers built as generate() builds them (utils._get_logits_processor):
    repetition penalty, (OpenAI's penalties, where vLLM applies them), temperature, top-k, top-p, min-p, typical,
    epsilon, eta."""
    s = x.float().to(dtype).clone()
    if repetition_penalty != 1.0:
        s = RepetitionPenaltyLogitsProcessor(repetition_penalty)(ids, s)
    if presence_penalty or frequency_penalty:
        s = OpenAIPenalties(prompt_len, presence_penalty, frequency_penalty)(ids, s)
    if temperature != 1.0:
        s = TemperatureLogitsWarper(temperature)(None, s)
    if top_k:
        s = TopKLogitsWarper(top_k)(None, s)
    if top_p < 1.0:
        s = TopPLogitsWarper(top_p)(None, s)
    if min_p > 0:
        s = MinPLogitsWarper(min_p)(None, s)
    if typical_p < 1.0:
        s = TypicalLogitsWarper(typical_p)(None, s)
    if 0 < epsilon_cutoff < 1:
        s = EpsilonLogitsWarper(epsilon_cutoff)(None, s)
    if 0 < eta_cutoff < 1:
        s = EtaLogitsWarper(eta_cutoff)(None, s)
    return s


def eta_boundary(x, eta_cutoff, **chain):
    """(B, V) bool: the tokens whose probability lies within 1e-5 nats of transformers' eta cut (float64), where
    pigpt's float32 logits and transformers' float64 ones may round to opposite sides of it."""
    s = hf_chain(x, dtype=torch.float64, **chain)
    logp = torch.log_softmax(s, -1)
    h = -(logp.exp() * logp).nansum(-1, keepdim=True)
    cut = torch.minimum(torch.tensor(eta_cutoff, dtype=torch.float64), eta_cutoff ** 0.5 * torch.exp(-h))
    return (logp - cut.log()).abs() < 1e-5


def typical_boundary(x, typical_p, **chain):
    """(B, V) bool: the tokens whose cumulative mass in typical's order (float64, exclusive or inclusive) lies
    within 1e-6 of typical_p: where float32 sums over tens of thousands of tokens may put the crossing one
    token either side."""
    before = {k: v for k, v in chain.items() if k not in ("epsilon_cutoff", "eta_cutoff")}
    logp = torch.log_softmax(hf_chain(x, dtype=torch.float64, **before), -1)
    p = logp.exp()
    h = -(p * logp).nansum(-1, keepdim=True)
    order = (-logp - h).abs().argsort(-1)
    incl = p.gather(1, order).cumsum(-1)
    near = ((incl - typical_p).abs() < 1e-6) | ((incl - p.gather(1, order) - typical_p).abs() < 1e-6)
    return torch.zeros_like(near).scatter_(1, order, near)


def assert_matches_transformers(x, dtype=torch.float32, **kw):
    """Identical kept sets, and the processed probabilities within 1e-6. dtype: what transformers' chain
    computes in (float64 for eta and for typical on 50257-token rows: see test_eta_matches_transformers_eta_warper
    and test_typical_matches_transformers_on_shipped_model_logits); with eta, a token within rounding of the cut
    (eta_boundary), with typical one within rounding of the crossing (typical_boundary), may go either way."""
    ours = process_logits(x, **kw)
    theirs = hf_chain(x, dtype=dtype, **kw).float()
    kept, ref_kept = ours > NEG_INF, theirs > NEG_INF
    differ = kept != ref_kept
    if kw.get("typical_p", 1.0) < 1 and differ.any():
        differ &= ~typical_boundary(x, **kw)
        theirs = theirs.masked_fill(~kept, NEG_INF)
        ours = ours.masked_fill(~ref_kept, NEG_INF)
    if kw.get("eta_cutoff") and differ.any():
        differ &= ~eta_boundary(x, **kw)
        theirs = theirs.masked_fill(~kept, NEG_INF)  # compare the probabilities over the set pigpt kept
        ours = ours.masked_fill(~ref_kept, NEG_INF)
    bad = differ.any(-1).nonzero()[:, 0].tolist()
    assert not bad, f"{kw}: rows {bad} keep {kept[bad].sum(-1).tolist()} tokens, transformers {ref_kept[bad].sum(-1).tolist()}"
    torch.testing.assert_close(ours.exp(), torch.softmax(theirs, -1), rtol=0, atol=1e-6)


def random_logits(B, V, seed, scale=3.0):
    return torch.randn(B, V, generator=torch.Generator().manual_seed(seed)) * scale


def tied_and_masked(B, V, seed):
    x = random_logits(B, V, seed).round(decimals=1)  # runs of exact ties
    x[:, ::7] = NEG_INF  # masked tokens (min_new_tokens, bans)
    return x


@pytest.fixture(scope="module")
def shipped():
    """The shipped model, its transformers twin and a few prompts in its text form."""
    from transformers import GPT2LMHeadModel

    gpt = GPT.from_pretrained(DEFAULT_MODEL).eval()
    hf = GPT2LMHeadModel.from_pretrained(DEFAULT_MODEL, dtype=torch.float32).eval()
    form, enc = for_model(gpt), get_tokenizer()
    return gpt, hf, [enc.encode(form.to_model(t)) for t in TEXTS]


@pytest.fixture(scope="module")
def shipped_logits(shipped):
    """Next-token logits of the shipped model at every position of the prompts: peaked, realistic rows."""
    gpt, _, prompts = shipped
    with torch.no_grad():
        return torch.cat([gpt(torch.tensor([p]))[0] for p in prompts]).float()


MIN_PS = (0.0, 1e-4, 0.05, 0.1, 0.3, 0.9, 1.0)
EPSILONS = (1e-4, 3e-4, 3e-3, 0.02, 0.2, 0.9)
CHAINS = [dict(), dict(temperature=0.6), dict(temperature=1.7), dict(top_k=40), dict(top_p=0.9),
          dict(temperature=1.3, top_k=100, top_p=0.95)]


def chains_for(make):
    """Tied rows skip top-p: where a tie straddles its crossing point transformers keeps the ties torch.sort
    happens to put first, pigpt all of them (docs/sampling.md), so the sets differ before min-p / epsilon act."""
    return [c for c in CHAINS if make is not tied_and_masked or "top_p" not in c]


# -- min-p -----------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("make", [random_logits, tied_and_masked])
def test_min_p_matches_transformers_min_p_warper(make):
    x = make(24, 500, 1)
    for chain in chains_for(make):
        for min_p in MIN_PS:
            assert_matches_transformers(x, min_p=min_p, **chain)


def test_min_p_matches_transformers_on_shipped_model_logits(shipped_logits):
    for chain in CHAINS:
        for min_p in (0.02, 0.1, 0.5):
            assert_matches_transformers(shipped_logits, min_p=min_p, **chain)


def test_min_p_edge_cases_match_transformers():
    """The cases transformers' own tests check (tests/generation/test_logits_process.py), and more: its
    example distribution, ties at the max, min_p = 1 (the max and its ties), extreme and all-negative
    logits, uniform rows, a row with one finite logit; the max is always kept (its min_tokens_to_keep=1)."""
    rows = [
        torch.tensor([0.9, 0.0274, 0.047, 0.0274]).log(),  # transformers' test: min_p 0.05 keeps 0.9 and 0.047
        torch.tensor([0.15, 0.3, 0.3, 0.25]).log(),
        torch.tensor([2.0, 2.0, 1.0, 1.0]),  # ties at the max
        torch.tensor([1e4, 0.0, -1e4, NEG_INF]),  # extreme
        torch.tensor([-1.0, -2.0, -50.0, -1000.0]),  # all negative
        torch.zeros(4),  # uniform
        torch.tensor([NEG_INF, 3.0, NEG_INF, NEG_INF]),  # one finite logit
    ]
    x = torch.stack(rows)
    for min_p in (1e-30, 0.01, 0.05, 0.5, 0.99, 1.0):
        for t in (0.5, 1.0, 3.0):
            assert_matches_transformers(x, temperature=t, min_p=min_p)
    kept = (process_logits(x, min_p=0.05) > NEG_INF).tolist()
    assert kept[0] == [True, False, True, False] and kept[1] == [True] * 4  # transformers' expected output
    assert (process_logits(x, min_p=1.0) > NEG_INF).tolist()[2] == [True, True, False, False]
    assert (process_logits(x, min_p=1.0) > NEG_INF).sum(-1).tolist() == [1, 2, 2, 1, 1, 4, 1]  # never empty
    assert (process_logits(x, min_p=1e-30) > NEG_INF).tolist()[3] == [True, False, False, False]


# -- epsilon ---------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("make", [random_logits, tied_and_masked])
def test_epsilon_matches_transformers_epsilon_warper(make):
    x = make(24, 500, 2) if make is tied_and_masked else make(24, 500, 2, scale=1.0)
    for chain in chains_for(make) + [dict(min_p=0.05), dict(temperature=1.3, top_k=100, min_p=0.02)]:
        for eps in EPSILONS:
            assert_matches_transformers(x, epsilon_cutoff=eps, **chain)


def test_epsilon_matches_transformers_on_shipped_model_logits(shipped_logits):
    for chain in CHAINS:
        for eps in (3e-4, 3e-3, 0.05):
            assert_matches_transformers(shipped_logits, epsilon_cutoff=eps, **chain)


def test_epsilon_edge_cases_match_transformers():
    """transformers' test distribution, then rows where every probability is below epsilon (only the max and
    its ties stay: min_tokens_to_keep=1), uniform rows (all tied with the max: all kept), extreme logits."""
    x = torch.stack([torch.tensor([0.87, 0.099, 0.001, 0.03]).log(), torch.tensor([0.4, 0.299, 0.101, 0.2]).log(),
                     torch.tensor([1.0, 1.0, 0.9, 0.8]), torch.zeros(4), torch.tensor([1e4, 0.0, -1e4, NEG_INF]),
                     torch.tensor([-3.0, -3.5, -40.0, -2000.0])])
    for eps in (1e-4, 3e-2, 0.2, 0.3, 0.5, 0.9):
        for t in (0.5, 1.0, 3.0):
            assert_matches_transformers(x, temperature=t, epsilon_cutoff=eps)
    kept = (process_logits(x, epsilon_cutoff=0.9) > NEG_INF).tolist()
    assert kept[2] == [True, True, False, False] and kept[3] == [True] * 4
    assert (process_logits(x, epsilon_cutoff=3e-2) > NEG_INF).tolist()[1] == [True] * 4


# -- eta ---------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("make", [random_logits, tied_and_masked])
def test_eta_matches_transformers_eta_warper(make):
    """Against EtaLogitsWarper run on float64 logits: in float32 its entropy (torch.distributions.Categorical)
    is off by ~1e-5 relative on a 50257-token row (5.529475 for a true 5.529523 on a shipped-model row), which
    moves its cut past tokens that lie within that of it; pigpt sums the entropy in float64 (5.529523)."""
    x = make(24, 500, 5) if make is tied_and_masked else make(24, 500, 5, scale=1.0)
    for chain in chains_for(make) + [dict(min_p=0.05, epsilon_cutoff=1e-3)]:
        for eta in (3e-4, 2e-3, 0.01, 0.1, 0.5, 0.9):
            assert_matches_transformers(x, eta_cutoff=eta, dtype=torch.float64, **chain)


def test_eta_matches_transformers_on_shipped_model_logits_and_edge_cases(shipped_logits):
    for chain in CHAINS:
        for eta in (3e-4, 3e-3, 0.05):
            assert_matches_transformers(shipped_logits, eta_cutoff=eta, dtype=torch.float64, **chain)
    x = torch.stack([torch.tensor([0.87, 0.099, 0.001, 0.03]).log(), torch.zeros(4), torch.tensor([1.0, 1.0, 0.9, 0.8]),
                     torch.tensor([1e4, 0.0, -1e4, NEG_INF]), torch.tensor([NEG_INF, 3.0, NEG_INF, NEG_INF])])
    for eta in (1e-4, 3e-2, 0.2, 0.5, 0.9):
        for t in (0.5, 1.0, 3.0):
            assert_matches_transformers(x, temperature=t, eta_cutoff=eta, dtype=torch.float64)
    assert (process_logits(x, eta_cutoff=0.9) > NEG_INF).tolist()[1] == [True] * 4  # uniform: all tied with the max


# -- typical -----------------------------------------------------------------------------------------------------
TYPICALS = (0.05, 0.2, 0.5, 0.8, 0.95, 0.999)


@pytest.mark.parametrize("make", [random_logits, tied_and_masked])
def test_typical_matches_transformers_typical_warper(make):
    """Against TypicalLogitsWarper after each chain, and before epsilon / eta (generate()'s order: typical sits
    between min-p and epsilon). Its kept set is a band: the most likely tokens can be cut."""
    x = make(24, 500, 6) if make is tied_and_masked else make(24, 500, 6, scale=1.5)
    for chain in chains_for(make) + [dict(min_p=0.05), dict(epsilon_cutoff=3e-3), dict(top_k=100, epsilon_cutoff=0.01)]:
        for typ in TYPICALS:
            assert_matches_transformers(x, typical_p=typ, **chain)
    banded = process_logits(x, typical_p=0.2) > NEG_INF
    assert (~banded.gather(1, x.argmax(-1, keepdim=True))).any(), "no row where typical cut the most likely token"


def test_typical_matches_transformers_on_shipped_model_logits(shipped_logits):
    """Against TypicalLogitsWarper on float64 logits: in float32 its cumulative sum over a 50257-token row drifts
    by ~1e-5 (it kept 26,396 tokens of a row at typical_p 0.9 where float64 keeps 26,397, as pigpt does)."""
    for chain in CHAINS:
        for typ in (0.2, 0.9, 0.99):
            assert_matches_transformers(shipped_logits, typical_p=typ, dtype=torch.float64, **chain)
    for typ in (0.5, 0.95):  # and eta after it, on eta's float64 terms (see test_eta_matches_transformers_eta_warper)
        assert_matches_transformers(shipped_logits, typical_p=typ, eta_cutoff=3e-3, dtype=torch.float64)


def test_typical_edge_cases_match_transformers():
    """transformers' own test rows (tests/generation/test_logits_process.py, test_typical_dist_warper): a peaked
    row keeps its max, a row whose max is least typical keeps the three tied 0.2s; uniform rows stay whole;
    its ramp with extreme (x100) and negative logits; one finite logit; ties straddling the crossing."""
    x = torch.stack([torch.tensor([0.97, 0.01, 0.01, 0.01]).log(), torch.tensor([0.4, 0.2, 0.2, 0.2]).log(),
                     torch.zeros(4), torch.tensor([NEG_INF, 3.0, NEG_INF, NEG_INF]),
                     torch.tensor([1.0, 1.0, 0.0, 0.0]), torch.tensor([1e4, 0.0, -1e4, NEG_INF])])
    for typ in (1e-6, 0.3, 0.5, 0.7, 0.99):
        for t in (0.5, 1.0, 3.0):
            assert_matches_transformers(x, temperature=t, typical_p=typ)
    kept = (process_logits(x, typical_p=0.5) > NEG_INF).tolist()
    assert kept[0] == [True, False, False, False] and kept[1] == [False, True, True, True]  # transformers' expected
    assert kept[2] == [True] * 4 and kept[3] == [False, True, False, False]
    ramp = torch.arange(10.0).repeat(2, 1) - 5
    ramp[1] *= 100.0
    assert_matches_transformers(ramp, typical_p=0.7)
    assert (process_logits(ramp, typical_p=0.7) > NEG_INF).sum(-1).tolist() == [2, 1]  # its [2, 2] is min_tokens=2


# -- the sampler, token_logprobs --------------------------------------------------------------------------------
RULES = [dict(min_p=0.05), dict(min_p=0.3, temperature=1.5), dict(epsilon_cutoff=3e-3), dict(eta_cutoff=2e-3),
         dict(typical_p=0.3), dict(typical_p=0.9, top_k=60, epsilon_cutoff=1e-3, temperature=0.8),
         dict(epsilon_cutoff=0.02, top_k=30), dict(min_p=0.1, epsilon_cutoff=1e-3, top_k=200, temperature=1.2)]


@pytest.mark.parametrize("kw", RULES)
def test_draws_lie_in_the_kept_set_with_the_exact_log_prob_and_token_logprobs_agree(kw):
    """sample_from_logits' tokens are in transformers' kept set and report its log-probs; token_logprobs
    gives the same numbers, with the gradient of a log-softmax over transformers' kept set."""
    x = tied_and_masked(32, 700, 3)
    tok, lp = sample_from_logits(x, seed=torch.arange(32), position=5, **kw)
    ref = torch.log_softmax(hf_chain(x, **kw), -1).gather(1, tok[:, None])[:, 0]
    assert torch.isfinite(ref).all()
    torch.testing.assert_close(lp, ref, rtol=0, atol=1e-5)
    xg = x.clone().requires_grad_(True)
    ours = token_logprobs(xg, tok, **kw)
    torch.testing.assert_close(ours.detach(), lp, rtol=0, atol=1e-5)
    ours.sum().backward()
    xr = x.clone().requires_grad_(True)
    keep = hf_chain(x, **kw) > NEG_INF
    torch.log_softmax((xr / kw.get("temperature", 1.0)).masked_fill(~keep, NEG_INF), -1).gather(
        1, tok[:, None]).sum().backward()
    torch.testing.assert_close(xg.grad, xr.grad, rtol=0, atol=1e-5)


def test_per_row_rules_equal_one_call_per_row():
    B = 16
    x = random_logits(B, 400, 4, scale=2.0)
    g = torch.Generator().manual_seed(4)
    kw = dict(min_p=torch.tensor([0.0, 0.02, 0.2, 1.0])[torch.randint(0, 4, (B,), generator=g)],
              typical_p=torch.tensor([1.0, 1.0, 0.3, 0.9])[torch.randint(0, 4, (B,), generator=g)],
              epsilon_cutoff=torch.tensor([0.0, 1e-3, 0.01, 0.3])[torch.randint(0, 4, (B,), generator=g)],
              top_k=torch.tensor([0, 50])[torch.randint(0, 2, (B,), generator=g)],
              top_p=torch.tensor([1.0, 0.9])[torch.randint(0, 2, (B,), generator=g)],
              temperature=torch.tensor([0.0, 0.7, 1.0, 1.5])[torch.randint(0, 4, (B,), generator=g)],
              seed=torch.arange(B) + 100)
    tok, lp = sample_from_logits(x, **kw)
    keep = token_logprobs(x, tok, **{k: v for k, v in kw.items() if k != "seed"}, return_keep=True)[1]
    for b in range(B):
        one = {k: v[b].item() for k, v in kw.items()}
        t1, l1 = sample_from_logits(x[b:b + 1], **one)
        assert (t1.item(), l1.item()) == (tok[b].item(), lp[b].item()), b
        if one["temperature"] > 0:
            del one["seed"]
            assert torch.equal(keep[b], (hf_chain(x[b:b + 1], **one) > NEG_INF)[0]), b


@pytest.mark.parametrize("kw", [dict(min_p=0.1), dict(epsilon_cutoff=0.01), dict(eta_cutoff=0.01), dict(typical_p=0.6),
                                dict(min_p=0.05, top_k=8, temperature=1.5)])
def test_draw_frequencies_match_the_processed_distribution(kw):
    """20,000 draws with distinct seeds from one row: chi-square p-value > 1e-4 against transformers'
    processed distribution (categories with expected count < 5 pooled), nothing outside its support."""
    N, V = 20_000, 333
    row = random_logits(1, V, 9, scale=1.5)
    expect = torch.softmax(hf_chain(row, **kw), -1)[0].double()
    tok, _ = sample_from_logits(row.expand(N, V), seed=torch.arange(N), position=3, **kw)
    counts = torch.bincount(tok, minlength=V).double()
    assert counts[expect == 0].sum() == 0
    assert (expect > 0).sum() >= 5, "the test needs a spread distribution"
    e = expect * N
    big = e >= 5
    obs = torch.cat([counts[big], counts[~big].sum()[None]]).numpy()
    exp_ = torch.cat([e[big], e[~big].sum()[None]]).numpy()
    keep = exp_ > 0
    exp_ = exp_ * (obs.sum() / exp_[keep].sum())
    assert stats.chisquare(obs[keep], exp_[keep]).pvalue > 1e-4


@pytest.mark.parametrize("bad,match", [
    (dict(min_p=-0.1), r"min_p must be in \[0, 1\]"), (dict(min_p=1.5), "min_p"), (dict(min_p=float("nan")), "min_p"),
    (dict(min_p=torch.tensor([0.5, 2.0])), "min_p"), (dict(epsilon_cutoff=1.0), r"epsilon_cutoff must be in \[0, 1\)"),
    (dict(epsilon_cutoff=-1e-3), "epsilon_cutoff"), (dict(min_p="0.1"), "min_p"),
    (dict(typical_p=0.0), r"typical_p must be in \(0, 1\]"), (dict(typical_p=1.5), "typical_p"),
    (dict(typical_p=torch.tensor([0.5, -1.0])), "typical_p"),
])
def test_bad_rule_values_raise_naming_them(bad, match):
    with pytest.raises(ValueError, match=match):
        sample_from_logits(torch.zeros(2, 10), **bad)
    with pytest.raises(ValueError, match=match):
        token_logprobs(torch.zeros(2, 10), [0, 1], **bad)


def test_sampling_params_check_the_rules_with_the_kernels_wording():
    with pytest.raises(ValueError, match=r"SamplingParams.min_p must be in \[0, 1\] \(0 turns min-p off\), got 1.5"):
        SamplingParams(min_p=1.5)
    with pytest.raises(ValueError, match=r"SamplingParams.epsilon_cutoff must be in \[0, 1\)"):
        SamplingParams(epsilon_cutoff=1)
    with pytest.raises(ValueError, match=r"SamplingParams.typical_p must be in \(0, 1\] \(1 turns it off\)"):
        SamplingParams(typical_p=0)
    assert SamplingParams(min_p=0.1).sampler == dict(temperature=1.0, top_k=0, top_p=1.0, min_p=0.1, typical_p=1.0,
                                                      epsilon_cutoff=0.0, eta_cutoff=0.0)


# -- generate, score -------------------------------------------------------------------------------------------
def hf_transition_scores(hf, prompt, tokens, logits=None, **kw):
    """compute_transition_scores(normalize_logits=True) of `tokens`, teacher-forced, with scores processed by
    transformers' own chain (hf_chain: generate()'s order); `logits` (len(tokens), V): another forward's instead
    of hf's own."""
    seq = torch.tensor([prompt + tokens])
    if logits is None:
        with torch.no_grad():
            logits = hf(seq).logits[0, len(prompt) - 1: -1]
    scores = tuple(hf_chain(logits[t:t + 1], ids=seq[:, :len(prompt) + t], prompt_len=len(prompt), **kw)
                   for t in range(len(tokens)))
    # float64: its log_softmax runs over a strided dim of the stacked scores, which torch's CPU kernel sums
    # in float32 with errors up to ~1e-3 on an untruncated 50257-token row (pigpt's are ~1e-6 off float64)
    return hf.compute_transition_scores(seq, tuple(s.double() for s in scores), normalize_logits=True)[0].float()


GEN = [dict(temperature=1.3, min_p=0.1), dict(temperature=1.2, epsilon_cutoff=3e-3), dict(temperature=1.1, eta_cutoff=3e-3),
       dict(temperature=1.0, typical_p=0.5), dict(temperature=0.9, top_k=100, typical_p=0.9, epsilon_cutoff=1e-3),
       dict(temperature=0.8, top_k=50, top_p=0.95, min_p=0.05, epsilon_cutoff=1e-3, repetition_penalty=1.2),
       dict(temperature=1.0, presence_penalty=1.5, frequency_penalty=0.5),
       dict(temperature=0.7, top_k=40, min_p=0.05, presence_penalty=-0.5, frequency_penalty=1.2,
            repetition_penalty=1.1)]


@pytest.mark.parametrize("kw", GEN)
def test_generate_logprobs_match_transition_scores_and_score_is_on_policy(shipped, kw):
    """Rollout.logprobs == transformers' compute_transition_scores over its own warpers on the drawn tokens;
    score(params) (with and without gradients) == Rollout.logprobs: GRPO's trainer is exactly on-policy."""
    gpt, hf, prompts = shipped
    params = SamplingParams(max_new_tokens=12, n=2, seed=11, **kw)
    rollouts = generate(gpt, prompts, params)
    flat_p = [p for p, g in zip(prompts, rollouts) for _ in g]
    flat = [r for g in rollouts for r in g]
    for p, r in zip(flat_p, flat):
        ref = hf_transition_scores(hf, p, r.tokens, **kw)
        off = ((torch.tensor(r.logprobs) - ref).abs() > 1e-4).nonzero()[:, 0]
        # A token whose probability sits on a rule's cut (eta's min(eta, sqrt(eta) exp(-H)), say) can be kept by
        # one forward and cut by the other: the two models' logits differ by ~1e-5 (test_model's parity). At
        # such a step transformers' chain, run on pigpt's own logits, must give pigpt's log-prob.
        assert off.numel() <= 1, (off, r.logprobs, ref)
        if off.numel():
            with torch.no_grad():
                own = gpt(torch.tensor([p + r.tokens]))[0, len(p) - 1: -1].float()
            ref = hf_transition_scores(hf, p, r.tokens, logits=own, **kw)
        torch.testing.assert_close(torch.tensor(r.logprobs), ref, atol=1e-4, rtol=0)
    completions = [r.tokens for r in flat]
    scored, keep = score(gpt, flat_p, completions, params, return_keep=True)
    assert (keep is not None) == params.truncates  # the kept sets, when a rule truncates
    with torch.enable_grad():
        scored_grad = score(gpt, flat_p, completions, params, grad=True)
    # float32 rounding between the decode path and a full forward (docs/policy.md: up to 3e-5 on the shipped
    # model): 1e-5 plus 1e-5 relative; batch-invariant, the two are equal bit for bit (test_batch_invariant.py)
    for r, s, sg in zip(flat, scored, scored_grad):
        torch.testing.assert_close(s, torch.tensor(r.logprobs), atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(sg.detach(), torch.tensor(r.logprobs), atol=1e-5, rtol=1e-5)
    trl_like = score(gpt, flat_p, completions, SamplingParams(temperature=kw["temperature"],
                                                               repetition_penalty=kw.get("repetition_penalty", 1.0)))
    assert max((a - b).abs().max().item() for a, b in zip(trl_like, scored)) > 1e-3  # the knob really acted


def test_beam_search_refuses_the_sampling_knobs(shipped):
    """Beam search is deterministic and transformers has no beam reference for vLLM's penalties: both are
    refused with the fields named, not ignored."""
    from pigpt.decoding import beam_search

    gpt, _, prompts = shipped
    for kw in (dict(min_p=0.1), dict(typical_p=0.5), dict(epsilon_cutoff=0.01), dict(eta_cutoff=0.01), dict(presence_penalty=0.5),
               dict(frequency_penalty=0.5)):
        with pytest.raises(ValueError, match=f"deterministic.*'{next(iter(kw))}'"):
            beam_search(gpt, prompts[:1], SamplingParams(max_new_tokens=2, **kw), num_beams=2)


def test_greedy_ignores_min_p_and_epsilon(shipped):
    gpt, _, prompts = shipped
    plain = generate(gpt, prompts, SamplingParams(temperature=0, max_new_tokens=10))
    cut = generate(gpt, prompts, SamplingParams(temperature=0, max_new_tokens=10, min_p=0.5, epsilon_cutoff=0.2,
                                                typical_p=0.2))
    assert [[(r.tokens, r.logprobs) for r in g] for g in plain] == [[(r.tokens, r.logprobs) for r in g] for g in cut]


@pytest.mark.parametrize("kw", [dict(temperature=1.0, min_p=0.02, epsilon_cutoff=1e-3),
                                dict(temperature=1.0, typical_p=0.5), dict(temperature=1.3, typical_p=0.9, eta_cutoff=1e-3)])
def test_first_token_frequencies_match_transformers_processed_distribution(shipped, kw):
    """1000 rollouts of the shipped model, one token each, with the rules: chi-square against the distribution
    transformers' warpers give, nothing outside its support."""
    gpt, hf, _ = shipped
    prompt, n = get_tokenizer().encode(for_model(gpt).to_model("The function returns")), 1000
    (group,) = generate(gpt, [prompt], SamplingParams(max_new_tokens=1, n=n, seed=1000, **kw))
    with torch.no_grad():
        probs = torch.softmax(hf_chain(hf(torch.tensor([prompt])).logits[:, -1], **kw), -1)[0]
    support = torch.nonzero(probs > 0)[:, 0].tolist()
    assert len(support) >= 3
    counts = dict.fromkeys(support, 0)
    for r in group:
        assert r.tokens[0] in counts, "drew a token outside the processed support"
        counts[r.tokens[0]] += 1
    expected = [probs[t].item() for t in support]
    total = sum(expected)
    expected = [e / total * n for e in expected]
    obs, exp_ = [counts[t] for t in support], expected
    small = [i for i, e in enumerate(exp_) if e < 5]
    if small:  # pool the rare tokens
        obs = [o for i, o in enumerate(obs) if i not in small] + [sum(obs[i] for i in small)]
        exp_ = [e for i, e in enumerate(exp_) if i not in small] + [sum(exp_[i] for i in small)]
    assert stats.chisquare(obs, exp_).pvalue > 1e-3, (obs, exp_)


# -- presence / frequency penalties ------------------------------------------------------------------------------
def test_presence_and_frequency_penalties_follow_openais_formula():
    """apply_presence_frequency_penalties == OpenAIPenalties: counts over the generated tokens only (the last
    num_generated columns, an int or one per row), per-row penalties, negative values, -inf kept, off = no-op."""
    from pigpt.decoding.processors import apply_presence_frequency_penalties

    g = torch.Generator().manual_seed(0)
    x = torch.randn(4, 30, generator=g) * 3
    x[:, 5] = NEG_INF
    ids = torch.randint(0, 30, (4, 12), generator=g)
    ids[:, -3:] = torch.tensor([7, 7, 5])  # repeats, and a masked token
    for pres, freq in ((0.7, 0.0), (0.0, 1.3), (1.5, -0.4), (-2.0, 2.0)):
        ours = apply_presence_frequency_penalties(x, ids, 6, pres, freq)
        ref = OpenAIPenalties(ids.shape[1] - 6, pres, freq)(ids, x)
        torch.testing.assert_close(ours, ref, rtol=0, atol=1e-6)
        assert ours[:, 5].eq(NEG_INF).all()
    n = torch.tensor([0, 1, 5, 12])  # one count per row (score's t-major entries)
    pres, freq = torch.tensor([0.5, 1.0, -1.0, 2.0]), torch.tensor([0.1, 0.0, 0.3, -0.2])
    ours = apply_presence_frequency_penalties(x, ids, n, pres, freq)
    for b in range(4):
        ref = OpenAIPenalties(12 - int(n[b]), pres[b].item(), freq[b].item())(ids[b:b + 1], x[b:b + 1])
        torch.testing.assert_close(ours[b:b + 1], ref, rtol=0, atol=1e-6)
    assert apply_presence_frequency_penalties(x, ids, 6, 0.0, 0.0) is x
    assert apply_presence_frequency_penalties(x, ids, 0, 1.0, 1.0) is x  # nothing generated yet
    with pytest.raises(ValueError, match=r"SamplingParams.presence_penalty must be in \[-2, 2\]"):
        SamplingParams(presence_penalty=2.5)
    with pytest.raises(ValueError, match=r"SamplingParams.frequency_penalty must be in \[-2, 2\]"):
        SamplingParams(frequency_penalty=-3)


def test_greedy_with_penalties_matches_transformers_generate(shipped):
    """Greedy decoding with the penalties == transformers' generate(do_sample=False) with OpenAIPenalties as
    its logits processor: the penalties act before the argmax, as in vLLM."""
    from transformers import LogitsProcessorList

    gpt, hf, prompts = shipped
    for pres, freq in ((1.0, 0.0), (0.0, 0.8), (0.5, 0.5)):
        ours = generate(gpt, prompts, SamplingParams(temperature=0, max_new_tokens=16, presence_penalty=pres,
                                                     frequency_penalty=freq, stop_token_ids=()))
        for p, (r,) in zip(prompts, ours):
            out = hf.generate(torch.tensor([p]), attention_mask=torch.ones(1, len(p), dtype=torch.long),
                              do_sample=False, max_new_tokens=16, pad_token_id=50256, eos_token_id=None,
                              logits_processor=LogitsProcessorList([OpenAIPenalties(len(p), pres, freq)]))
            assert r.tokens == out[0, len(p):].tolist(), (pres, freq)
    plain = generate(gpt, prompts, SamplingParams(temperature=0, max_new_tokens=16, stop_token_ids=()))
    assert [g[0].tokens for g in plain] != [g[0].tokens for g in ours]  # the penalties changed something
