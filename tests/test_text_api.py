"""The public API takes text: generate, stream, beam_search and score accept prompts (and completions) as
strings, encoded in the model's text form, and hand completions back as Rollout.text / Beam.text; one
check of sampling settings answers the API and the command lines in the same words.

References are built by hand from the parts (GPT-2's tokenizer, model/textform.py), not through
pigpt.decoding.text, so a wrong encoding or decoding there shows up here."""

import io

import pytest
import torch
from conftest import make_hf_model

from pigpt import GPT, SamplingParams, beam_search, generate, score, stream
from pigpt import sample as sample_cli
from pigpt.decoding import encode_prompts
from pigpt.kernels import sample_from_logits
from pigpt.model import get_tokenizer
from pigpt.model.textform import TextForm
from pigpt.policy import combine_rewards, load_reward
from pigpt.policy.rollouts import collect
from pigpt.policy.trainer import RLConfig
from pigpt.policy.trainer import validate as validate_grpo
from pigpt.training.lm import TrainConfig
from pigpt.training.lm import validate as validate_lm
from pigpt.training.run import TrainError

CODE = "def add(a, b):\n    total = a + b\n    return"  # an indent: the "tabs" form changes it
QUESTION = "Which is the largest ocean?"
TAB = 197  # GPT-2's token for "\t"


@pytest.fixture(scope="module")
def gpt():
    model = GPT.from_pretrained("default").eval()
    assert model.text_form == "tabs"  # the shipped model: text forms matter
    return model


def by_hand(text: str) -> list[int]:
    """A prompt as the model reads it, from the parts: the tabs form, then GPT-2's BPE, specials allowed."""
    return get_tokenizer().encode(TextForm("tabs").to_model(text), allowed_special="all")


def read_back(tokens, stop_ids=(50256,)) -> str:
    """A completion as a person reads it, from the parts: no stop token, decoded, tabs back to spaces."""
    tokens = tokens[:-1] if tokens and tokens[-1] in stop_ids else tokens
    return TextForm("tabs").from_model(get_tokenizer().decode(tokens))


def test_text_is_encoded_in_the_models_text_form(gpt):
    ids = by_hand(CODE)
    assert TAB in ids and encode_prompts(gpt, CODE) == [ids] == encode_prompts(gpt, [CODE])
    assert encode_prompts(gpt, ["<|endoftext|>", [1, 2]]) == [[50256], [1, 2]]  # token ids pass through


def test_generate_and_stream_take_strings(gpt):
    params = SamplingParams(n=3, temperature=0.9, top_k=40, max_new_tokens=8, seed=7)
    want = generate(gpt, [by_hand(CODE), by_hand(QUESTION)], params)
    for prompts in ([CODE, QUESTION], [CODE, by_hand(QUESTION)]):  # text, or text beside token ids
        got = generate(gpt, prompts, params)
        assert [[r.tokens for r in g] for g in got] == [[r.tokens for r in g] for g in want]
        assert [[r.logprobs for r in g] for g in got] == [[r.logprobs for r in g] for g in want]
    one = generate(gpt, CODE, params)  # a single str is one prompt
    assert len(one) == 1 and [r.tokens for r in one[0]] == [r.tokens for r in want[0]]
    rows = [[] for _ in range(3)]
    for step in stream(gpt, CODE, params):
        for r, tok in zip(step.rows.tolist(), step.tokens.tolist()):
            rows[r].append(tok)
    assert rows == [r.tokens for r in want[0]]


