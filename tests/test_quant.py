"""int8 weights (model/quant.py) and the CPU decode kernels (model/cpu_decode.py) under every decoding feature.

References: the float32 model itself (quality bounds), a float32 model holding the dequantized weights (what
int8 computes, to float rounding), each model's own plain-loop greedy decode, one-by-one runs against batched
ones, and the torch path (gpt.cpu_kernels = False) against the kernels."""

import copy

import pytest
import torch

from pigpt.decoding import SamplingParams, beam_search, generate
from pigpt.decoding.processors import apply_repetition_penalty
from pigpt.model import GPT, GPTConfig, cpu_decode, quant
from pigpt.model.gpt import Conv1D

KERNELS = cpu_decode.load() is not None
needs_kernels = pytest.mark.skipif(not KERNELS, reason=f"CPU decode kernels unavailable here: {cpu_decode.status()}")


def _gpt(seed=0, wte_scale=5.0, **cfg):
    """A random model; wte x5 as tests/conftest.py does, so that greedy choices have clear margins."""
    torch.manual_seed(seed)
    cfg = {**dict(n_layer=2, n_head=4, n_embd=64, vocab_size=500, block_size=64), **cfg}
    cfg.setdefault("eos_token_id", cfg["vocab_size"] - 1)
    gpt = GPT(GPTConfig(**cfg)).eval()
    with torch.no_grad():
        gpt.transformer.wte.weight.mul_(wte_scale)
        for name, p in gpt.named_parameters():
            if name.endswith("bias") and "ln" not in name:
                p.normal_(0, 0.02)  # nonzero biases, so that the kernels' bias path is checked too
    return gpt


def _dequantized(q: GPT) -> tuple[GPT, torch.Tensor]:
    """A float32 model computing exactly what int8 `q` means: its linears hold q * scale, and its wte the
    dequantized int8 copy (which the quantized model's embedding reads); and that copy as the head's weight
    [V, C]."""
    ref = GPT(q.config).eval()
    state = {k: v for k, v in q.state_dict().items() if "qweight" not in k and "qscale" not in k}
    for name, m in q.named_modules():
        if isinstance(m, Conv1D):
            state[name + ".weight"] = (m.qweight.float() * m.scales()[:, None]).t()
    head = q.lm_head_qweight.float() * q.lm_head_qscale.view(torch.float32)[:, None]
    state["transformer.wte.weight"] = head
    ref.load_state_dict({k: v.float() for k, v in state.items()})
    return ref, head


# -- the quantizer ------------------------------------------------------------------------------------------
def test_quantize_rows_rounds_each_channel_to_its_own_step():
    w = torch.randn(40, 96) * torch.rand(40, 1) * 3
    w[5] = 0
    q, s = quant.quantize_rows(w)
    assert q.dtype == torch.int8 and s.dtype == torch.float32 and q.shape == w.shape
    assert bool(((q.float() * s[:, None] - w).abs() <= s[:, None] / 2 + 1e-6).all())  # round to nearest
    assert bool((q[5] == 0).all()) and s[5] == 0  # an all-zero channel
    live = s > 0
    assert bool((q[live].abs().amax(1) == 127).all())  # each channel's largest weight uses the full range
    assert torch.equal(quant.scale_bits(s).view(torch.float32), s)


def test_one_work_buffer_serves_weights_of_every_shape_with_the_same_bits():
    """A load passes one `work` to every weight (quant.work_buffer): chunks of rows of each width, the last one
    short, and columns wider than the buffer's rows, all give what a buffer of the weight's own gives."""
    from pigpt.model.gpt import GPTConfig

    wide = (1 << 20) + 3  # an MLP wider than the buffer's usual 2^20 floats: a row at a time
    work = quant.work_buffer(GPTConfig(n_embd=64, n_inner=wide, n_layer=1, n_head=1), "cpu")
    gen = torch.Generator().manual_seed(0)
    for shape in [(3000, 768), (5, 3072), (3, wide), (40, 96)]:
        w = torch.randn(*shape, generator=gen)
        work.fill_(float("nan"))  # what the last weight left there must not leak into this one
        q, s = quant.quantize_rows(w, work=work)
        q0, s0 = quant.quantize_rows(w)
        assert torch.equal(q, q0) and torch.equal(s, s0), shape


