"""generate() and score() against transformers: greedy, repetition penalty, min_new_tokens, sampling log-probs,
seeds, stop strings, bad input. Models: random GPT-2-shaped weights, the same in pigpt and transformers."""

import math

import pytest
import torch
from conftest import make_hf_model
from scipy.stats import chisquare
from transformers import (LogitsProcessorList, MinNewTokensLengthLogitsProcessor, RepetitionPenaltyLogitsProcessor,
                          TemperatureLogitsWarper, TopKLogitsWarper, TopPLogitsWarper)

from pigpt.decoding import SamplingParams, generate, score
from pigpt.decoding.processors import apply_min_new_tokens, apply_repetition_penalty
from pigpt.model import GPT, get_tokenizer

EOS = 50256
PROMPTS = [[464, 2068, 7586, 21831], [40, 1101], [7454, 2402, 257, 640, 11, 612, 373, 257, 1310, 13],
           [15496]]


@pytest.fixture(scope="module")
def tiny(tiny_checkpoint):
    path, hf = tiny_checkpoint
    return GPT.from_pretrained(path).eval(), hf


def eos_biased_pair(tmp_path, bias: float, seed: int = 1, wte_scale: float = 1.0, **cfg):
    """A random model whose final LayerNorm bias points at EOS (EOS likely but not certain at each step);
    wte_scale < 1 flattens the conftest model's peaked logits."""
    hf = make_hf_model(seed=seed, **cfg)
    eos = hf.config.eos_token_id
    with torch.no_grad():
        hf.transformer.wte.weight.mul_(wte_scale)
        w = hf.transformer.wte.weight[eos]
        hf.transformer.ln_f.bias.add_(bias * w / w.norm() ** 2)
    hf.save_pretrained(tmp_path)
    return GPT.from_pretrained(tmp_path).eval(), hf


@pytest.fixture(scope="module")
def eos_model(tmp_path_factory):
    return eos_biased_pair(tmp_path_factory.mktemp("eos-gpt2"), bias=8.0)


@pytest.fixture(scope="module")
def mild(tmp_path_factory):
    """Flatter logits (wte x1 instead of x5): greedy choices that a repetition penalty can change."""
    return eos_biased_pair(tmp_path_factory.mktemp("mild-gpt2"), bias=0.0, wte_scale=0.2)


def hf_generate(hf, prompt, max_new_tokens, **kw):
    out = hf.generate(torch.tensor([prompt]), attention_mask=torch.ones(1, len(prompt), dtype=torch.long),
                      max_new_tokens=max_new_tokens, pad_token_id=EOS, **kw)
    return _strip(out[0, len(prompt):].tolist(), kw.get("eos_token_id", EOS))


def _strip(tokens, eos):
    """transformers pads a finished row with the pad token after its EOS; keep up to the first EOS."""
    return tokens[: tokens.index(eos) + 1] if eos in tokens else tokens


def hf_processed_logprobs(hf, prompt, tokens, *, temperature, top_k, top_p, repetition_penalty, min_new_tokens,
                          eos=EOS):
    """transformers' compute_transition_scores(normalize_logits=True) for `tokens`, with the processed scores
    built by its own processors in generate()'s order (penalty, min_new_tokens, temperature, top-k, top-p)."""
    procs = LogitsProcessorList()
    if repetition_penalty != 1.0:
        procs.append(RepetitionPenaltyLogitsProcessor(repetition_penalty))
    if min_new_tokens:
        procs.append(MinNewTokensLengthLogitsProcessor(len(prompt), min_new_tokens, eos))
    procs.append(TemperatureLogitsWarper(temperature))
    if top_k:
        procs.append(TopKLogitsWarper(top_k))
    if top_p < 1.0:
        procs.append(TopPLogitsWarper(top_p))
    seq = torch.tensor([prompt + tokens])
    with torch.no_grad():
        logits = hf(seq).logits[0, len(prompt) - 1: -1]  # (Tc, V): the logits that drew each token
    scores = tuple(procs(seq[:, : len(prompt) + t], logits[t: t + 1].clone()) for t in range(len(tokens)))
    return hf.compute_transition_scores(seq, scores, normalize_logits=True)[0]


# -- greedy --------------------------------------------------------------------------------------------------
def test_greedy_matches_transformers_alone_and_ragged_batch(tiny):
    gpt, hf = tiny
    params = SamplingParams(temperature=0.0, max_new_tokens=20)
    refs = [hf_generate(hf, p, 20, do_sample=False) for p in PROMPTS]
    batched = generate(gpt, PROMPTS, params)
    for p, ref, group in zip(PROMPTS, refs, batched):
        (alone,) = generate(gpt, [p], params)[0]
        assert alone.tokens == ref
        assert group[0].tokens == ref
        assert group[0].finish_reason == ("stop" if ref[-1] == EOS and len(ref) < 20 else "length")


