"""Batch-invariant numerics: a row's logits are the same bits however many rows, positions or padding run beside it.

Why: a rollout's log-probs come from decode steps (one token a row against the KV cache, 1-64 rows) and the
trainer's from one full-sequence forward (every position of every completion at once). With ordinary kernels
the two differ by float32 rounding, because a matrix product's reduction order depends on its shape (BLAS
picks tiles, a matrix-vector path for one row, K-splits for few rows) and so do attention's and a row
reduction's. The differences are ~1e-6 a logit, but they make the trainer's policy not quite the sampler's (the
`mismatch` GRPO logs), and a rollout drawn alone not quite the same as inside a batch of 64 (a near-tie in the
draw can go the other way). Here every op that reduces computes each output as a fixed sequence of float32
operations on its own row (csrc/invariant.c): products as one fused multiply-add chain in k order, attention over
the row's keys in position order (from the cache one step at a time, or a whole causal sequence: the same
chain), layer norm in a fixed order. Elementwise ops are exact per element already (the embeddings' sum,
residual adds), and GELU is the kernels' own.

The backward pass is torch's (the standard maths on the saved inputs): gradients need only be right to float32
tolerance, and torch's GEMMs are faster than a fixed-order one. Float32 on the CPU only; a model in another
dtype or on a GPU refuses the mode with one line.

`GPT.batch_invariant = True` (or `GPT.from_pretrained(..., batch_invariant=True)`) turns it on.
"""

from __future__ import annotations

import ctypes
import functools
import os
import shutil
from importlib import resources

import torch
import torch.nn.functional as F

from . import cbuild

ACTS = {None: 0, "gelu_new": 1, "gelu_pytorch_tanh": 1, "gelu_fast": 1, "gelu": 2, "relu": 3}
_P, _I64 = ctypes.c_void_p, ctypes.c_int64


class InvariantError(ValueError):
    """The batch-invariant mode can't run here; the message says why and what to do."""


ISAS = ("avx512", "avx2", "plain")


def best_isa() -> str:
    """The widest vectors this CPU runs (torch's own detection): avx512, avx2 (with FMA), or plain C."""
    return {"AVX512": "avx512", "AVX2": "avx2"}.get(torch.backends.cpu.get_cpu_capability(), "plain")


def _flags(isa: str, torch_openmp: bool = True) -> tuple[str, ...]:
    # -fno-trapping-math: exception flags only (lets floorf vectorise); no flag that may change a value
    base = ("-O3", "-fopenmp", "-ffp-contract=off", "-fno-fast-math", "-fno-trapping-math", "-pthread", "-shared",
            "-fPIC")
    # Every build gives the same bits (one FMA chain per output, whatever the vector width); wider is faster.
    return base + {"avx512": ("-mavx2", "-mfma", "-mavx512f"), "avx2": ("-mavx2", "-mfma"), "plain": ()}[isa] + (
        _torch_openmp() if torch_openmp else ())


def _torch_openmp() -> tuple[str, ...]:
    """Link flags that make the kernels' parallel regions run on torch's own OpenMP runtime where torch ships a
    private copy (a wheel's libgomp-<hash>.so.1, or libiomp5): with two runtimes in one process, each one's idle
    threads spin while the other's work, and a decode step alternates between them dozens of times (measured on
    a 16-core Xeon with torch's CUDA wheel: invariant decode at 0.08x the default, against 0.77x at 2 threads).
    Nothing where torch's runtime is the system's libgomp.so.1 (the one -fopenmp links)."""
    try:
        with open("/proc/self/maps") as f:
            found = {line.split()[-1] for line in f if any(n in line for n in ("libgomp", "libiomp", "libomp"))}
    except OSError:
        return ()
    torch_dir = os.path.dirname(torch.__file__)
    own = sorted(p for p in found if p.startswith(torch_dir) or "torch" in p)
    if not own or os.path.basename(own[0]) == "libgomp.so.1":
        return ()
    # listed before the sources, so it comes first among the library's dependencies (-fopenmp's own -lgomp is
    # added after them): GOMP_* bind to torch's copy; the system's, loaded too, stays idle
    return (own[0],)