def test_beam_search_and_score_take_strings(gpt):
    want = beam_search(gpt, [by_hand(CODE), by_hand(QUESTION)], num_beams=3, max_new_tokens=6, num_return_sequences=2)
    got = beam_search(gpt, [CODE, QUESTION], num_beams=3, max_new_tokens=6, num_return_sequences=2)
    assert [[(b.tokens, b.score) for b in g] for g in got] == [[(b.tokens, b.score) for b in g] for g in want]
    answer = " The Pacific\n    Ocean"
    ref = score(gpt, by_hand(QUESTION), by_hand(answer))
    assert torch.equal(score(gpt, QUESTION, answer), ref)
    assert torch.equal(score(gpt, QUESTION, by_hand(answer)), ref)
    batch = score(gpt, [QUESTION, CODE], [answer, " a + b"])  # one padded forward: compared with the same batch
    ref = score(gpt, [by_hand(QUESTION), by_hand(CODE)], [by_hand(answer), by_hand(" a + b")])
    assert all(torch.equal(a, b) for a, b in zip(batch, ref, strict=True))
    each = score(gpt, QUESTION, [answer, " Atlantic"])  # one prompt, several completions
    ref = score(gpt, [by_hand(QUESTION)] * 2, [by_hand(answer), by_hand(" Atlantic")])
    assert all(torch.equal(a, b) for a, b in zip(each, ref, strict=True))


def test_rollout_and_beam_text_are_the_decoded_completion(gpt):
    """Rollout.text / Beam.text: the completion without the stop token that ended it, tabs back to spaces."""
    greedy = SamplingParams(temperature=0, max_new_tokens=12, stop_token_ids=())
    free = generate(gpt, CODE, greedy)[0][0].tokens
    k = next(i for i in range(2, len(free)) if free[i] not in free[:i])
    stop = free[k]
    r = generate(gpt, CODE, SamplingParams(temperature=0, max_new_tokens=12, stop_token_ids=(stop,)))[0][0]
    assert r.finish_reason == "stop" and r.tokens == free[:k + 1]
    assert r.text == read_back(r.tokens, (stop,)) == read_back(free[:k])
    sampled = generate(gpt, [CODE, QUESTION, "def add(a, b):\n"], SamplingParams(n=4, seed=3, max_new_tokens=24))
    for rr in (x for g in sampled for x in g):
        assert rr.text == read_back(rr.tokens)
    indented = [x for x in sampled[2] if x.tokens[0] == TAB]  # the body of a function, as the model writes it
    assert indented and all(x.text.startswith("    ") for x in indented)
    beams = [b for n in (10, 1) for b in beam_search(gpt, CODE, num_beams=3, max_new_tokens=n, num_return_sequences=3,
                                                      stop_token_ids=(198,))[0]]
    assert {b.finish_reason for b in beams} == {"stop", "length"}  # both ways a beam ends, whatever the model
    for b in beams:
        assert b.text == read_back(b.tokens, (198,))
    for b in beam_search(gpt, QUESTION, num_beams=1, max_new_tokens=5)[0]:  # greedy search's path too
        assert b.text == read_back(b.tokens)


def test_stop_strings_are_matched_as_typed(gpt):
    """A stop string is typed as text is read ("\n    " for a new indented line) and matched in the model's
    form ("\n\t" to the "tabs" model); one already in the model's form means the same."""
    def run(stop):
        return generate(gpt, "def add(a, b):\n", SamplingParams(n=4, seed=3, max_new_tokens=24, stop=stop))[0]

    typed, model_form, none = run(("\n    ",)), run(("\n\t",)), run(())
    assert [r.tokens for r in typed] == [r.tokens for r in model_form]
    stopped = [r for r in typed if r.finish_reason == "stop" and r.tokens[-1] != 50256]  # not by <|endoftext|>
    for r in stopped:  # the last token completed the stop string, as the text reads
        assert "\n    " in r.text and "\n    " not in read_back(r.tokens[:-1])
    assert stopped
    assert any(r.tokens != r0.tokens for r, r0 in zip(typed, none))


def test_rl_rollouts_read_the_same_text(gpt):
    params = SamplingParams(n=4, seed=0, max_new_tokens=16)
    batch = collect(gpt, [CODE], params, combine_rewards([load_reward("python_compiles")]))
    assert [r.text for r in batch.rollouts] == [r.text for r in generate(gpt, CODE, params)[0]]
    assert [r.tokens for r in batch.rollouts] == [r.tokens for r in generate(gpt, [by_hand(CODE)], params)[0]]