@pytest.mark.parametrize("penalty", [1.3, 0.8])
def test_repetition_penalty_greedy_matches_transformers(mild, penalty):
    gpt, hf = mild
    params = SamplingParams(temperature=0.0, max_new_tokens=12, repetition_penalty=penalty)
    out = generate(gpt, PROMPTS, params)
    changed = False
    for p, group in zip(PROMPTS, out):
        ref = hf_generate(hf, p, 12, do_sample=False, repetition_penalty=penalty)
        assert group[0].tokens == ref
        # greedy log-probs: log_softmax of the penalised logits at the argmax, as compute_transition_scores
        lp = hf_processed_logprobs(hf, p, ref, temperature=1.0, top_k=0, top_p=1.0,
                                   repetition_penalty=penalty, min_new_tokens=0)
        assert torch.allclose(torch.tensor(group[0].logprobs), lp, atol=1e-4)
        changed |= ref != hf_generate(hf, p, 12, do_sample=False)
    assert changed, "the penalty should change some greedy completion, or this test shows nothing"


def test_min_new_tokens_masks_stop_tokens(eos_model):
    gpt, hf = eos_model
    free = generate(gpt, PROMPTS, SamplingParams(max_new_tokens=10, n=4, seed=0))
    assert min(len(r.tokens) for g in free for r in g) < 4, "the EOS-biased model should stop early when allowed"
    params = SamplingParams(max_new_tokens=10, min_new_tokens=6, n=4, seed=0)
    for group in generate(gpt, PROMPTS, params):
        for r in group:
            assert EOS not in r.tokens[:6] and len(r.tokens) >= 6
            assert (r.finish_reason == "stop") == (r.tokens[-1] == EOS)
    # and greedily, the same tokens as transformers' min_new_tokens
    for p in PROMPTS:
        (r,) = generate(gpt, [p], SamplingParams(temperature=0, max_new_tokens=12, min_new_tokens=3))[0]
        assert r.tokens == hf_generate(hf, p, 12, do_sample=False, min_new_tokens=3)


# -- sampling ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("kw", [
    dict(temperature=1.0, top_k=0, top_p=1.0, repetition_penalty=1.0, min_new_tokens=0),
    dict(temperature=0.7, top_k=20, top_p=0.9, repetition_penalty=1.2, min_new_tokens=2),
    dict(temperature=1.6, top_k=0, top_p=0.8, repetition_penalty=0.9, min_new_tokens=0),
])
def test_sampling_logprobs_match_transition_scores(eos_model, kw):
    gpt, hf = eos_model
    params = SamplingParams(max_new_tokens=8, n=2, seed=123, **kw)
    for p, group in zip(PROMPTS[:2], generate(gpt, PROMPTS[:2], params)):
        for r in group:
            ref = hf_processed_logprobs(hf, p, r.tokens, **kw)
            assert torch.allclose(torch.tensor(r.logprobs), ref, atol=1e-4), (r.logprobs, ref.tolist())


def test_same_seed_same_rollout_alone_or_batched(eos_model):
    """With one base seed s, rollout i of prompt p has seed s + p * n + i: every rollout of the batch draws
    its own noise, and the seed it reports replays it alone."""
    gpt, _ = eos_model
    kw = dict(temperature=1.2, top_k=40, top_p=0.95, max_new_tokens=12)
    batched = generate(gpt, PROMPTS, SamplingParams(n=4, seed=7, **kw))
    again = generate(gpt, PROMPTS, SamplingParams(n=4, seed=7, **kw))
    assert [[r.tokens for r in g] for g in batched] == [[r.tokens for r in g] for g in again]
    for p, (prompt, group) in enumerate(zip(PROMPTS, batched)):
        assert [r.seed for r in group] == [7 + 4 * p + i for i in range(4)]
        for i in (0, 3):
            (alone,) = generate(gpt, [prompt], SamplingParams(n=1, seed=group[i].seed, **kw))[0]
            assert alone.tokens == group[i].tokens
            assert alone.logprobs == pytest.approx(group[i].logprobs, abs=1e-5)
    lengths = {len(r.tokens) for g in batched for r in g}
    assert len(lengths) > 1, "rows should finish at different steps so that dropping rows is exercised"
    assert len({tuple(r.tokens) for r in batched[0]}) > 1, "different seeds should give different rollouts"


