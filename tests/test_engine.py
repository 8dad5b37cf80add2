"""The step engine and what is built on it: stream == generate, score (batched, processed, with gradients)
== the log-probs generate reported, user logits processors == transformers', beams' per-token records,
and the rule that decoding/ holds the only decode loop."""

import re
from pathlib import Path

import pytest
import torch
from conftest import make_hf_model
from transformers import NoRepeatNGramLogitsProcessor

from pigpt.decoding import Beam, SamplingParams, beam_search, generate, score, stream
from pigpt.model import GPT, get_tokenizer

EOS = 50256
PROMPTS = [[464, 2068, 7586, 21831], [40, 1101], [7454, 2402, 257, 640, 11, 612, 373, 257, 1310, 13], [15496]]
ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    """A random GPT-2 whose final LayerNorm bias makes EOS likely (rows stop at different steps)."""
    hf = make_hf_model(seed=3)
    with torch.no_grad():
        w = hf.transformer.wte.weight[EOS]
        hf.transformer.ln_f.bias.add_(6.0 * w / w.norm() ** 2)
    path = tmp_path_factory.mktemp("engine-gpt2")
    hf.save_pretrained(path)
    return GPT.from_pretrained(path).eval(), hf


def collect(s):
    """Per global row: tokens, logprobs, model_logprobs, and whether its last step said finished."""
    rows = {}
    for step in s:
        for r, tok, lp, mlp, fin in zip(step.rows.tolist(), step.tokens.tolist(), step.logprobs.tolist(),
                                        step.model_logprobs.tolist(), step.finished.tolist()):
            rec = rows.setdefault(r, ([], [], [], []))
            assert not rec[3] or not rec[3][-1], f"row {r} yielded a token after it finished"
            for part, v in zip(rec, (tok, lp, mlp, fin)):
                part.append(v)
    return rows


STREAM_CASES = {
    "ragged, n=3, stop token": SamplingParams(n=3, seed=1, max_new_tokens=12, temperature=0.9, top_k=40),
    "stop strings, no stop token": SamplingParams(n=2, seed=4, max_new_tokens=12, stop=("q", "z", "x"),
                                                  stop_token_ids=()),
    "penalty and top-p": SamplingParams(n=3, seed=9, max_new_tokens=16, repetition_penalty=1.3, top_p=0.95),
    "greedy": SamplingParams(temperature=0, max_new_tokens=8),
}


@pytest.mark.parametrize("case", STREAM_CASES)
def test_streamed_steps_are_generates_rollouts(pair, case):
    gpt, _ = pair
    params = STREAM_CASES[case]
    s = stream(gpt, PROMPTS, params)
    rows = collect(s)
    out = generate(gpt, PROMPTS, params)
    assert sorted(rows) == list(range(len(PROMPTS) * params.n))
    for p, group in enumerate(out):
        for i, r in enumerate(group):
            toks, lps, mlps, fin = rows[p * params.n + i]
            assert toks == r.tokens and s.seeds[p * params.n + i] == r.seed
            assert lps == pytest.approx(r.logprobs, abs=1e-6) and mlps == pytest.approx(r.model_logprobs, abs=1e-6)
            assert fin[-1] and not any(fin[:-1])
    if case != "greedy":
        lengths = {len(r.tokens) for g in out for r in g}
        reasons = {r.finish_reason for g in out for r in g}
        assert len(lengths) > 1 and reasons == {"stop", "length"}, (lengths, reasons)


def test_a_step_carries_its_distributions_on_request(pair):
    from pigpt.kernels import process_logits

    gpt, _ = pair
    params = SamplingParams(n=2, seed=0, max_new_tokens=3, temperature=0.7, top_k=20, repetition_penalty=1.2)
    for step in stream(gpt, PROMPTS[:2], params, distributions=True):
        assert step.logits.shape == step.scores.shape == (len(step.rows), gpt.config.vocab_size)
        raw = torch.log_softmax(step.logits, -1).gather(1, step.tokens[:, None])[:, 0]
        torch.testing.assert_close(raw, step.model_logprobs, atol=1e-6, rtol=0)
        proc = process_logits(step.scores, temperature=0.7, top_k=20).gather(1, step.tokens[:, None])[:, 0]
        torch.testing.assert_close(proc, step.logprobs, atol=1e-5, rtol=0)
    assert next(iter(stream(gpt, PROMPTS[:1], params))).logits is None


