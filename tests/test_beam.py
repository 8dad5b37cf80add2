"""beam_search() against transformers' generate(num_beams=..., do_sample=False): sequences and scores.

The model has a small vocabulary and a final-LayerNorm bias towards EOS, so that beams really finish at
different lengths and every early_stopping / length_penalty rule is exercised."""

import itertools

import pytest
import torch
from conftest import make_hf_model

from pigpt.decoding import beam_search
from pigpt.model import GPT

EOS = 7
VOCAB = 48
PROMPTS = [[1, 2, 3], [10, 11, 12, 13, 14], [30], [5, 40, 41, 20, 9, 33, 2]]
MAX_NEW = 8
TOL = 1e-4


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    hf = make_hf_model(seed=1, vocab_size=VOCAB, n_positions=64, bos_token_id=EOS, eos_token_id=EOS)
    with torch.no_grad():  # point the final LayerNorm's bias at EOS: likely, not certain
        w = hf.transformer.wte.weight[EOS]
        hf.transformer.ln_f.bias.add_(4.0 * w / w.norm() ** 2)
    path = tmp_path_factory.mktemp("beam-gpt2")
    hf.save_pretrained(path)
    return GPT.from_pretrained(path).eval(), hf


def hf_beams(hf, prompt, **kw):
    """transformers' hypotheses for one prompt: [(generated tokens, score)], best first."""
    nb, nrs = kw["num_beams"], kw.get("num_return_sequences", 1)
    out = hf.generate(torch.tensor([prompt]), attention_mask=torch.ones(1, len(prompt), dtype=torch.long),
                      do_sample=False, pad_token_id=EOS, eos_token_id=EOS, return_dict_in_generate=True,
                      output_scores=True, **kw)
    seqs = out.sequences[:, len(prompt):].tolist()
    if nb == 1:  # greedy search: transformers reports no sequence score; sum its token log-probs
        lp = hf.compute_transition_scores(out.sequences, out.scores, normalize_logits=True)[0]
        toks = seqs[0][: seqs[0].index(EOS) + 1] if EOS in seqs[0] else seqs[0]
        return [(toks, lp[: len(toks)].sum().item() / len(toks) ** kw.get("length_penalty", 1.0))]
    # each hypothesis' generated length = its beam_indices that are set (its EOS included)
    lengths = (out.beam_indices >= 0).sum(dim=1).tolist()
    return [(seqs[j][: lengths[j]], out.sequences_scores[j].item()) for j in range(nrs)]


def assert_same(ours, ref):
    assert len(ours) == len(ref)
    for beam, (tokens, score) in zip(ours, ref):
        assert beam.tokens == tokens
        assert abs(beam.score - score) <= TOL, (beam.score, score)


GRID = list(itertools.product([1, 2, 4, 8], [0.5, 1.0, 2.0], [True, False, "never"]))


@pytest.mark.parametrize("num_beams,length_penalty,early_stopping", GRID)
def test_beam_search_matches_transformers(pair, num_beams, length_penalty, early_stopping):
    gpt, hf = pair
    nrs = num_beams if num_beams < 4 else num_beams - 1  # all, or fewer than all
    kw = dict(num_beams=num_beams, max_new_tokens=MAX_NEW, length_penalty=length_penalty,
              early_stopping=early_stopping, num_return_sequences=nrs)
    ours = beam_search(gpt, PROMPTS, stop_token_ids=(EOS,), **kw)
    for p, beams in zip(PROMPTS, ours):
        assert_same(beams, hf_beams(hf, p, **kw))


def test_beams_really_finish(pair):
    """Guards the grid above: hypotheses end by EOS at several lengths, not only at the length cap."""
    gpt, _ = pair
    lengths = set()
    for p in PROMPTS:
        for b in beam_search(gpt, [p], num_beams=4, max_new_tokens=MAX_NEW, num_return_sequences=4,
                             stop_token_ids=(EOS,))[0]:
            if b.tokens[-1] == EOS:
                lengths.add(len(b.tokens))
    assert len(lengths) >= 3, lengths


def test_ragged_batch_equals_prompts_alone(pair):
    gpt, _ = pair
    kw = dict(num_beams=4, max_new_tokens=MAX_NEW, num_return_sequences=3, length_penalty=0.7,
              stop_token_ids=(EOS,))
    batched = beam_search(gpt, PROMPTS, **kw)
    for p, beams in zip(PROMPTS, batched):
        (alone,) = beam_search(gpt, [p], **kw)
        assert [b.tokens for b in alone] == [b.tokens for b in beams]
        assert [b.score for b in alone] == pytest.approx([b.score for b in beams], abs=1e-5)


@pytest.mark.parametrize("num_beams", [1, 3])
@pytest.mark.parametrize("repetition_penalty,min_new_tokens", [(1.5, 0), (0.7, 0), (1.0, 4), (1.3, 3)])
def test_penalty_and_min_new_tokens_match_transformers(pair, num_beams, repetition_penalty, min_new_tokens):
    gpt, hf = pair
    kw = dict(num_beams=num_beams, max_new_tokens=MAX_NEW, num_return_sequences=num_beams,
              repetition_penalty=repetition_penalty, min_new_tokens=min_new_tokens)
    ours = beam_search(gpt, PROMPTS[:3], stop_token_ids=(EOS,), **kw)
    for p, beams in zip(PROMPTS[:3], ours):
        assert_same(beams, hf_beams(hf, p, **kw))
        assert all(len(b.tokens) > min_new_tokens or EOS not in b.tokens for b in beams)


def test_no_stop_tokens_runs_to_the_length_cap(pair):
    gpt, hf = pair
    (beams,) = beam_search(gpt, PROMPTS[:1], num_beams=3, max_new_tokens=5, num_return_sequences=2,
                           stop_token_ids=())
    assert all(len(b.tokens) == 5 for b in beams)


@pytest.mark.parametrize("kw,match", [
    (dict(num_beams=0), "num_beams"),
    (dict(num_beams=2, num_return_sequences=3), "num_return_sequences"),
    (dict(num_beams=2, early_stopping="sometimes"), "early_stopping"),
    (dict(num_beams=2, max_new_tokens=0), "max_new_tokens"),
    (dict(num_beams=2, min_new_tokens=9), "min_new_tokens"),
    (dict(num_beams=2, length_penalty=float("inf")), "length_penalty"),
    (dict(num_beams=2, repetition_penalty=0.0), "repetition_penalty"),
    (dict(num_beams=2, max_new_tokens=62), "context"),
])
def test_bad_arguments_are_clear_errors(pair, kw, match):
    gpt, _ = pair
    kw = {"max_new_tokens": 8, **kw}
    with pytest.raises(ValueError, match=match):
        beam_search(gpt, PROMPTS[:1], **kw)


@pytest.mark.parametrize("num_beams,early_stopping", [(2, False), (4, "never")])
def test_prompts_finishing_at_different_steps(pair, num_beams, early_stopping):
    """With 16 new tokens and length_penalty 0.5, prompt 2 is done steps before the others: its beams leave
    the batch, and every prompt still gets transformers' hypotheses."""
    gpt, hf = pair
    kw = dict(num_beams=num_beams, max_new_tokens=16, length_penalty=0.5, early_stopping=early_stopping,
              num_return_sequences=num_beams)
    ours = beam_search(gpt, PROMPTS, stop_token_ids=(EOS,), **kw)
    for p, beams in zip(PROMPTS, ours):
        assert_same(beams, hf_beams(hf, p, **kw))
    assert max(len(b.tokens) for b in ours[2]) < max(len(b.tokens) for b in ours[0]), "prompt 2 should end first"