@functools.lru_cache(maxsize=None)
def load(isa: str | None = None):
    """The compiled kernels (ctypes.CDLL) for `isa` (default: this CPU's best); raises InvariantError where they
    can't be built."""
    isa = isa or best_isa()
    cc = os.environ.get("CC") or shutil.which("gcc") or shutil.which("cc")
    if not cc:
        raise InvariantError("the batch-invariant mode needs a C compiler to build its kernels: install gcc (or set CC)")
    src = resources.files(__package__).joinpath("csrc", "invariant.c").read_bytes()
    flags = _flags(isa)
    try:
        lib, _ = cbuild.load(cbuild.Recipe(f"pigpt_invariant_{isa}", (("invariant.c", src),), cc, flags),
                             "the batch-invariant kernels")
    except cbuild.BuildError as e:
        if flags == _flags(isa, torch_openmp=False):
            raise InvariantError(f"could not build the batch-invariant kernels ({e})") from None
        try:  # linking against torch's OpenMP copy failed: the system's runtime, slower beside torch's
            lib, _ = cbuild.load(cbuild.Recipe(f"pigpt_invariant_{isa}", (("invariant.c", src),), cc,
                                               _flags(isa, torch_openmp=False)), "the batch-invariant kernels")
        except cbuild.BuildError as e2:
            raise InvariantError(f"could not build the batch-invariant kernels ({e2})") from None
    lib.pgi_linear.argtypes = [_P, _I64, _I64, _I64, _P, _I64, _P, _P, _I64, ctypes.c_int, ctypes.c_int]
    lib.pgi_act.argtypes = [_P, _P, _I64, ctypes.c_int, ctypes.c_int]
    lib.pgi_layernorm.argtypes = [_P, _I64, _I64, _I64, _P, _P, ctypes.c_float, _P, ctypes.c_int]
    lib.pgi_attention.argtypes = ([_P] + [_I64] * 7 + [_P, _P] + [_I64] * 3 + [_P, _I64, _P, _P] + [_I64] * 3
                                  + [_P, _P, _I64, ctypes.c_float, _P, ctypes.c_int])
    return lib


def check(model) -> None:
    """Raise InvariantError unless `model` can run batch-invariant (float32 weights on the CPU, kernels built)."""
    if model.device.type != "cpu":
        raise InvariantError(f"the batch-invariant mode runs on the CPU; this model is on {model.device}: "
                             "move it with .to('cpu'), or leave batch_invariant off")
    if model.dtype != torch.float32 or model.quantized:
        kind = "int8" if model.quantized else str(model.dtype).removeprefix("torch.")
        raise InvariantError(f"the batch-invariant mode needs float32 weights; this model's are {kind}: "
                             "load it with dtype=torch.float32 (and no quantize=)")
    load()


def _threads() -> int:
    return torch.get_num_threads()


