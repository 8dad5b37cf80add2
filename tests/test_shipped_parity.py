"""generate / beam_search / sampling log-probs against transformers on the shipped, trained weights
(pigpt/model/default): peaked distributions, where near-ties and long beams behave as in real use, beside the
random-weight parity tests of test_decoding.py and test_beam.py."""

from pathlib import Path

import pytest
import torch

from pigpt.decoding import SamplingParams, beam_search, generate
from pigpt.model import DEFAULT_MODEL, GPT, get_tokenizer
from pigpt.model.textform import for_model

DEFAULT = DEFAULT_MODEL
TEXTS = ["Which is the largest ocean?", "The function returns", "def fibonacci(n):\n", "Once upon a time"]
EOS = 50256


@pytest.fixture(scope="module")
def pair():
    from transformers import GPT2LMHeadModel

    gpt = GPT.from_pretrained(DEFAULT).eval()
    hf = GPT2LMHeadModel.from_pretrained(DEFAULT, dtype=torch.float32).eval()
    form, enc = for_model(gpt), get_tokenizer()
    return gpt, hf, [enc.encode(form.to_model(t)) for t in TEXTS]


def _hf(hf, prompt, **kw):
    return hf.generate(torch.tensor([prompt]), attention_mask=torch.ones(1, len(prompt), dtype=torch.long),
                       pad_token_id=EOS, eos_token_id=EOS, **kw)


def _strip(tokens):
    return tokens[: tokens.index(EOS) + 1] if EOS in tokens else tokens


def test_greedy_matches_transformers_on_trained_weights(pair):
    gpt, hf, prompts = pair
    ours = generate(gpt, prompts, SamplingParams(temperature=0, max_new_tokens=24, repetition_penalty=1.2))
    for p, (r,) in zip(prompts, ours):
        ref = _hf(hf, p, do_sample=False, max_new_tokens=24, repetition_penalty=1.2)[0, len(p):].tolist()
        assert r.tokens == _strip(ref)


@pytest.mark.parametrize("num_beams,length_penalty", [(3, 1.0), (4, 0.6)])
def test_beam_search_matches_transformers_on_trained_weights(pair, num_beams, length_penalty):
    gpt, hf, prompts = pair
    ours = beam_search(gpt, prompts, num_beams=num_beams, max_new_tokens=12, length_penalty=length_penalty,
                       num_return_sequences=2)
    for p, beams in zip(prompts, ours):
        out = _hf(hf, p, do_sample=False, num_beams=num_beams, max_new_tokens=12, length_penalty=length_penalty,
                  num_return_sequences=2, return_dict_in_generate=True, output_scores=True)
        lengths = (out.beam_indices >= 0).sum(dim=1).tolist()
        for b, seq, n, score in zip(beams, out.sequences[:, len(p):].tolist(), lengths, out.sequences_scores):
            assert b.tokens == seq[:n] and abs(b.score - score.item()) <= 1e-4


def test_sampling_logprobs_match_transition_scores_on_trained_weights(pair):
    """Rollout.logprobs == transformers' compute_transition_scores(normalize_logits=True) over its own
    processors (temperature, top-k, top-p, penalty) on the tokens pigpt drew; model_logprobs == raw."""
    from transformers import (LogitsProcessorList, RepetitionPenaltyLogitsProcessor, TemperatureLogitsWarper,
                              TopKLogitsWarper, TopPLogitsWarper)

    gpt, hf, prompts = pair
    params = SamplingParams(temperature=0.7, top_k=50, top_p=0.9, repetition_penalty=1.2, max_new_tokens=16, n=3,
                            seed=0)
    chain = LogitsProcessorList([RepetitionPenaltyLogitsProcessor(1.2), TemperatureLogitsWarper(0.7),
                                 TopKLogitsWarper(50), TopPLogitsWarper(0.9)])
    for p, group in zip(prompts, generate(gpt, prompts, params)):
        for r in group:
            seq = torch.tensor([p + r.tokens])
            with torch.no_grad():
                logits = hf(seq).logits[0, len(p) - 1: -1]
            scores = tuple(chain(seq[:, :len(p) + t], logits[t:t + 1].clone()) for t in range(len(r.tokens)))
            ref = hf.compute_transition_scores(seq, scores, normalize_logits=True)[0]
            torch.testing.assert_close(torch.tensor(r.logprobs), ref, atol=1e-4, rtol=0)
            raw = torch.log_softmax(logits, -1).gather(1, torch.tensor(r.tokens)[:, None])[:, 0]
            torch.testing.assert_close(torch.tensor(r.model_logprobs), raw, atol=1e-4, rtol=0)
