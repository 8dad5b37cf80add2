"""oneDNN-blocked weights for CPU inference.

MKL's GEMM re-packs the weight on every call; at the few rows a decode step has (n rollouts, beams) that
repacking costs as much as the product. oneDNN's linear can take a weight already reordered into its
blocked layout, which makes a decode step at 4-64 rows 10-30% faster and the LM head up to 1.5x faster
(float32 and bfloat16, measured on the 2-core dev machine; see README "Speed"). At one row float32 MKL's
matrix-vector product is still the faster one, so the model keeps both paths.

The blocked copy is a cache (DerivedWeight): built on first use, rebuilt when the weight changes (training,
load_state_dict, .to()), never saved, and costs a second copy of each weight it covers. How a cache sees
training without touching anything outside pigpt's models: `watch`.
`GPT.packed_weights = False` turns it off.
"""

from __future__ import annotations

import functools

import torch

# post-op names oneDNN's fused linear takes for our activations: (attr, algorithm)
FUSED_ACTIVATIONS = {
    "gelu_new": ("gelu", "tanh"),
    "gelu_pytorch_tanh": ("gelu", "tanh"),
    "gelu_fast": ("gelu", "tanh"),
    "gelu": ("gelu", "none"),
    "relu": ("relu", ""),
}


@functools.lru_cache(maxsize=None)
def available(dtype: torch.dtype) -> bool:
    """Whether this torch build can run a prepacked oneDNN linear in `dtype` (checked once, by running one)."""
    if dtype not in (torch.float32, torch.bfloat16) or not torch.backends.mkldnn.is_available():
        return False
    try:
        w = torch.ones(16, 8, dtype=dtype)
        y = linear(torch.ones(2, 8, dtype=dtype), reorder(w), None)
        return bool((y == 8).all())
    except (RuntimeError, AttributeError):  # no mkldnn ops in this build, or no bf16 support on this CPU
        return False


def widened(w: torch.Tensor) -> bool:
    """Whether products with `w` should run in float32: a bfloat16 weight on a CPU where oneDNN has no bfloat16
    kernels (AVX2 only). There torch's bfloat16 addmm took 64 ms for one 16-row GPT-2 small product and a
    bfloat16 prefill of 16 tokens 3.8 s (2-core EPYC, Zen 3; measured), where widening x and w to float32 first
    takes a few ms: the same products of bfloat16 inputs, accumulated in float32 either way. (Where the CPU
    kernels load, products of up to cpu_decode.MANY_ROWS rows run there instead, widening each weight once into
    cache rather than into a float32 copy of it: 2-5x faster.)"""
    return w.dtype == torch.bfloat16 and w.device.type == "cpu" and not available(torch.bfloat16)


def usable(x: torch.Tensor, w: torch.Tensor) -> bool:
    """Inference on CPU in a dtype oneDNN handles: no autograd through the blocked copy, no gradient pending
    on the weight (`settled`), and no autocast (the op doesn't cast its input to the autocast dtype as
    F.linear would)."""
    return (
        w.device.type == "cpu"
        and x.dtype == w.dtype
        and not (torch.is_grad_enabled() and w.requires_grad)
        and settled(w)
        and not torch.is_autocast_enabled("cpu")
        and available(w.dtype)
    )


# A float32 prompt of fewer tokens than this is prefilled on the weights as they are, without making blocked
# copies for it: they would double the resident weights (GPT-2 small: +340 MB over 498) to save ~30 ms once per
# prompt (bench_linear.py, 16 rows, AVX2 EPYC: plain 78 ms, packed 47 ms, for all 49 products).
PREFILL_PACK_ROWS = 64


def preferred(x: torch.Tensor, w: torch.Tensor) -> bool:
    """The model's dispatch rule: the blocked path where it is usable and faster, i.e. at more than one row
    of x, or in bfloat16 at any row count; one float32 row stays on MKL's matrix-vector product
    (benchmarks/bench_linear.py: 0.89x packed there), and so does a float32 prefill of fewer than
    PREFILL_PACK_ROWS tokens (x of shape (B, T, C), T > 1)."""
    rows = x.numel() // x.shape[-1]
    if w.dtype == torch.float32 and (rows == 1 or (x.dim() == 3 and x.shape[1] > 1 and rows < PREFILL_PACK_ROWS)):
        return False
    return usable(x, w)


def reorder(w_out_in: torch.Tensor) -> torch.Tensor:
    """The blocked (opaque, mkldnn-layout) copy of an [out, in] weight. 64 is the row count oneDNN tunes
    the layout for; the copy serves any number of rows."""
    return torch.ops.mkldnn._reorder_linear_weight(w_out_in.detach().contiguous(), 64)


def linear(x: torch.Tensor, packed: torch.Tensor, bias: torch.Tensor | None, act: str | None = None):
    """y = act(x @ W.T + b) for a blocked W; `act` is a key of FUSED_ACTIVATIONS, applied in the GEMM's
    epilogue rather than as another pass over y."""
    attr, algorithm = FUSED_ACTIVATIONS[act] if act else ("none", "")
    return torch.ops.mkldnn._linear_pointwise(x, packed, bias, attr, [], algorithm)


# Fused optimizers (AdamW(fused=True), pigpt's default) update weights in place without bumping their version
# counters, so a weight's version can't tell a cache that an optimizer step changed it. What comes before
# every step can: a gradient arriving on the weight. Each weight a cache copies gets a hook, on that tensor
# only, counting those arrivals (part of every cache key); and while a gradient is pending (w.grad is set: a
# step may still come) no cache of the weight is used or kept.
_grads_seen = 0


def _count_grad(w: torch.Tensor) -> None:
    global _grads_seen
    _grads_seen += 1


def watch(w: torch.Tensor) -> None:
    """Count the gradients that reach weight `w` from now on (once per tensor; a deep copy, which starts
    without the hook and without the caches, gets its own when a cache is next built from it)."""
    if not w.requires_grad:
        return
    hooks = getattr(w, "_post_accumulate_grad_hooks", None) or {}
    if not any(h is _count_grad for h in hooks.values()):
        w.register_post_accumulate_grad_hook(_count_grad)


def grads_seen() -> int:
    """How many gradients have reached watched weights: a cache built before any of them may be stale."""
    return _grads_seen


def settled(w: torch.Tensor) -> bool:
    """No gradient pending on `w`: no optimizer step can change it before its next use without a trace.
    (pigpt's loops zero gradients with set_to_none=True, so between steps their weights are settled.)"""
    return w.grad is None


class DerivedWeight:
    """A copy of one weight in another layout, rebuilt whenever the weight may have changed.

    The key is the weight's storage, its version counter, and the count of gradients seen (`watch`): fused
    optimizers update weights without bumping the version counter, and a stale copy would silently give wrong
    logits. While a gradient is pending the copy is built for the one call and not kept (callers take their
    plain path then: `usable`). Writes through `.data` bypass all of it: call `GPT.clear_weight_caches()`
    after those.
    """

    __slots__ = ("key", "value")

    def __init__(self):
        self.key, self.value = None, None

    def get(self, w: torch.Tensor, build) -> torch.Tensor:
        if not settled(w):
            self.clear()
            return build(w.detach())
        watch(w)
        key = (w.data_ptr(), w._version, _grads_seen, w.dtype, tuple(w.shape))
        if key != self.key:
            self.value = None  # free the old copy before building the new one
            self.value = build(w.detach())
            self.key = key
        return self.value

    def clear(self) -> None:
        self.key, self.value = None, None

    def __reduce__(self):  # a cache: deep copies and pickles of a model start without it
        return (DerivedWeight, ())
