"""The Triton sampling kernel against the torch path: same tokens, log-probs within 1e-5.

Without CUDA the kernel runs on CPU tensors under TRITON_INTERPRET=1 (tests/conftest.py sets it), so shapes
stay small, with one realistic V = 50257 case; on a CUDA machine the same tests compile the kernel and run it
on the GPU, against the torch path on the CPU (the path users run there, and the reference). Each call puts
a whole parameter grid in one batch, one row per setting.
"""

import itertools

import pytest
import torch

from pigpt.kernels import sample_from_logits
from pigpt.kernels.interpreter import ENV, choose_interpreter, interpreting

# where the kernel runs: the GPU, unless the interpreter is on (no CUDA, or the user asked for it)
DEVICE = "cpu" if interpreting() else "cuda"

NEG_INF = float("-inf")
# log-probs: 1e-5 absolute, and 1e-5 relative for the large ones (a GPU's exp / log and its summation order
# differ from the CPU's by a few ulps; a -10.7 log-prob over 128K tokens differed by 2.2e-5 on an H200)
LP_RTOL = 1e-5
TEMPS = (1e-3, 1.0, 100.0)  # tiny, neutral, huge
TOPKS = (0, 1, 50, 10**6)  # off, greedy-like, typical, >= V
TOPPS = (1e-6, 0.9, 1.0)  # tiny, typical, off


def grid_params(reps=1):
    rows = list(itertools.product(TEMPS, TOPKS, TOPPS)) * reps + [(0.0, 50, 0.9), (0.0, 0, 1.0)]  # + greedy
    T, k, p = (torch.tensor(c) for c in zip(*rows))
    B = len(rows)
    return dict(temperature=T.float(), top_k=k.long(), top_p=p.float(),
                seed=torch.arange(B) * 7919 + 3, position=torch.arange(B) + 17)