def panels(w_kn: torch.Tensor, lib=None) -> torch.Tensor:
    """A [K, N] weight as the kernels read it: panels (ceil(N / NR), K, NR), N zero-padded; NR is two vectors of
    the build (16 floats for AVX2, 32 for AVX-512)."""
    K, N = w_kn.shape
    nr = (lib or load()).pgi_panel_width()
    Np = -(-N // nr) * nr
    w = F.pad(w_kn.detach().float(), (0, Np - N))
    return w.view(K, Np // nr, nr).transpose(0, 1).contiguous()


def _linear_fwd(x2: torch.Tensor, wp: torch.Tensor, N: int, bias, act: int, lib=None) -> torch.Tensor:
    M, K = x2.shape
    y = torch.empty(M, N)
    if M:
        (lib or load()).pgi_linear(x2.data_ptr(), M, K, x2.stride(0), wp.data_ptr(), N,
                          None if bias is None else bias.data_ptr(), y.data_ptr(), N, act, _threads())
    return y


def _rows(x: torch.Tensor) -> torch.Tensor:
    """x as a 2-D float32 (M, K) with unit stride along K (a view where it can be)."""
    x2 = x.reshape(-1, x.shape[-1])
    if x2.dtype != torch.float32:
        x2 = x2.float()
    if x2.stride(-1) != 1 or (x2.shape[0] > 1 and x2.stride(0) < x2.shape[1]):
        x2 = x2.contiguous()
    return x2


class _Linear(torch.autograd.Function):
    """y = x @ W + b through the fixed-order kernel; backward is torch's (x^T g, g W^T, sum g)."""

    @staticmethod
    def forward(ctx, x, w, b, wp):
        x2 = _rows(x)
        y = _linear_fwd(x2, wp, w.shape[1], b.detach() if b is not None else None, 0)
        ctx.save_for_backward(x2, w)
        ctx.shape, ctx.has_b = x.shape, b is not None
        return y.view(*x.shape[:-1], w.shape[1])

    @staticmethod
    def backward(ctx, g):
        x2, w = ctx.saved_tensors
        g2 = g.reshape(-1, g.shape[-1])
        gx = (g2 @ w.t()).view(ctx.shape) if ctx.needs_input_grad[0] else None
        gw = x2.t() @ g2 if ctx.needs_input_grad[1] else None
        gb = g2.sum(0) if ctx.has_b and ctx.needs_input_grad[2] else None
        return gx, gw, gb, None


class _Act(torch.autograd.Function):
    """The kernels' elementwise activation; backward is torch's derivative of the same function."""

    @staticmethod
    def forward(ctx, x, act: str):
        x = x.contiguous()
        y = torch.empty_like(x)
        load().pgi_act(x.data_ptr(), y.data_ptr(), x.numel(), ACTS[act], _threads())
        ctx.save_for_backward(x)
        ctx.act = act
        return y

    @staticmethod
    def backward(ctx, g):
        (x,) = ctx.saved_tensors
        if ctx.act == "relu":
            return g * (x > 0), None
        return torch.ops.aten.gelu_backward(g, x, approximate="none" if ctx.act == "gelu" else "tanh"), None


def linear(x: torch.Tensor, w_kn: torch.Tensor, bias, wp: torch.Tensor, act: str | None = None) -> torch.Tensor:
    """act(x @ w_kn + bias) for x (..., K), w_kn (K, N) and its panels `wp`; differentiable in x, w_kn, bias."""
    if not (torch.is_grad_enabled() and (x.requires_grad or w_kn.requires_grad
                                         or (bias is not None and bias.requires_grad))):
        x2 = _rows(x)
        y = _linear_fwd(x2, wp, w_kn.shape[1], bias, ACTS[act])
        return y.view(*x.shape[:-1], w_kn.shape[1])
    y = _Linear.apply(x, w_kn, bias, wp)
    return _Act.apply(y, act) if act else y


class _LayerNorm(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, w, b, eps):
        x2 = _rows(x)
        y = torch.empty(x2.shape)
        load().pgi_layernorm(x2.data_ptr(), x2.shape[0], x2.shape[1], x2.stride(0), w.data_ptr(), b.data_ptr(),
                             eps, y.data_ptr(), _threads())
        ctx.save_for_backward(x, w, b)
        ctx.eps = eps
        return y.view(x.shape)

    @staticmethod
    def backward(ctx, g):
        x, w, b = ctx.saved_tensors
        with torch.enable_grad():
            xs, ws, bs = (t.detach().requires_grad_(n) for t, n in zip((x, w, b), ctx.needs_input_grad[:3]))
            y = F.layer_norm(xs, (xs.shape[-1],), ws, bs, ctx.eps)
            wanted = [t for t in (xs, ws, bs) if t.requires_grad]
            grads = iter(torch.autograd.grad(y, wanted, g))
        return (*(next(grads) if n else None for n in ctx.needs_input_grad[:3]), None)


def layer_norm(x: torch.Tensor, ln: torch.nn.LayerNorm) -> torch.Tensor:
    return _LayerNorm.apply(x, ln.weight, ln.bias, ln.eps)


def _attention_fwd(q, k, v, kstart, q0, prefix, scale) -> torch.Tensor:
    """y (B, T, nh * hs) for q (B, nh, T, hs) over keys k, v (B, nh, S, hs) (see csrc/invariant.c)."""
    B, nh, T, hs = q.shape
    for t in (q, k, v):
        if t.stride(-1) != 1:
            raise ValueError("attention inputs need unit stride along the head dimension")
    if k.stride() != v.stride():
        v = v.contiguous()
        k = k.contiguous()
    y = torch.empty(B, T, nh * hs)
    pk = pv = prow = pstart = None
    P = pb = ph = ps = 0
    if prefix is not None:
        pk, pv, prow, pstart = prefix
        if pk.stride() != pv.stride():
            pk, pv = pk.contiguous(), pv.contiguous()
        P, (pb, ph, ps) = pk.shape[2], pk.stride()[:3]
    load().pgi_attention(q.data_ptr(), *q.stride()[:3], B, nh, T, hs, k.data_ptr(), v.data_ptr(), *k.stride()[:3],
                         None if kstart is None else kstart.data_ptr(), q0,
                         None if pk is None else pk.data_ptr(), None if pv is None else pv.data_ptr(), pb, ph, ps,
                         None if prow is None else prow.data_ptr(), None if pstart is None else pstart.data_ptr(),
                         P, scale, y.data_ptr(), _threads())
    return y


class _Attention(torch.autograd.Function):
    """Causal self-attention over a whole sequence (no cache): the training / scoring forward."""

    @staticmethod
    def forward(ctx, q, k, v, scale):
        ctx.save_for_backward(q, k, v)
        ctx.scale = scale
        return _attention_fwd(q, k, v, None, 0, None, scale)

    @staticmethod
    def backward(ctx, g):
        q, k, v = ctx.saved_tensors
        with torch.enable_grad():
            qs, ks, vs = (t.detach().requires_grad_() for t in (q, k, v))
            y = F.scaled_dot_product_attention(qs, ks, vs, is_causal=True, scale=ctx.scale)  # (B, nh, T, hs)
            y = y.transpose(1, 2).reshape(g.shape)
            gq, gk, gv = torch.autograd.grad(y, (qs, ks, vs), g)
        return gq, gk, gv, None


def attention(q, k, v, scale: float, cache=None, layer: int = 0) -> torch.Tensor:
    """y (B, T, nh * hs) for q (B, nh, T, hs) and this layer's keys/values k, v as the cache returned them (all of
    a row's keys so far), or the sequence's own (no cache: causal from position 0)."""
    from .cache import SharedPrefixKVCache

    if cache is None:
        if torch.is_grad_enabled() and (q.requires_grad or k.requires_grad or v.requires_grad):
            return _Attention.apply(q, k, v, scale)
        return _attention_fwd(q, k, v, None, 0, None, scale)
    q0 = k.shape[2] - q.shape[2]  # the slot of the first query: the cache has written this step's keys
    if isinstance(cache, SharedPrefixKVCache):
        prefix = (cache.pk[layer], cache.pv[layer], cache.prompt, cache.ppad)
        return _attention_fwd(q, k, v, None, q0, prefix, scale)
    return _attention_fwd(q, k, v, cache.pad, q0, None, scale)