def test_same_prompt_twice_in_a_batch_draws_independent_rollouts(eos_model):
    """Under one base seed, two copies of a prompt are two prompts: their rollouts differ (before this rule,
    rollout i of every prompt shared seed s + i, so copies drew the same noise)."""
    gpt, _ = eos_model
    a, b = generate(gpt, [PROMPTS[0], PROMPTS[0]], SamplingParams(n=3, seed=5, max_new_tokens=10))
    assert [r.tokens for r in a] != [r.tokens for r in b]
    assert {r.seed for r in a}.isdisjoint({r.seed for r in b})


def test_a_seed_per_prompt(eos_model):
    gpt, _ = eos_model
    kw = dict(max_new_tokens=6, n=2)
    out = generate(gpt, PROMPTS[:3], SamplingParams(seed=[100, 7, 100], **kw))
    assert [[r.seed for r in g] for g in out] == [[100, 101], [7, 8], [100, 101]]
    (alone,) = generate(gpt, [PROMPTS[1]], SamplingParams(seed=7, **kw))
    assert [r.tokens for r in alone] == [r.tokens for r in out[1]]
    with pytest.raises(ValueError, match="2 seeds for 3 prompts"):
        generate(gpt, PROMPTS[:3], SamplingParams(seed=[1, 2], **kw))


def test_seed_none_draws_and_reports_fresh_seeds(tiny):
    gpt, _ = tiny
    out = generate(gpt, PROMPTS[:2], SamplingParams(n=2, max_new_tokens=2))
    for group in out:
        assert group[1].seed == group[0].seed + 1
    assert out[0][0].seed != out[1][0].seed
    (again,) = generate(gpt, PROMPTS[:1], SamplingParams(max_new_tokens=2, seed=out[0][0].seed))[0]
    assert again.tokens == out[0][0].tokens


def test_first_token_frequencies_match_processed_distribution(tiny):
    """2000 seeds, one token each; chi-square against transformers' processed distribution (p > 1e-3)."""
    gpt, hf = tiny
    prompt, n = PROMPTS[0], 2000
    temperature, top_k, top_p = 3.0, 8, 0.95
    (group,) = generate(gpt, [prompt], SamplingParams(temperature=temperature, top_k=top_k, top_p=top_p,
                                                      max_new_tokens=1, n=n, seed=1000))
    with torch.no_grad():
        logits = hf(torch.tensor([prompt])).logits[:, -1]
    procs = LogitsProcessorList([TemperatureLogitsWarper(temperature), TopKLogitsWarper(top_k),
                                 TopPLogitsWarper(top_p)])
    probs = torch.softmax(procs(torch.tensor([prompt]), logits), dim=-1)[0]
    support = torch.nonzero(probs > 0)[:, 0].tolist()
    assert len(support) >= 3, "the test needs a spread distribution"
    counts = {t: 0 for t in support}
    for r in group:
        assert r.tokens[0] in counts, "drew a token outside the processed support"
        counts[r.tokens[0]] += 1
    observed = [counts[t] for t in support]
    total = sum(probs[t].item() for t in support)
    expected = [probs[t].item() / total * n for t in support]  # float64, summing to n as chisquare requires
    assert chisquare(observed, expected).pvalue > 1e-3, (observed, expected)


# -- score ---------------------------------------------------------------------------------------------------
def test_score_equals_untruncated_generate_logprobs(eos_model):
    gpt, hf = eos_model
    params = SamplingParams(temperature=1.0, top_k=0, top_p=1.0, max_new_tokens=8, n=2, seed=3)
    for p, group in zip(PROMPTS, generate(gpt, PROMPTS, params)):
        for r in group:
            s = score(gpt, p, r.tokens)
            assert s.shape == (len(r.tokens),) and s.dtype == torch.float32
            assert torch.allclose(s, torch.tensor(r.logprobs), atol=1e-4)
            with torch.no_grad():  # and the raw model distribution itself
                ref = torch.log_softmax(hf(torch.tensor([p + r.tokens])).logits[0, len(p) - 1: -1], -1)
            assert torch.allclose(s, ref.gather(1, torch.tensor(r.tokens)[:, None])[:, 0], atol=1e-4)


def test_score_of_one_token(tiny):
    gpt, hf = tiny
    s = score(gpt, [464, 2068], [7586])
    with torch.no_grad():
        ref = torch.log_softmax(hf(torch.tensor([[464, 2068]])).logits[0, -1], -1)[7586]
    assert s.shape == (1,) and abs(s.item() - ref.item()) < 1e-4