def test_quantize_replaces_weights_and_keeps_scales_exact_under_to():
    gpt = _gpt()
    before = sum(p.numel() for p in gpt.parameters())
    assert gpt.quantize("int8") is gpt and gpt.quantized == "int8"
    conv = gpt.transformer.h[0].mlp.c_fc
    assert conv.weight is None and conv.qweight.dtype == torch.int8 and conv.qweight.shape == (256, 64)
    assert gpt.transformer.wte.weight.numel() == 0  # the embedding reads the int8 copy: no float wte is kept
    idx = torch.tensor([[0, 7, 499]])
    rows = gpt.lm_head_qweight[idx].float() * gpt.lm_head_qscale.view(torch.float32)[idx][..., None]
    assert torch.equal(gpt.embed(idx), rows) and gpt.embed(idx).dtype == torch.float32
    assert gpt.num_params(non_embedding=False) == before  # int8 weights count as parameters too
    scales = conv.scales().clone()
    gpt.to(torch.bfloat16)  # activations in bfloat16; the int8 weights and their float32 scales stay as they are
    assert conv.qweight.dtype == torch.int8 and torch.equal(conv.scales(), scales)
    assert gpt.embed(idx).dtype == torch.bfloat16 and torch.equal(gpt.embed(idx), rows.to(torch.bfloat16))
    assert gpt.dtype == torch.bfloat16 and gpt.quantize("int8") is gpt  # again: a no-op


def test_bad_modes_and_inference_only(tmp_path):
    gpt = _gpt()
    with pytest.raises(ValueError, match=r"unknown quantization mode 'int4'; use one of \['int8'\]"):
        gpt.quantize("int4")
    with pytest.raises(ValueError, match="unknown quantization mode"):
        GPT.from_pretrained(tmp_path / "not-even-read", quantize="fp8")  # refused before any loading
    gpt.quantize("int8")
    assert not any(p.requires_grad for p in gpt.parameters())
    with pytest.raises(ValueError, match="inference only"):
        gpt.train()
    gpt.eval()  # train(False) is fine
    idx = torch.randint(0, 500, (1, 5))
    gpt(idx)  # a plain call: nothing requires grad, so no graph and no error
    gpt.transformer.ln_f.weight.requires_grad_(True)
    with pytest.raises(ValueError, match="inference only, with no gradients"):
        gpt(idx)
    with pytest.raises(ValueError, match="can't be saved as a Hugging Face checkpoint"):
        gpt.save_pretrained(tmp_path)


def test_from_pretrained_quantize(tiny_checkpoint):
    path, _ = tiny_checkpoint
    gpt = GPT.from_pretrained(path, quantize="int8")
    assert gpt.quantized == "int8" and not gpt.training
    ref = GPT.from_pretrained(path).quantize("int8")
    idx = torch.randint(0, 50257, (2, 9))
    with torch.no_grad():
        assert torch.equal(gpt(idx), ref(idx))