def grid_logits(B, V, seed, dtype):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(B, V, generator=g) * torch.linspace(0.5, 4.0, B)[:, None]  # flat to peaked rows
    if V > 10:
        x[::3, ::5] = NEG_INF  # masked tokens
        x[1::3, : V // 4] = x[1::3, : V // 4].round()  # blocks of exact ties
    return x.to(dtype)


def on_device(kw):
    return {n: v.to(DEVICE) if isinstance(v, torch.Tensor) else v for n, v in kw.items()}


def triton_sample(x, **kw):
    """The kernel on DEVICE, its results back on the CPU."""
    tok, lp = sample_from_logits(x.to(DEVICE), backend="triton", **on_device(kw))
    return tok.cpu(), lp.cpu()


def assert_same(x, **kw):
    a_tok, a_lp = sample_from_logits(x, backend="torch", **kw)
    b_tok, b_lp = triton_sample(x, **kw)
    assert b_tok.dtype == torch.int64 and b_lp.dtype == torch.float32
    bad = (a_tok != b_tok).nonzero()[:, 0].tolist()
    assert not bad, f"rows {bad}: torch {a_tok[bad].tolist()} triton {b_tok[bad].tolist()}"
    torch.testing.assert_close(b_lp, a_lp, rtol=LP_RTOL, atol=1e-5)
    return a_tok, a_lp


@pytest.mark.parametrize("V,dtype", [(7, torch.float32), (300, torch.float32), (300, torch.bfloat16),
                                     (1000, torch.float16), (1000, torch.float32)])
def test_triton_matches_torch_over_the_parameter_grid(V, dtype):
    prm = grid_params()
    assert_same(grid_logits(len(prm["seed"]), V, V, dtype), **prm)


def test_triton_matches_torch_with_scalar_params_batch_sizes_and_small_blocks():
    x = grid_logits(64, 257, 1, torch.float32)
    for B, kw in ((1, dict(top_k=50, top_p=0.9)), (8, dict(top_p=0.5, temperature=0.7))):
        assert_same(x[:B], **kw)
    assert_same(x[:, :40], top_k=3, seed=5)  # B = 64
    # several tiles per row: the streaming passes and the bisection across tile boundaries
    from pigpt.kernels.sampling_triton import sample_triton
    from pigpt.kernels.params import normalize_params

    prm = {n: v[::2] for n, v in grid_params().items()}
    x = grid_logits(len(prm["seed"]), 200, 2, torch.float32)
    xd, prm_d = x.to(DEVICE), on_device(prm)
    T, k, p, s, pos = normalize_params(xd, prm_d["temperature"], prm_d["top_k"], prm_d["top_p"], prm_d["seed"],
                                       prm_d["position"])
    tok, lp = (t.cpu() for t in sample_triton(xd, T, k, p, s, pos, block=64))  # 4 tiles per row
    ref_tok, ref_lp = sample_from_logits(x, backend="torch", **prm)
    assert torch.equal(tok, ref_tok)
    torch.testing.assert_close(lp, ref_lp, rtol=LP_RTOL, atol=1e-5)


def test_triton_realistic_vocabulary():
    g = torch.Generator().manual_seed(3)
    x = torch.randn(2, 50257, generator=g) * 3
    assert_same(x, top_k=torch.tensor([50, 0]), top_p=0.9, temperature=torch.tensor([1.0, 0.8]),
                seed=torch.tensor([1, 2]))
    assert_same(x, typical_p=torch.tensor([0.9, 0.3]), epsilon_cutoff=torch.tensor([0.0, 1e-5]),
                seed=torch.tensor([3, 4]))


def test_triton_rows_are_batch_invariant():
    prm = grid_params()
    B = len(prm["seed"])
    x = grid_logits(B, 100, 4, torch.float32)
    tok, lp = triton_sample(x, **prm)
    perm = torch.randperm(B, generator=torch.Generator().manual_seed(0))
    t2, l2 = triton_sample(x[perm], **{n: v[perm] for n, v in prm.items()})
    assert torch.equal(t2, tok[perm]) and torch.equal(l2, lp[perm])


def test_triton_marks_nan_and_inf_rows_without_a_host_sync():
    x = grid_logits(4, 50, 5, torch.float32)
    x[1, 3] = float("nan")
    x[2, 7] = float("inf")
    tok, lp = triton_sample(x, top_p=0.9, seed=1)
    assert tok[1] == -1 and tok[2] == -1 and lp[1:3].isnan().all()
    ref = sample_from_logits(x[[0, 3]], backend="torch", top_p=0.9, seed=1)
    assert torch.equal(tok[[0, 3]], ref[0])


COMPILE_FOR_SM90 = """
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource
import triton
from pigpt.kernels.sampling_triton import GROUP, GROUP_BIT, NUM_PIVOTS, _sample_kernel

sig = {"x_ptr": "*bf16", "stride": "i32", "T_ptr": "*fp32", "k_ptr": "*i32", "p_ptr": "*fp32",
       "lmp_ptr": "*fp32", "typ_ptr": "*fp32", "eps_ptr": "*fp32", "eta_ptr": "*fp32", "seed_ptr": "*i64", "pos_ptr": "*i64", "tok_ptr": "*i64", "lp_ptr": "*fp32", "V": "i32",
       "BLOCK": "constexpr", "BLOCK_B": "constexpr", "NP": "constexpr", "GROUP": "constexpr", "GROUP_BIT": "constexpr"}
src = ASTSource(fn=_sample_kernel, signature=sig,
                constexprs={"BLOCK": 1024, "BLOCK_B": 256, "NP": NUM_PIVOTS, "GROUP": GROUP, "GROUP_BIT": GROUP_BIT})
compiled = triton.compile(src, target=GPUTarget("cuda", 90, 32), options={"num_warps": 8})
assert "div.rn.f32" in compiled.asm["ptx"], "temperature scaling must be IEEE division, as torch's"
assert compiled.asm["cubin"]
print("compiled", compiled.metadata.shared)
"""


def test_triton_kernel_compiles_for_nvidia_gpus():
    """No GPU here: build a cubin for sm_90 (bf16 logits) with triton's bundled ptxas, outside the
    interpreter (hence a subprocess), to show the kernel compiles, not just interprets."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["TRITON_DEFAULT_FP_FUSION"] = "1"
    root = Path(__file__).resolve().parents[1]
    env["PYTHONPATH"] = os.pathsep.join([str(root), env.get("PYTHONPATH", "")])
    r = subprocess.run([sys.executable, "-c", COMPILE_FOR_SM90], env=env, cwd=root, capture_output=True,
                       text=True, timeout=300)
    assert r.returncode == 0 and "compiled" in r.stdout, r.stderr[-3000:]


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_triton_on_cuda_matches_torch_on_cpu():
    prm = grid_params(reps=3)
    B = len(prm["seed"])
    for V in (32000, 50257, 128256):
        for dtype in (torch.float32, torch.bfloat16):
            x = grid_logits(B, V, V, dtype)
            ref_tok, ref_lp = sample_from_logits(x, backend="torch", **prm)
            tok, lp = sample_from_logits(x.cuda(), **{n: v.cuda() for n, v in prm.items()})  # auto -> triton
            assert torch.equal(tok.cpu(), ref_tok)
            torch.testing.assert_close(lp.cpu(), ref_lp, rtol=LP_RTOL, atol=1e-5)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_triton_on_cuda_rules_match_torch_on_cpu():
    """min-p, typical, epsilon and eta per row at real vocabulary sizes, on the GPU against the CPU's torch path."""
    B = 64
    for V in (50257, 128256):
        for dtype in (torch.float32, torch.bfloat16):
            x = grid_logits(B, V, V + 2, dtype)
            prm = rule_params(B, V, V)
            ref_tok, ref_lp = sample_from_logits(x, backend="torch", **prm)
            tok, lp = sample_from_logits(x.cuda(), **on_device(prm))
            assert torch.equal(tok.cpu(), ref_tok), (V, dtype)
            torch.testing.assert_close(lp.cpu(), ref_lp, rtol=LP_RTOL, atol=1e-5)


def rule_params(B, V, seed):
    """Random per-row min_p / typical_p / epsilon_cutoff / eta_cutoff (some off), over temperature, top-k and
    top-p (issue 23)."""
    g = torch.Generator().manual_seed(seed)
    pick = lambda values: torch.tensor(values)[torch.randint(0, len(values), (B,), generator=g)]  # noqa: E731
    return dict(min_p=pick([0.0, 1e-3, 0.05, 0.3, 1.0]), epsilon_cutoff=pick([0.0, 1e-4, 3e-3, 0.05, 0.6]),
                eta_cutoff=pick([0.0, 0.0, 3e-4, 0.01, 0.3]), typical_p=pick([1.0, 1.0, 0.2, 0.5, 0.95]),
                temperature=pick([0.0, 0.5, 1.0, 2.0]), top_k=pick([0, 0, 5, V + 1]), top_p=pick([1.0, 1.0, 0.9]),
                seed=torch.randint(0, 2**40, (B,), generator=g), position=torch.arange(B))


@pytest.mark.parametrize("V", [33, 300])
def test_triton_matches_torch_with_min_p_and_epsilon(V):
    """Same tokens, log-probs within 1e-5, with min-p and epsilon on tied, masked, flat and peaked rows, and
    uniform rows (every token tied with the max)."""
    B = 40
    x = grid_logits(B, V, V + 1, torch.float32)
    x[-2:] = 0.0  # uniform rows
    assert_same(x, **rule_params(B, V, V))


def test_triton_min_p_and_epsilon_across_tiles():
    """Several tiles per row (block=64): the mass, bisection and threshold passes of typical, epsilon and eta
    across tile boundaries."""
    from pigpt.kernels.params import normalize_cutoffs, normalize_params
    from pigpt.kernels.sampling_triton import sample_triton

    B, V = 16, 200
    prm = rule_params(B, V, 1)
    x = grid_logits(B, V, 7, torch.float32)
    T, k, p, s, pos = normalize_params(x, prm["temperature"], prm["top_k"], prm["top_p"], prm["seed"],
                                       prm["position"])
    lmp, eps, eta, typ = normalize_cutoffs(x, prm["min_p"], prm["epsilon_cutoff"], prm["eta_cutoff"],
                                           prm["typical_p"])
    d = lambda *ts: [t.to(DEVICE) for t in ts]  # noqa: E731
    tok, lp = sample_triton(*d(x, T, k, p, s, pos), block=64, lmp=lmp.to(DEVICE), eps=eps.to(DEVICE),
                            eta=eta.to(DEVICE), typ=typ.to(DEVICE))
    ref_tok, ref_lp = sample_from_logits(x, backend="torch", **prm)
    assert torch.equal(tok.cpu(), ref_tok)
    torch.testing.assert_close(lp.cpu(), ref_lp, rtol=LP_RTOL, atol=1e-5)


@pytest.mark.parametrize("V", [3, 33])
def test_triton_matches_torch_on_random_ties_masks_and_parameters(V):
    """Fuzz: rounded logits (many ties), ~30% -inf, random per-row temperature / top_k / top_p / seeds."""
    g = torch.Generator().manual_seed(V)
    B = 48
    x = (torch.randn(B, V, generator=g) * 2).round()
    x[torch.rand(B, V, generator=g) < 0.3] = NEG_INF
    x[:, 0] = torch.where(x[:, 0] == NEG_INF, 0.0, x[:, 0])  # at least one finite logit per row
    kw = dict(temperature=torch.tensor([0.0, 0.01, 0.5, 1.0, 3.0])[torch.randint(0, 5, (B,), generator=g)],
              top_k=torch.randint(0, V + 2, (B,), generator=g),
              top_p=torch.tensor([1e-6, 0.3, 0.5, 0.9, 0.999, 1.0])[torch.randint(0, 6, (B,), generator=g)],
              seed=torch.randint(0, 2**40, (B,), generator=g), position=torch.arange(B))
    assert_same(x, **kw)


# -- where the kernel runs: the interpreter only without CUDA ----------------------------------------------
@pytest.mark.parametrize("cuda", [False, True])
def test_interpreter_is_chosen_only_without_cuda(monkeypatch, cuda):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: cuda)
    env = {"PATH": "/bin"}
    assert choose_interpreter(env) is (not cuda)
    assert env == ({"PATH": "/bin"} if cuda else {"PATH": "/bin", ENV: "1"})  # on CUDA: nothing set


