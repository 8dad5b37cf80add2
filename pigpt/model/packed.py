"""oneDNN-blocked weights for CPU inference.

MKL's GEMM re-packs the weight on every call; at the few rows a decode step has (n rollouts, beams) that
repacking costs as much as the product. oneDNN's linear can take a weight already reordered into its
blocked layout, which makes a decode step at 4-64 rows 10-30% faster and the LM head up to 1.5x faster
(float32 and bfloat16, measured on the 2-core dev machine; see README "Speed"). At one row float32 MKL's
matrix-vector product is still the faster one, so the model keeps both paths.

The blocked copy is a cache (DerivedWeight): built on first use, rebuilt when the weight changes (training,
load_state_dict, .to()), never saved, and costs a second copy of each weight it covers.
`GPT.packed_weights = False` turns it off.
"""

from __future__ import annotations

import functools

import torch
from torch.optim.optimizer import register_optimizer_step_post_hook

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


def usable(x: torch.Tensor, w: torch.Tensor) -> bool:
    """Inference on CPU in a dtype oneDNN handles: no autograd through the blocked copy, and no autocast
    (the op doesn't cast its input to the autocast dtype as F.linear would)."""
    return (
        w.device.type == "cpu"
        and x.dtype == w.dtype
        and not (torch.is_grad_enabled() and w.requires_grad)
        and not torch.is_autocast_enabled("cpu")
        and available(w.dtype)
    )


def preferred(x: torch.Tensor, w: torch.Tensor) -> bool:
    """The model's dispatch rule: the blocked path where it is usable and faster, i.e. at more than one row
    of x, or in bfloat16 at any row count; one float32 row stays on MKL's matrix-vector product
    (benchmarks/bench_linear.py: 0.89x packed there)."""
    return (x.numel() // x.shape[-1] > 1 or w.dtype != torch.float32) and usable(x, w)


def reorder(w_out_in: torch.Tensor) -> torch.Tensor:
    """The blocked (opaque, mkldnn-layout) copy of an [out, in] weight. 64 is the row count oneDNN tunes
    the layout for; the copy serves any number of rows."""
    return torch.ops.mkldnn._reorder_linear_weight(w_out_in.detach().contiguous(), 64)


def linear(x: torch.Tensor, packed: torch.Tensor, bias: torch.Tensor | None, act: str | None = None):
    """y = act(x @ W.T + b) for a blocked W; `act` is a key of FUSED_ACTIVATIONS, applied in the GEMM's
    epilogue rather than as another pass over y."""
    attr, algorithm = FUSED_ACTIVATIONS[act] if act else ("none", "")
    return torch.ops.mkldnn._linear_pointwise(x, packed, bias, attr, [], algorithm)


_optimizer_steps = 0  # every optimizer step anywhere; part of each cache key (see DerivedWeight)


def _count_optimizer_step(optimizer, args, kwargs) -> None:
    global _optimizer_steps
    _optimizer_steps += 1


register_optimizer_step_post_hook(_count_optimizer_step)


class DerivedWeight:
    """A copy of one weight in another layout, rebuilt whenever the weight may have changed.

    The key is the weight's storage, its version counter, and a count of optimizer steps: fused optimizers
    (AdamW(fused=True), the default in train.py) update weights without bumping the version counter, and a
    stale copy would silently give wrong logits. Writes through `.data` bypass all three: call
    `GPT.clear_weight_caches()` after those.
    """

    __slots__ = ("key", "value")

    def __init__(self):
        self.key, self.value = None, None

    def get(self, w: torch.Tensor, build) -> torch.Tensor:
        key = (w.data_ptr(), w._version, _optimizer_steps, w.dtype, tuple(w.shape))
        if key != self.key:
            self.value = None  # free the old copy before building the new one
            self.value = build(w.detach())
            self.key = key
        return self.value

    def clear(self) -> None:
        self.key, self.value = None, None

    def __reduce__(self):  # a cache: deep copies and pickles of a model start without it
        return (DerivedWeight, ())