RL_PARAMS = SamplingParams(temperature=0.7, top_k=50, top_p=0.9, repetition_penalty=1.3, max_new_tokens=12, n=3,
                           seed=5)


@pytest.fixture(scope="module")
def rollouts(pair):
    gpt, _ = pair
    out = generate(gpt, PROMPTS, RL_PARAMS)
    prompts = [p for p, g in zip(PROMPTS, out) for _ in g]
    return prompts, [r for g in out for r in g]


def test_score_with_params_is_rollout_logprobs_and_without_is_model_logprobs(pair, rollouts):
    gpt, _ = pair
    prompts, rs = rollouts
    completions = [r.tokens for r in rs]
    processed = score(gpt, prompts, completions, RL_PARAMS)
    raw = score(gpt, prompts, completions)
    assert isinstance(processed, list) and len(processed) == len(rs)
    for r, s_p, s_m in zip(rs, processed, raw):
        torch.testing.assert_close(s_p, torch.tensor(r.logprobs), atol=1e-5, rtol=0)
        torch.testing.assert_close(s_m, torch.tensor(r.model_logprobs), atol=1e-5, rtol=0)
    # a single pair keeps the old form: a 1-D tensor
    one = score(gpt, prompts[0], completions[0], RL_PARAMS)
    assert isinstance(one, torch.Tensor) and one.shape == (len(completions[0]),)
    # the processed and raw distributions really differ here
    assert max((a - b).abs().max().item() for a, b in zip(processed, raw)) > 0.1


def test_score_gradients_equal_a_plain_forward(pair, rollouts):
    """grad=True: backward reaches every parameter, with the gradient of a plain full forward + log_softmax
    (raw), and of the kept-set log-softmax of transformers-processed logits (params)."""
    from pigpt.kernels import process_logits

    gpt, _ = pair
    prompts, rs = rollouts
    completions = [r.tokens for r in rs]
    for params in (None, RL_PARAMS):
        gpt.zero_grad()
        total = sum(s.sum() for s in score(gpt, prompts, completions, params, grad=True))
        total.backward()
        ours = {n: p.grad.clone() for n, p in gpt.named_parameters()}
        assert all(g is not None and g.abs().sum() > 0 for g in ours.values())
        gpt.zero_grad()
        ref = 0.0
        for prompt, c in zip(prompts, completions):
            logits = gpt(torch.tensor([prompt + c[:-1]]))[0, len(prompt) - 1:]  # (Tc, V)
            if params is not None:
                rows = []
                for t in range(len(c)):
                    seen = torch.tensor(sorted(set(prompt + c[:t])))
                    s_t = logits[t].clone()
                    v = s_t[seen]
                    s_t = s_t.index_put((seen,), torch.where(v < 0, v * 1.3, v / 1.3))
                    rows.append(s_t)
                logits = torch.stack(rows)
                keep = process_logits(logits.detach(), temperature=0.7, top_k=50, top_p=0.9) > float("-inf")
                logits = (logits / 0.7).masked_fill(~keep, float("-inf"))
            ref = ref + torch.log_softmax(logits, -1).gather(1, torch.tensor(c)[:, None]).sum()
        ref.backward()
        for n, p in gpt.named_parameters():  # float32 sums in another order: <= 1e-5 of the gradient's scale
            err = (ours[n] - p.grad).abs().max().item()
            assert err <= 1e-5 * p.grad.abs().max().item(), (n, err)
        torch.testing.assert_close(total.detach(), ref.detach(), atol=1e-4, rtol=1e-6)
    gpt.zero_grad(set_to_none=True)


def test_score_batches_empty_completions_and_one_prompt_for_many(pair):
    gpt, _ = pair
    out = score(gpt, PROMPTS[0], [[11, 12], [], [13]])
    assert [len(s) for s in out] == [2, 0, 1]
    torch.testing.assert_close(out[0], score(gpt, PROMPTS[0], [11, 12]))
    assert score(gpt, PROMPTS[0], []).shape == (0,)