@pytest.mark.parametrize("prompts, message", [
    (42, "prompts must be a str, or a non-empty list of prompts, each a str or a token-id list; got int 42"),
    (b"hi", "prompts must be a str, or a non-empty list of prompts, each a str or a token-id list; got bytes"),
    ([], "prompts must be a str, or a non-empty list of prompts, each a str or a token-id list; got an empty list"),
    ([1.5], "prompt 0 is float 1.5; prompts must be a str, or a non-empty list"),
    (["fine", None], "prompt 1 is NoneType None; prompts must be a str, or a non-empty list"),
    ([[1, "a"]], "prompt 0 holds 'a', not a token id in [0, 50257)"),
    ([5, 6], "prompts must be a list of token-id lists (or text), not one list of ints"),
    ("", "prompt 0 is empty"),
])
def test_a_bad_prompt_is_one_clear_error(gpt, prompts, message):
    for call in (lambda: generate(gpt, prompts, SamplingParams(max_new_tokens=2)),
                 lambda: stream(gpt, prompts, SamplingParams(max_new_tokens=2)),
                 lambda: beam_search(gpt, prompts, num_beams=2, max_new_tokens=2)):
        with pytest.raises(ValueError) as e:
            call()
        assert str(e.value).startswith(message) and "\n" not in str(e.value)


def test_a_bad_completion_is_one_clear_error(gpt):
    with pytest.raises(ValueError, match=r"^completion 1 is int 3; completions must each be a str or a token-id"):
        score(gpt, [QUESTION, QUESTION], [" Pacific", 3])
    with pytest.raises(ValueError, match=r"^completions must be a list with one completion \(a str or a token-id "
                                         r"list\) per prompt \(2\), got 1"):
        score(gpt, [QUESTION, CODE], " Pacific")


def test_text_needs_a_tokenizer_that_fits_the_model(tmp_path):
    """A model with another vocabulary: text needs tokenizer=; token ids work without one (Rollout.text None)."""
    make_hf_model(seed=1, vocab_size=48, n_positions=64, bos_token_id=7, eos_token_id=7).save_pretrained(tmp_path)
    small = GPT.from_pretrained(tmp_path).eval()
    params = SamplingParams(n=2, seed=0, max_new_tokens=5)
    with pytest.raises(ValueError, match=r"^text prompts need the model's tokenizer: its vocabulary has 48 tokens, "
                                         r"GPT-2's 50257; pass tokenizer="):
        generate(small, "abc", params)
    assert all(r.text is None for r in generate(small, [[1, 2, 3]], params)[0])

    class Letters:  # a toy tokenizer of the model's 48 ids
        def encode(self, text, allowed_special=()):
            return [ord(c) % 48 for c in text]

        def decode(self, ids):
            return "".join(chr(ord("0") + i) for i in ids)

    tok = Letters()
    got = generate(small, "abc", params, tokenizer=tok)[0]
    want = generate(small, [tok.encode("abc")], params)[0]
    assert [r.tokens for r in got] == [r.tokens for r in want]
    assert [r.text for r in got] == [tok.decode(r.tokens[:-1] if r.tokens[-1:] == [7] else r.tokens) for r in got]
    assert torch.equal(score(small, "abc", "de", tokenizer=tok), score(small, tok.encode("abc"), tok.encode("de")))


# -- one check of sampling settings, the same words everywhere ------------------------------------------------
SETTINGS = [  # (SamplingParams field, bad value, sample.py's argv for it)
    ("temperature", -1.0, ["--temperature", "-1"]),
    ("temperature", float("nan"), ["--temperature", "nan"]),
    ("top_k", -2, ["--top-k", "-2"]),
    ("top_p", 0.0, ["--top-p", "0"]),
    ("top_p", 1.5, ["--top-p", "1.5"]),
    ("repetition_penalty", 0.0, ["--repetition-penalty", "0"]),
    ("min_new_tokens", -1, ["--min-new-tokens", "-1"]),
    ("max_new_tokens", 0, ["--max-new-tokens", "0"]),
    ("n", 0, ["-n", "0"]),
    ("seed", -1, ["--seed", "-1"]),
    ("seed", 2**62, ["--seed", str(2**62)]),
    ("stop", "", ["--stop", ""]),
]
CLI_NAME = {"n": "-n/--num-rollouts"}


