"""The batch-invariant mode (model/invariant.py): bit-for-bit equalities, checked with torch.equal, never a
tolerance. A rollout drawn alone is the same tokens and the same log-probs as inside batches of 2, 8 and 64 rows
(ragged prompts, shared prompts, rows finishing at different steps); score() of those completions, in any batch
and padding, with or without gradients, returns exactly the rollouts' log-probs; the model's logits agree across
the full-sequence forward, a left-padded prefill and decode steps from either cache. On random weights and on the
shipped model, with temperature, top-k, top-p and a repetition penalty set."""

import json

import pytest
import torch
from conftest import make_hf_model

from pigpt import sample
from pigpt.decoding import SamplingParams, generate, score
from pigpt.model import GPT, get_tokenizer
from pigpt.model.checkpoint import SHIPPED
from pigpt.model.invariant import InvariantError

PROMPTS = ["Which is the largest ocean?", "Can you give me some Python code?", "The sea", "def add(a, b):\n\t"]
PARAMS = dict(temperature=0.8, top_k=40, top_p=0.9, repetition_penalty=1.2, max_new_tokens=10)


@pytest.fixture(scope="module", params=["random", "shipped"])
def model(request, tmp_path_factory):
    PARAMS.pop("stop_token_ids", None)
    if request.param == "random":
        path = tmp_path_factory.mktemp("random")
        make_hf_model(seed=11).save_pretrained(path)
    else:
        path = SHIPPED["default"]
    gpt = GPT.from_pretrained(path, dtype=torch.float32, batch_invariant=True).eval()
    # stop at the model's own commonest tokens too (the shipped model's '.', say), so that rows finish and drop
    # out of the batch at different steps
    drawn = [t for g in generate(gpt, PROMPTS, SamplingParams(**PARAMS, n=4, seed=1)) for r in g for t in r.tokens]
    common = torch.bincount(torch.tensor(drawn)).topk(3).indices.tolist()
    PARAMS["stop_token_ids"] = tuple({50256, *common})
    return gpt


def same(a, b) -> bool:
    return a.tokens == b.tokens and torch.equal(torch.tensor(a.logprobs), torch.tensor(b.logprobs)) and torch.equal(
        torch.tensor(a.model_logprobs), torch.tensor(b.model_logprobs))


@pytest.fixture(scope="module")
def batch64(model):
    """64 rollouts: 16 of each of the 4 ragged prompts, in one call."""
    rollouts = [r for g in generate(model, PROMPTS, SamplingParams(**PARAMS, n=16, seed=100)) for r in g]
    lengths = {len(r.tokens) for r in rollouts}
    assert len(lengths) > 2, lengths  # rows did finish at different steps
    return rollouts