def test_a_transformers_logits_processor_runs_as_transformers_runs_it(pair):
    """NoRepeatNGramLogitsProcessor passed as a user processor: the same greedy tokens as transformers'
    generate(logits_processor=[...]); without it the model repeats itself (so the processor acts)."""
    gpt, hf = pair
    hf.generation_config.eos_token_id = None
    prompt, T = PROMPTS[1], 24
    params = SamplingParams(temperature=0, max_new_tokens=T, stop_token_ids=(),
                            logits_processors=[NoRepeatNGramLogitsProcessor(2)])
    (ours,) = generate(gpt, [prompt], params)[0]
    ref = hf.generate(torch.tensor([prompt]), attention_mask=torch.ones(1, len(prompt), dtype=torch.long),
                      do_sample=False, max_new_tokens=T, pad_token_id=EOS,
                      logits_processor=[NoRepeatNGramLogitsProcessor(2)])[0, len(prompt):].tolist()
    assert ours.tokens == ref
    pairs = list(zip(prompt + ours.tokens, (prompt + ours.tokens)[1:]))
    assert len(pairs) == len(set(pairs))
    (plain,) = generate(gpt, [prompt], SamplingParams(temperature=0, max_new_tokens=T, stop_token_ids=()))[0]
    plain_pairs = list(zip(prompt + plain.tokens, (prompt + plain.tokens)[1:]))
    assert len(plain_pairs) > len(set(plain_pairs)), "the plain greedy run should repeat a bigram"
    # score replays the user processor too
    torch.testing.assert_close(score(gpt, prompt, ours.tokens, params), torch.tensor(ours.logprobs), atol=1e-5,
                               rtol=0)


def test_user_processors_run_after_the_penalty_and_before_temperature(pair):
    gpt, _ = pair
    seen = []

    def spy(input_ids, scores):
        seen.append((input_ids.clone(), scores.clone()))
        return scores

    params = SamplingParams(max_new_tokens=2, temperature=0.5, repetition_penalty=2.0, seed=0, n=2, stop_token_ids=(),
                            logits_processors=[spy])
    out = generate(gpt, PROMPTS[:2], params)
    ids0, scores0 = seen[0]
    assert ids0.shape == (4, len(PROMPTS[0]))  # two prompts x two rollouts, left-padded to the longest
    assert ids0[2, -2:].tolist() == PROMPTS[1]
    logits = gpt(torch.tensor([PROMPTS[1]]))[0, -1]
    s = logits.clone()
    s[PROMPTS[1]] = torch.where(s[PROMPTS[1]] < 0, s[PROMPTS[1]] * 2, s[PROMPTS[1]] / 2)
    torch.testing.assert_close(scores0[2], s.detach(), atol=1e-5, rtol=0)  # penalised, not yet divided by T
    ids1, _ = seen[1]
    assert ids1[:, -1].tolist() == [r.tokens[0] for g in out for r in g]