@pytest.mark.parametrize("cuda", [False, True])
@pytest.mark.parametrize("value,on", [("1", True), ("true", True), ("0", False), ("", False)])
def test_interpreter_respects_an_explicit_triton_interpret(monkeypatch, cuda, value, on):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: cuda)
    env = {ENV: value}
    assert choose_interpreter(env) is on
    assert env == {ENV: value}  # the user's setting, untouched


def test_triton_kernel_is_compiled_exactly_when_not_interpreting():
    """The session's choice reached the kernel: on a CUDA machine (TRITON_INTERPRET unset) the tests above
    ran a compiled kernel on the GPU, without CUDA an interpreted one on the CPU."""
    from triton.runtime.interpreter import InterpretedFunction

    from pigpt.kernels.sampling_triton import _sample_kernel

    assert isinstance(_sample_kernel, InterpretedFunction) == interpreting()
    assert DEVICE == ("cpu" if interpreting() else "cuda")
    if not torch.cuda.is_available():
        assert interpreting()  # without CUDA nothing but the interpreter can run the kernel


def test_triton_row_keys_use_all_64_bits_of_seed_and_position():
    """The kernel hashes (seed, position) into its row keys itself: seeds that differ only in their high
    bits, near 2**62, and positions past 2**32 draw what the torch path (kernels.hashing.row_keys) draws."""
    B, V = 24, 300
    x = torch.zeros(B, V)  # uniform rows: the draw is the noise alone, so a wrong key shows at once
    seed = torch.tensor([2**62 - 1 - i * (2**33) for i in range(B // 2)] + [i << 40 for i in range(B // 2)])
    position = torch.tensor([i * (2**32 + 7) for i in range(B)])
    assert_same(x, seed=seed, position=position)
    assert len(set(triton_sample(x, seed=seed, position=position)[0].tolist())) > B // 2