# -- what int8 computes, and how far that is from float32 -----------------------------------------------------
def q8_blocks(K: int) -> torch.Tensor:
    """The positions of a row of K (padded to Kq, a multiple of 32) in the order of quantize_rows' blocks
    (csrc/decode.c), 32 a block: the row cut into groups of 512 while they last, then 256, 128, 64, 32; a group of g
    steps of 64 (16 lanes of 4 positions each) has 2g blocks of 8 / g whole lanes, across all g steps."""
    Kq, order, k = -(-K // 32) * 32, [], 0
    while k < Kq:
        G = next(g for g in (512, 256, 128, 64, 32) if Kq - k >= g)
        steps = max(1, G // 64)
        per = 8 // steps  # lanes a block
        for b in range(G // 32):
            order += [k + 64 * s + 4 * lane + i for lane in range(b * per, (b + 1) * per) for s in range(steps)
                      for i in range(4)]
        k += G
    return torch.tensor(order)


def fake_q8(x: torch.Tensor) -> torch.Tensor:
    """x as the int8 kernels' integer path sees it (csrc/decode.c: quantize_rows): per block of 32 (q8_blocks), d =
    max |x| / 127 and q = round-half-even(x * (1 / d)), in float32, as llama.cpp's q8_0 per block; returns q * d.
    Then (q * d) @ (qw * s) is what the integer dot products compute, to float rounding."""
    K = x.shape[-1]
    order = q8_blocks(K)
    xp = torch.nn.functional.pad(x.float(), (0, -K % 32))[..., order].unflatten(-1, (-1, 32))
    d = xp.abs().amax(-1, keepdim=True) / 127.0
    inv = torch.where(d != 0, 1.0 / d, torch.zeros_like(d))
    out = torch.empty_like(xp.flatten(-2))
    out[..., order] = (torch.round(xp * inv) * d).flatten(-2)
    return out[..., :K]


def test_fake_q8_is_q8_0_below_128():
    x = torch.tensor([[0.0] * 31 + [12.7] + [-1.0, 0.05, 0.15] + [0.0] * 29])  # K = 64: two blocks
    got = fake_q8(x)
    assert got[0, 31] == 12.7 and got[0, 0] == 0  # the block's largest maps to 127 steps of 0.1 exactly
    d = 1.0 / 127
    assert torch.allclose(got[0, 32:35], torch.tensor([-1.0, round(0.05 / d) * d, round(0.15 / d) * d]))
    assert torch.equal(fake_q8(torch.zeros(2, 40)), torch.zeros(2, 40))  # an all-zero block: d = 0, no NaN


def test_q8_blocks_are_32_positions_a_lane_apart_in_groups_of_512():
    order = q8_blocks(768)  # a group of 512, then one of 256
    assert sorted(order.tolist()) == list(range(768))
    first = order[:32].tolist()  # lane 0 of each of the 8 steps of 64
    assert first == [64 * s + i for s in range(8) for i in range(4)]
    assert order[512:544].tolist() == [512 + 64 * s + 4 * lane + i for lane in (0, 1) for s in range(4) for i in range(4)]
    assert torch.equal(q8_blocks(96), torch.arange(96))  # groups of 64 and 32: q8_0's contiguous blocks
    x = torch.zeros(1, 768)
    x[0, 4] = 100.0  # lane 1 of the first step: only its block's scale grows
    got = fake_q8(x + torch.linspace(-1, 1, 768))
    ref = x + torch.linspace(-1, 1, 768)
    assert (got - ref)[0, 64 * torch.arange(8)].abs().max() <= 0.5 / 127 * 1.0 + 1e-6  # lane 0: small d
    assert (got - ref)[0, 4 + 64 * torch.arange(1, 8)].abs().max() > 0.01  # lane 1: d = 100 / 127


@pytest.mark.parametrize("path", ["kernels-dots", "kernels-dots-avx2", "kernels-float", "torch"])
def test_int8_model_is_the_float_model_with_dequantized_weights(path, monkeypatch, request):
    """Decode steps (and the full forward) of the int8 model against a float32 model holding q * scale, whose
    linear inputs (and the head's) are what the path multiplies: equal to float rounding (1e-4) in the kernels,
    whose integer dot products take activations quantized per block of 32 (`fake_q8` on the reference) or, with
    INT8_DOTS off, float32 activations (the reference as is); to bfloat16 rounding of the activations on torch's
    int8 path. The kernels decode one token at a time from the start, so that no torch-path prefill feeds them."""
    kernels = path != "torch"
    if kernels and not KERNELS:
        pytest.skip(cpu_decode.status())
    monkeypatch.setattr(cpu_decode, "INT8_DOTS", path.startswith("kernels-dots"))
    if kernels:  # kernels-dots: VNNI's tiles where the CPU has them; kernels-dots-avx2: the AVX2 tiles everywhere
        request.addfinalizer(lambda vnni=cpu_decode.int8_vnni(): cpu_decode.int8_vnni(vnni))
        cpu_decode.int8_vnni(path != "kernels-dots-avx2")
    path = "kernels-dots" if path == "kernels-dots-avx2" else path
    q = _gpt(seed=3).quantize("int8")
    q.cpu_kernels = kernels
    q.kv_dtype = torch.float32  # keys and values as computed: this test is about the products (kv_dtype's: below)
    ref, head = _dequantized(q)
    tol = 1e-4 if kernels else 0.15
    idx = torch.randint(0, 500, (3, 20), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        want = ref.hidden(idx) @ head.t()  # (3, 20, V)
        full = q(idx)  # 60 rows: the integer path with VNNI or without oneDNN bfloat16, else oneDNN on a blocked copy
        assert (full - want).abs().max() <= 0.15
        q.packed_weights = False  # no copies: each product dequantizes
        assert (q(idx) - want).abs().max() <= 0.15 and (q(idx) - full).abs().max() <= 0.05
        q.packed_weights = True
        cache = q.new_cache(3, 20, pad=[0, 4, 9])
        rows = [idx[0], idx[1, 4:], idx[2, 9:]]  # a ragged batch, left-padded
        start = 0 if kernels else 12
        if start:
            q(idx[:, :start], cache)
        steps = torch.cat([q(idx[:, t:t + 1], cache) for t in range(start, 20)], 1)[:, -8:]  # (3, 8, V)
        if path == "kernels-dots":  # the reference's products take what the integer path takes
            for m in ref.modules():
                if isinstance(m, Conv1D):
                    m.register_forward_pre_hook(lambda m, args: (fake_q8(args[0]), *args[1:]))
        for b, row in enumerate(rows):
            h = ref.hidden(row[None])
            alone = (fake_q8(h) if path == "kernels-dots" else h) @ head.t()
            assert (steps[b] - alone[0, -8:]).abs().max() <= tol
        if path == "kernels-dots":  # a forward of up to DEQUANT_ROWS rows runs on the integer path too, on every CPU
            # (above that, oneDNN's bfloat16 GEMM where the CPU has one, except with VNNI: quant.linear)
            one = idx[:1, :quant.DEQUANT_ROWS]
            assert (q(one) - fake_q8(ref.hidden(one)) @ head.t()).abs().max() <= tol
            if cpu_decode.int8_vnni():  # every row count, no bfloat16 copies: the 60-row forward too
                assert (full - fake_q8(ref.hidden(idx)) @ head.t()).abs().max() <= tol
        if path == "kernels-dots":  # activations really were quantized
            assert (steps[0] - want[0, -8:]).abs().max() > 1e-3


@pytest.mark.parametrize("kernels", [True, False], ids=["kernels", "torch"])
def test_an_int8_model_keeps_its_kv_cache_in_bfloat16(kernels):
    """GPT.kv_dtype: bfloat16 by default for an int8 model (float ones: their own dtype), float32 on request. A
    prompt and 8 decode steps, through the kernels and through torch's path (which attends over a prompt in
    float32 and over a step's keys in bfloat16), against the same path with a float32 cache: moved by the keys'
    and values' rounding only (max 0.03 here), and really moved."""
    if kernels and not KERNELS:
        pytest.skip(cpu_decode.status())
    q = _gpt(seed=3).quantize("int8")
    assert q.kv_dtype == torch.bfloat16 and q.new_cache(2, 8).k.dtype == torch.bfloat16
    assert _gpt(seed=3).kv_dtype == torch.float32 and _gpt(seed=3).to(torch.bfloat16).kv_dtype == torch.bfloat16
    with pytest.raises(ValueError, match="kv_dtype torch.float16"):
        q.kv_dtype = torch.float16
    q.cpu_kernels = kernels
    idx = torch.randint(0, 500, (3, 20), generator=torch.Generator().manual_seed(0))

    def logits(kv):
        q.kv_dtype = kv
        cache = q.new_cache(3, 20, pad=[0, 4, 9])
        assert cache.k.dtype == kv
        with torch.no_grad():
            return torch.cat([q(idx[:, :12], cache)] + [q(idx[:, t:t + 1], cache) for t in range(12, 20)], 1)

    d = (logits(torch.bfloat16) - logits(torch.float32)).abs()
    assert 1e-3 < d[:, :12].max() <= 0.1  # the prompt, over its keys as stored
    assert 1e-3 < d[:, 12:].max() <= 0.1  # the steps


@pytest.fixture(params=["vnni", "avx2"])
def int8_tiles(request):
    """The integer tiles an int8 product runs on: AVX-512 VNNI's (where the CPU has avx512_vnni) or the AVX2 ones
    (every x86 CPU with the kernels; on a VNNI CPU, by turning VNNI off)."""
    if cpu_decode.load() is None:
        pytest.skip(cpu_decode.status())
    before = cpu_decode.int8_vnni()
    if cpu_decode.int8_vnni(request.param == "vnni") != (request.param == "vnni"):
        pytest.skip("this CPU has no avx512_vnni (or runs the AVX2 build): the AVX2 tiles are tested")
    yield request.param
    cpu_decode.int8_vnni(before)


@needs_kernels
@pytest.mark.parametrize("K,N", [(768, 600), (100, 77), (31, 5), (64, 300), (33, 17), (96, 9)])
def test_integer_dot_products_against_their_float_mirror(K, N, int8_tiles):
    """One int8 product (the LM head's entry point) on the integer path at every row count 1-8 (each tile shape
    and its tails: K not a multiple of 32 or of 64, N not of the row group), on either tile set, against float64
    sums of the quantized activations times the dequantized weights (fake_q8): 1e-6 relative, and each of 3 rows
    alone the same bits as beside the others. Outlier channels
    (x20) make each block's scale differ. Against float32 activations the products differ by ~0.5% of their
    largest: the cost of quantizing activations, which model/quant.py states on real text."""
    import ctypes

    gen = torch.Generator().manual_seed(K * N)
    qw, s = quant.quantize_rows(torch.randn(N, K, generator=gen))
    lin = cpu_decode.Linear(qw.data_ptr(), s.data_ptr(), None, K, N, cpu_decode.I8, cpu_decode.NK_Q8, 0)
    for M in range(1, 9):
        x = torch.randn(M, K, generator=gen) * 3
        x[:, torch.randperm(K, generator=gen)[: max(1, K // 20)]] *= 20
        out = torch.full((M, N), float("nan"))
        xb = torch.empty(M * (K + 64), dtype=torch.bfloat16)
        cpu_decode.load().pigpt_linear(ctypes.byref(lin), cpu_decode.F32, x.data_ptr(), M, out.data_ptr(), 2,
                                       xb.data_ptr(), 0)
        w = qw.double() * s.double()[:, None]
        mirror = fake_q8(x).double() @ w.t()
        assert (out - mirror).abs().max() <= 1e-6 * mirror.abs().max(), (M, K, N)
        assert (out - x.double() @ w.t()).abs().max() <= 0.03 * mirror.abs().max()
        if M == 3:  # one row's tile reads W row after row, the others side by side: the same sums, the same bits
            for i in range(M):
                alone = torch.full((1, N), float("nan"))
                cpu_decode.load().pigpt_linear(ctypes.byref(lin), cpu_decode.F32, x[i:i + 1].contiguous().data_ptr(),
                                               1, alone.data_ptr(), 2, xb.data_ptr(), 0)
                assert torch.equal(alone[0], out[i]), (i, K, N)


def _gpt2_small(seed=0):
    torch.manual_seed(seed)
    gpt = GPT(GPTConfig()).eval()  # GPT-2 small: 12 x 768, vocab 50257
    with torch.no_grad():
        gpt.transformer.wte.weight.mul_(5)  # conftest's scaling: peaked, model-like distributions
    return gpt


def _heavy_tailed(seed=0):
    """Weights shaped like trained ones rather than Gaussian: heavy tails (a Gaussian scale mixture), 1% of
    input features with 4x larger weights (the outlier features of trained transformers, the hard case
    for per-output-channel scales), and moderately peaked distributions (wte x2.5). GPT-2 small's width."""
    torch.manual_seed(seed)
    gpt = GPT(GPTConfig(n_layer=4)).eval()
    with torch.no_grad():
        for name, p in gpt.named_parameters():
            if p.dim() == 2 and "wpe" not in name:
                p.mul_(torch.randn_like(p).mul_(0.6).exp_())
                if "wte" not in name:
                    p[torch.randperm(p.shape[0])[: p.shape[0] // 100]] *= 4
        gpt.transformer.wte.weight.mul_(2.5)
    return gpt


# Measured here (2 x 24 random tokens: an 8-token prefill, then 16 decode steps; real text: model/quant.py):
# GPT-2 small random: max |d log-prob| 0.385 over every position and token, mean KL 6e-6, top-1 equal
# everywhere; heavy-tailed: max 0.85, mean KL 0.009 nats, top-1 equal at 88% of positions (flat distributions).
@pytest.mark.parametrize("make,max_dlogp,max_kl,top1", [(_gpt2_small, 0.6, 1e-3, 1.0), (_heavy_tailed, 1.2, 0.015, 0.8)],
                         ids=["gpt2-small-random", "heavy-tailed"])
def test_int8_tracks_float32(make, max_dlogp, max_kl, top1):
    gpt = make()
    q = copy.deepcopy(gpt).quantize("int8")
    idx = torch.randint(0, 50257, (2, 24), generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        ref = gpt(idx).log_softmax(-1)
        cache = q.new_cache(2, 24)
        steps = [q(idx[:, :8], cache)] + [q(idx[:, t:t + 1], cache) for t in range(8, 24)]  # prefill, decode
        got = torch.cat(steps, 1).float().log_softmax(-1)
    d = (got - ref).abs()
    kl = (ref.exp() * (ref - got)).sum(-1)
    assert d.max() <= max_dlogp
    assert kl.mean() <= max_kl
    assert (got.argmax(-1) == ref.argmax(-1)).float().mean() >= top1
    assert d.max() > 1e-3  # the int8 model really ran (not the float weights)


# -- decoding features in int8 and bfloat16, through the kernels and through torch's path ---------------------
@pytest.fixture(params=[("int8", True), ("int8", False), ("bfloat16", True), ("bfloat16", False)],
                ids=["int8-kernels", "int8-torch", "bf16-kernels", "bf16-torch"])
def low(request, monkeypatch):
    """(model, calls): a small model in int8 or bfloat16 with the kernels on or off; calls counts the kernels'
    decode steps, so that a test can check the path it meant to test really ran."""
    mode, kernels = request.param
    if kernels and not KERNELS:
        pytest.skip(cpu_decode.status())
    gpt = _gpt(seed=7, vocab_size=300)
    gpt = gpt.quantize("int8") if mode == "int8" else gpt.to(torch.bfloat16)
    gpt.cpu_kernels = kernels
    calls = []
    decode = cpu_decode.decode
    monkeypatch.setattr(cpu_decode, "decode", lambda *a: calls.append(a[1].shape[0]) or decode(*a))
    return gpt, calls


PROMPTS = [[5, 17, 250, 3], [42], [7, 7, 9, 100, 11, 12]]


def _plain_greedy(gpt, prompt, n, penalty=1.0):
    """Greedy decoding the plain way: the whole sequence through the model at every step, no cache."""
    seq = list(prompt)
    with torch.no_grad():
        for _ in range(n):
            logits = gpt(torch.tensor([seq]))[:, -1].float()
            if penalty != 1.0:
                logits = apply_repetition_penalty(logits, torch.tensor([seq]), penalty)
            seq.append(int(logits.argmax()))
    return seq[len(prompt):]


def test_greedy_and_repetition_penalty_match_the_plain_loop(low):
    gpt, calls = low
    for penalty in (1.0, 1.5):
        params = SamplingParams(temperature=0.0, max_new_tokens=10, repetition_penalty=penalty, stop_token_ids=())
        for p in PROMPTS:
            assert generate(gpt, [p], params)[0][0].tokens == _plain_greedy(gpt, p, 10, penalty)
    assert bool(calls) == gpt.cpu_kernels


def test_rollouts_and_ragged_batches_equal_one_by_one_runs(low):
    """n > 1 rollouts share their prompt's KV (SharedPrefixKVCache); a ragged batch is left-padded. Each
    row must be what it would be alone (within the kernels' row limit, so both runs take the same path)."""
    gpt, calls = low
    rows = cpu_decode.MAX_ROWS["int8" if gpt.quantized else "bfloat16"]
    if not (gpt.cpu_kernels or gpt.quantized):
        rows = 2  # torch's bfloat16 products (oneDNN) round 4 rows differently from 1: sampled tokens drift
    n = 2
    prompts = PROMPTS[: rows // n]  # kernels: int8 3 prompts x 2 = 6 rows, bfloat16 2 prompts x 2
    params = SamplingParams(temperature=0.9, top_k=40, max_new_tokens=8, n=n, seed=11)
    together = generate(gpt, prompts, params)
    for p, group in zip(prompts, together):
        for r in group:
            alone = generate(gpt, [p], SamplingParams(temperature=0.9, top_k=40, max_new_tokens=8, seed=r.seed))
            assert r.tokens == alone[0][0].tokens
            # the prefill (torch's path, bfloat16 activations in both modes) of a padded batch rounds a little
            # differently from a lone prompt's: log-probs agree to bfloat16 rounding
            assert r.logprobs == pytest.approx(alone[0][0].logprobs, abs=0.05)
    ragged = generate(gpt, PROMPTS[:2], SamplingParams(temperature=0.0, max_new_tokens=8, stop_token_ids=()))
    for p, group in zip(PROMPTS[:2], ragged):
        assert group[0].tokens == _plain_greedy(gpt, p, 8)
    assert bool(calls) == gpt.cpu_kernels
    assert not calls or max(calls) == n * len(prompts)  # the batched steps ran in the kernels, all rows at once


def test_beam_search_batched_equals_alone(low):
    """Two prompts x 2 beams (a ragged batch of 4 rows) against each prompt alone (2 rows): same beams; scores
    equal in int8, and to bfloat16 rounding in bfloat16, where the prefill of a padded batch (torch's path,
    bfloat16 activations) rounds a little differently from a lone prompt's."""
    gpt, calls = low
    together = beam_search(gpt, PROMPTS[:2], num_beams=2, max_new_tokens=6, num_return_sequences=2)
    assert cpu_decode.MAX_ROWS["int8" if gpt.quantized else "bfloat16"] >= 4  # batched and alone: one path
    for p, beams in zip(PROMPTS[:2], together):
        alone = beam_search(gpt, [p], num_beams=2, max_new_tokens=6, num_return_sequences=2)[0]
        assert [b.tokens for b in beams] == [b.tokens for b in alone]
        assert [b.score for b in beams] == pytest.approx([b.score for b in alone], abs=1e-4 if gpt.quantized else 0.05)
    assert bool(calls) == gpt.cpu_kernels


@needs_kernels
@pytest.mark.parametrize("mode", ["float32", "bfloat16", "int8"])
def test_kernels_give_the_torch_paths_tokens(mode, monkeypatch):
    """The same model, kernels on and off: greedy tokens, beams, and (float32, where both paths compute in
    float32) sampled rollouts are the same."""
    gpt = _gpt(seed=9, vocab_size=300)
    gpt = gpt.quantize("int8") if mode == "int8" else gpt.to(getattr(torch, mode))
    calls = []
    decode = cpu_decode.decode
    monkeypatch.setattr(cpu_decode, "decode", lambda *a: calls.append(a[1].shape[0]) or decode(*a))
    runs = {}
    for kernels in (True, False):
        gpt.cpu_kernels = kernels
        greedy = [generate(gpt, [p], SamplingParams(temperature=0.0, max_new_tokens=12, stop_token_ids=()))[0][0].tokens
                  for p in PROMPTS]
        beams = beam_search(gpt, PROMPTS[:1], num_beams=2, max_new_tokens=8, num_return_sequences=2)
        sampled = generate(gpt, PROMPTS[:1], SamplingParams(temperature=1.0, max_new_tokens=12, seed=5))
        runs[kernels] = (greedy, [b.tokens for b in beams[0]], sampled[0][0].tokens)
        assert bool(calls) == kernels
        calls.clear()
    assert runs[True][:2] == runs[False][:2]
    if mode == "float32":
        assert runs[True][2] == runs[False][2]