def test_a_rollout_is_the_same_bits_alone_and_in_batches_of_2_8_and_64(model, batch64):
    for i in (0, 5, 21, 38, 63):  # every prompt, first and later rollouts
        r = batch64[i]
        alone = generate(model, PROMPTS[i // 16], SamplingParams(**PARAMS, n=1, seed=r.seed))[0][0]
        assert same(alone, r), i
    eight = generate(model, PROMPTS[1], SamplingParams(**PARAMS, n=8, seed=batch64[16].seed))[0]
    assert all(same(a, b) for a, b in zip(eight, batch64[16:24]))
    # two rollouts of different prompts side by side: a ragged batch of 2, each with its own seed
    two = generate(model, [PROMPTS[3], PROMPTS[0]], SamplingParams(**PARAMS, n=1, seed=[batch64[50].seed,
                                                                                        batch64[7].seed]))
    assert same(two[0][0], batch64[50]) and same(two[1][0], batch64[7])


def test_score_returns_the_rollouts_log_probs_exactly_in_any_batch(model, batch64):
    params = SamplingParams(**PARAMS)
    prompts = [PROMPTS[i // 16] for i in range(64)]
    completions = [r.tokens for r in batch64]
    everything = score(model, prompts, completions, params)  # one right-padded forward of 64 rows
    assert all(torch.equal(s, torch.tensor(r.logprobs)) for s, r in zip(everything, batch64))
    mixed = [63, 2, 40, 17, 30, 9, 55, 1]  # eight rows of other widths beside each other
    some = score(model, [prompts[i] for i in mixed], [completions[i] for i in mixed], params)
    assert all(torch.equal(s, torch.tensor(batch64[i].logprobs)) for s, i in zip(some, mixed))
    alone = score(model, prompts[45], completions[45], params)
    assert torch.equal(alone, torch.tensor(batch64[45].logprobs))
    raw = score(model, [prompts[i] for i in mixed], [completions[i] for i in mixed])  # the raw model's
    assert all(torch.equal(s, torch.tensor(batch64[i].model_logprobs)) for s, i in zip(raw, mixed))
    # with gradients: the trainer's path (the fused head), the same bits
    with_grad = score(model, [prompts[i] for i in mixed], [completions[i] for i in mixed], params, grad=True)
    assert all(torch.equal(s.detach(), torch.tensor(batch64[i].logprobs)) for s, i in zip(with_grad, mixed))


def test_logits_agree_across_the_forward_a_padded_prefill_and_both_caches(model):
    enc = get_tokenizer()
    seqs = [enc.encode(p) for p in ("The largest ocean is the Pacific Ocean", "Hi", "def f(x):\n\treturn x + 1")]
    with torch.no_grad():
        alone = [model(torch.tensor([s]))[0] for s in seqs]  # (T, V) each, no cache
        # a left-padded prefill of all but the last 4 slots, then one token a step
        W = max(map(len, seqs))
        pad = [W - len(s) for s in seqs]
        idx = torch.tensor([[0] * p + s for p, s in zip(pad, seqs)])
        cache = model.new_cache(3, W, pad=pad)
        first = model(idx[:, :W - 4], cache)
        steps = [model(idx[:, t:t + 1], cache)[:, 0] for t in range(W - 4, W)]
        for b, s in enumerate(seqs):
            real = first[b, pad[b]:]
            assert torch.equal(real, alone[b][:real.shape[0]])
            for j, t in enumerate(range(W - 4, W)):
                if t >= pad[b]:  # a real token (a padding slot's output is never read)
                    assert torch.equal(steps[j][b], alone[b][t - pad[b]])
        # one prompt shared by 3 rows (SharedPrefixKVCache), each continued by the same tokens
        s = seqs[0]
        prefix = model.new_cache(1, len(s))
        model(torch.tensor([s[:5]]), prefix)
        shared = prefix.share(torch.zeros(3, dtype=torch.long))
        for t in range(5, len(s)):
            out = model(torch.tensor([[s[t]]] * 3), shared)[:, 0]
            assert all(torch.equal(out[r], alone[0][t]) for r in range(3))


def test_gradients_match_the_default_path(tmp_path):
    make_hf_model(seed=3).save_pretrained(tmp_path)
    grads = {}
    for on in (False, True):
        gpt = GPT.from_pretrained(tmp_path, batch_invariant=on)
        lp = score(gpt, ["The sea", "Which is"], [[262, 4171, 13], [262]], SamplingParams(**PARAMS), grad=True)
        torch.cat(lp).sum().backward()
        grads[on] = {n: p.grad for n, p in gpt.named_parameters()}
    for n, g in grads[False].items():
        torch.testing.assert_close(grads[True][n], g, rtol=1e-4, atol=1e-6, msg=n)


def test_the_mode_is_a_property_of_the_model_and_refuses_what_it_cannot_run(tmp_path):
    make_hf_model(seed=4).save_pretrained(tmp_path)
    gpt = GPT.from_pretrained(tmp_path)
    assert gpt.batch_invariant is False
    gpt.batch_invariant = True
    assert gpt.batch_invariant and all(b.invariant for b in gpt.transformer.h)
    with pytest.raises(InvariantError, match="set model.batch_invariant = False before quantize"):
        gpt.quantize("int8")
    gpt.to(torch.bfloat16)
    with pytest.raises(InvariantError, match="needs float32 weights; this model's are bfloat16"):
        gpt(torch.tensor([[1, 2]]))
    gpt.batch_invariant = False
    gpt(torch.tensor([[1, 2]]))  # off: bfloat16 runs as before
    with pytest.raises(InvariantError, match="needs float32 weights; this model's are bfloat16"):
        gpt.batch_invariant = True
    with pytest.raises(InvariantError, match="drop quantize="):
        GPT.from_pretrained(tmp_path, quantize="int8", batch_invariant=True)
    gpt = GPT.from_pretrained(tmp_path, batch_invariant=True)
    gpt.kv_dtype = torch.bfloat16  # a cache the invariant attention doesn't read
    with pytest.raises(InvariantError, match="reads a float32 KV cache: set model.kv_dtype = None"):
        gpt(torch.tensor([[1, 2]]), gpt.new_cache(1, 4))
    gpt.kv_dtype = None
    gpt(torch.tensor([[1, 2]]), gpt.new_cache(1, 4))


def test_pigpt_sample_batch_invariant(capsys):
    args = ["--batch-invariant", "-n", "3", "--seed", "7", "--max-new-tokens", "8", "--json", PROMPTS[0]]
    assert sample.main(args) == 0
    batch = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert sample.main(["--batch-invariant", "-n", "1", "--seed", "9", "--max-new-tokens", "8", "--json",
                        PROMPTS[0]]) == 0
    third = json.loads(capsys.readouterr().out.splitlines()[0])  # rollout 3 of seed 7 is seed 9's first
    assert batch[2] == {**third, "index": 2}
    assert sample.main(["--batch-invariant", "--dtype", "bfloat16", PROMPTS[0]]) == 2
    assert "--batch-invariant runs float32 weights: drop --dtype bfloat16" in capsys.readouterr().err


def test_every_build_of_the_kernels_gives_the_same_bits():
    """A product is one FMA chain per output whatever the vector width: the plain-C build (no vector intrinsics)
    and this CPU's widest one return the same bits, at 1 row and at many, with GELU in the epilogue; and a row's
    bits don't depend on the rows beside it."""
    from pigpt.model import invariant

    torch.manual_seed(0)
    x, w, b = torch.randn(37, 200), torch.randn(200, 333), torch.randn(333)
    out = {}
    for isa in ("plain", invariant.best_isa()):
        lib = invariant.load(isa)
        wp = invariant.panels(w, lib)
        out[isa] = [invariant._linear_fwd(x, wp, 333, b, act, lib) for act in (0, 1)]
        one = invariant._linear_fwd(x[5:6].contiguous(), wp, 333, b, 1, lib)
        assert torch.equal(one[0], out[isa][1][5])
    assert all(torch.equal(a, c) for a, c in zip(out["plain"], out[invariant.best_isa()]))
    torch.testing.assert_close(out["plain"][0], x @ w + b, rtol=1e-5, atol=1e-4)