def api_error(field, value) -> str:
    with pytest.raises(ValueError) as e:
        SamplingParams(**{field: value})
    return str(e.value)


@pytest.mark.parametrize("field, value, argv", SETTINGS, ids=[f"{f}={v!r}" for f, v, _ in SETTINGS])
def test_one_check_of_sampling_settings_for_the_api_and_the_clis(field, value, argv):
    api = api_error(field, value)
    assert api.startswith(f"SamplingParams.{field} must ")

    def as_flag(name):  # the API's message, naming the setting by a command's flag
        return api.replace(f"SamplingParams.{field}", name)

    out, err = io.StringIO(), io.StringIO()  # pigpt-sample: checked before any model is loaded
    assert sample_cli.main([QUESTION, *argv], out=out, err=err) == 2
    assert err.getvalue() == f"sample.py: error: {as_flag(CLI_NAME.get(field, '--' + field.replace('_', '-')))}\n"
    assert out.getvalue() == ""

    if field in ("temperature", "top_k", "top_p", "seed"):  # the kernel's own check: the same rule and words
        with pytest.raises(ValueError) as e:
            sample_from_logits(torch.zeros(1, 5), **{field: value})
        assert str(e.value) == as_flag(field)

    lm_field = {"max_new_tokens": "sample_tokens"}.get(field, field)
    if lm_field in ("temperature", "top_k", "top_p", "seed", "sample_tokens"):  # pigpt-train's samples
        cfg = TrainConfig(min_lr=1e-4, lr_decay_steps=500, ckpt_interval=100, text_form="tabs", **{lm_field: value})
        with pytest.raises(TrainError) as e:
            validate_lm(cfg)
        assert str(e.value) == as_flag("--" + lm_field.replace("_", "-"))

    if field in ("top_k", "top_p", "repetition_penalty", "stop"):  # pigpt-train --reward (GRPO)
        cfg = RLConfig(prompts="p.txt", **{field: [value] if field == "stop" else value})
        with pytest.raises(TrainError) as e:
            validate_grpo(cfg)
        assert str(e.value) == as_flag("--" + field.replace("_", "-"))


def test_min_above_max_new_tokens_reads_the_same():
    api = str(pytest.raises(ValueError, SamplingParams, min_new_tokens=9, max_new_tokens=4).value)
    assert api == "SamplingParams.min_new_tokens (9) must be <= SamplingParams.max_new_tokens (4)"
    out, err = io.StringIO(), io.StringIO()
    assert sample_cli.main([QUESTION, "--min-new-tokens", "9", "--max-new-tokens", "4"], out=out, err=err) == 2
    assert err.getvalue() == "sample.py: error: --min-new-tokens (9) must be <= --max-new-tokens (4)\n"


def test_the_context_check_reads_the_same_from_the_api_and_the_cli(gpt):
    """One context check (decoding.prompts.check_prompts): the CLI names the prompt and its flag."""
    long = "word " * 40
    n = len(by_hand(long))
    with pytest.raises(ValueError) as e:
        generate(gpt, long, SamplingParams(max_new_tokens=250))
    block = gpt.config.block_size
    assert str(e.value) == (f"prompt 0 is {n} tokens and max_new_tokens is 250: {n + 250} exceeds the model's "
                            f"context of {block} tokens; use max_new_tokens {block - n} or a shorter prompt (keep "
                            f"its last {block - 250} tokens)")
    out, err = io.StringIO(), io.StringIO()
    assert sample_cli.main([long, "--max-new-tokens", "250"], out=out, err=err) == 2
    cli = str(e.value).replace("prompt 0", "the prompt").replace("max_new_tokens", "--max-new-tokens")
    assert err.getvalue() == f"sample.py: error: {cli}\n"