def test_beam_records_sum_to_the_score_and_stop_strings_end_beams(pair):
    gpt, _ = pair
    enc = get_tokenizer()
    kw = dict(num_beams=4, max_new_tokens=10, num_return_sequences=4, length_penalty=1.0)
    plain = beam_search(gpt, PROMPTS[:2], stop_token_ids=(), **kw)
    for beams in plain:
        for b in beams:
            assert isinstance(b, Beam) and len(b.logprobs) == len(b.model_logprobs) == len(b.tokens)
            assert sum(b.logprobs) == pytest.approx(b.score * len(b.tokens), abs=1e-4)
            assert b.finish_reason == "length" and len(b.beam_indices) == len(b.tokens)
            # no penalty: the processed log-probs are the model's own, and score agrees
            assert b.logprobs == pytest.approx(b.model_logprobs, abs=1e-6)
            torch.testing.assert_close(score(gpt, PROMPTS[0] if beams is plain[0] else PROMPTS[1], b.tokens),
                                       torch.tensor(b.model_logprobs), atol=1e-5, rtol=0)
    text = enc.decode(plain[0][0].tokens)
    stop = text[len(text) // 2: len(text) // 2 + 2]
    assert stop.strip(), text
    cut = beam_search(gpt, PROMPTS[:2], stop_token_ids=(), stop=stop, **kw)
    ended = [b for beams in cut for b in beams if b.finish_reason == "stop"]
    assert ended, "the stop string should end some beams"
    for b in ended:
        text = enc.decode(b.tokens)
        assert stop in text and stop not in enc.decode(b.tokens[:-1])
    for b in (b for beams in cut for b in beams if b.finish_reason == "length"):
        assert stop not in enc.decode(b.tokens) and len(b.tokens) == 10


def test_beam_search_takes_params_or_keywords(pair):
    gpt, _ = pair
    a = beam_search(gpt, PROMPTS[:2], num_beams=3, max_new_tokens=6, repetition_penalty=1.2)
    b = beam_search(gpt, PROMPTS[:2], SamplingParams(max_new_tokens=6, repetition_penalty=1.2), num_beams=3)
    assert [[x.tokens for x in g] for g in a] == [[x.tokens for x in g] for g in b]
    with pytest.raises(ValueError, match="given both"):
        beam_search(gpt, PROMPTS[:1], SamplingParams(max_new_tokens=6), num_beams=2, max_new_tokens=7)
    with pytest.raises(ValueError, match="deterministic"):
        beam_search(gpt, PROMPTS[:1], SamplingParams(max_new_tokens=6, temperature=0.5), num_beams=2)


def test_decoding_takes_the_stop_token_from_the_model(tmp_path):
    """No hard-coded GPT-2 end-of-text: a model whose eos is 7 stops at 7 by default."""
    hf = make_hf_model(seed=1, vocab_size=48, n_positions=64, bos_token_id=7, eos_token_id=7)
    with torch.no_grad():
        w = hf.transformer.wte.weight[7]
        hf.transformer.ln_f.bias.add_(6.0 * w / w.norm() ** 2)
    hf.save_pretrained(tmp_path)
    gpt = GPT.from_pretrained(tmp_path).eval()
    out = generate(gpt, [[1, 2, 3]], SamplingParams(n=8, seed=0, max_new_tokens=20))[0]
    stopped = [r for r in out if r.finish_reason == "stop"]
    assert stopped and all(r.tokens[-1] == 7 for r in stopped)
    with pytest.raises(ValueError, match="pass tokenizer="):
        generate(gpt, [[1, 2, 3]], SamplingParams(max_new_tokens=4, stop="x"))


def test_no_decode_loop_outside_decoding():
    """sample.py, train.py, viz/, training/ and policy/ draw text only through decoding's engine: none of them
    calls the sampler, builds a KV cache or runs torch.multinomial."""
    pattern = re.compile(r"sample_from_logits\(|\.new_cache\(|torch\.multinomial\(|\bprefill\(|decode_one_token\(")
    files = [ROOT / "sample.py", ROOT / "train.py"] + [p for d in ("viz", "training", "policy")
                                                       for p in (ROOT / d).rglob("*.py")]
    offenders = [f"{p.relative_to(ROOT)}:{i + 1}" for p in files if p.exists()
                 for i, line in enumerate(p.read_text().splitlines()) if pattern.search(line)]
    assert not offenders, offenders


def test_score_in_chunks_equals_score_in_one_piece(pair, rollouts, monkeypatch):
    """Without gradients score runs the head a chunk of tokens at a time, with them the fused head does:
    chunk sizes change nothing (user processors take the plain autograd path: the same numbers)."""
    import sys

    mod = sys.modules["pigpt.decoding.score"]
    gpt, _ = pair
    prompts, rs = rollouts
    completions = [r.tokens for r in rs]
    spy = SamplingParams(**{**RL_PARAMS.__dict__, "logits_processors": [lambda ids, s: s]})
    whole = [score(gpt, prompts, completions, p) for p in (None, RL_PARAMS)]
    monkeypatch.setattr(mod, "CHUNK", 5)
    monkeypatch.setattr(mod, "GRAD_CHUNK", 3)
    for p, ref in zip((None, RL_PARAMS), whole):
        for got in (score(gpt, prompts, completions, p), score(gpt, prompts, completions, p, grad=True)):
            for a, b in zip(got, ref):
                torch.testing.assert_close(a.detach(), b, atol=1e-5, rtol=0)
    for a, b in zip(score(gpt, prompts, completions, spy, grad=True), whole[1]):
        torch.testing.assert_close(a.detach(), b, atol=1e-5, rtol=0)