# -- stop strings --------------------------------------------------------------------------------------------
def test_stop_string_ends_at_the_completing_token(eos_model):
    gpt, _ = eos_model
    enc = get_tokenizer()
    params = SamplingParams(max_new_tokens=10, n=4, seed=11, stop_token_ids=())
    plain = generate(gpt, PROMPTS[:1], params)[0]
    text = enc.decode(plain[0].tokens)
    stop = text[len(text) // 2: len(text) // 2 + 2]  # a string the first rollout is known to produce
    assert stop.strip(), text
    cut = generate(gpt, PROMPTS[:1], SamplingParams(max_new_tokens=10, n=4, seed=11, stop_token_ids=(), stop=(stop,)))
    for full, r in zip(plain, cut[0]):
        hit = next((k for k in range(1, len(full.tokens) + 1) if stop in enc.decode(full.tokens[:k])), None)
        if hit is None:
            assert r.tokens == full.tokens and r.finish_reason == "length"
        else:
            assert r.tokens == full.tokens[:hit] and r.finish_reason == "stop"
    assert cut[0][0].finish_reason == "stop"


# -- processors ------------------------------------------------------------------------------------------
def test_processors_match_transformers():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(3, 100, generator=g) * 3
    ids = torch.randint(0, 100, (3, 12), generator=g)
    ref = RepetitionPenaltyLogitsProcessor(1.4)(ids, logits.clone())
    assert torch.equal(apply_repetition_penalty(logits, ids, 1.4), ref)
    assert torch.equal(apply_repetition_penalty(logits, ids.tolist(), 1.4), ref)
    ref = MinNewTokensLengthLogitsProcessor(5, 3, [7, 9])(ids[:, :7], logits.clone())  # 2 new tokens < 3
    assert torch.equal(apply_min_new_tokens(logits, 2, 3, [7, 9]), ref)
    assert torch.equal(apply_min_new_tokens(logits, 3, 3, [7, 9]), logits)


# -- bad input -----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("field,value", [
    ("temperature", -0.1), ("temperature", float("nan")), ("top_k", -1), ("top_k", 2.5), ("top_p", 0.0),
    ("top_p", 1.5), ("repetition_penalty", 0.0), ("min_new_tokens", -1), ("max_new_tokens", 0), ("n", 0),
    ("seed", -3), ("stop_token_ids", (-1,)), ("stop", ("",)),
])
def test_bad_params_name_the_field(field, value):
    with pytest.raises(ValueError, match=field):
        SamplingParams(**{field: value})


def test_min_new_tokens_above_max_is_rejected():
    with pytest.raises(ValueError, match="min_new_tokens"):
        SamplingParams(min_new_tokens=10, max_new_tokens=5)


def test_prompt_beyond_context_is_a_clear_error(tiny):
    gpt, _ = tiny
    block = gpt.config.block_size
    with pytest.raises(ValueError, match="context"):
        generate(gpt, [[1] * (block - 10)], SamplingParams(max_new_tokens=11))
    with pytest.raises(ValueError, match="context"):
        score(gpt, [1] * (block - 2), [2] * 4)
    score(gpt, [1] * (block - 3), [2] * 4)  # the last token is predicted, never fed: block positions
    generate(gpt, [[1] * (block - 10)], SamplingParams(max_new_tokens=10, temperature=0))  # fits exactly


def test_error_messages_name_the_completion_and_a_possible_fix(tiny):
    """score's errors call a completion a completion; the context hint never says 'keep its last 0 tokens'."""
    gpt, _ = tiny
    block = gpt.config.block_size
    with pytest.raises(ValueError, match=r"^completion 0 holds 50257"):
        score(gpt, [1, 2], [3, 50257])
    with pytest.raises(ValueError, match=r"^completion 2 holds -1"):  # its own index, whatever is empty
        score(gpt, [[1], [2], [3]], [[], [4], [-1]])
    with pytest.raises(ValueError, match="lower max_new_tokens below") as e:
        generate(gpt, [[1]], SamplingParams(max_new_tokens=block))
    assert "last 0" not in str(e.value)


@pytest.mark.parametrize("prompts,match", [
    ([], "non-empty"), ([1, 2, 3], "list of token-id lists"), ([[]], "empty"), ([[1, 50257]], "vocabulary|token id"),
])
def test_bad_prompts_are_clear_errors(tiny, prompts, match):
    gpt, _ = tiny
    with pytest.raises(ValueError, match=match):
        generate(gpt, prompts, SamplingParams(max_new_tokens=2))
