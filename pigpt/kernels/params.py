"""Validation and normalisation of sampling parameters: each a Python scalar or a per-row tensor (B,)."""

import math

import torch

LOGIT_DTYPES = (torch.float32, torch.bfloat16, torch.float16)
INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1
FLOAT32_MAX = torch.finfo(torch.float32).max
MAX_SEED = 2**62  # seeds are integers in [0, 2**62), everywhere (decoding.SamplingParams too)


def check_logits(logits) -> None:
    if not isinstance(logits, torch.Tensor):
        raise ValueError(f"logits must be a torch.Tensor of shape (B, V), got {type(logits).__name__}")
    if logits.dim() != 2 or logits.shape[1] == 0:
        raise ValueError(f"logits must have shape (B, V) with V >= 1, got {tuple(logits.shape)}; "
                         "for model output (B, T, V) pass logits[:, -1]")
    if logits.dtype not in LOGIT_DTYPES:
        raise ValueError(f"logits must be float32, bfloat16 or float16, got {logits.dtype}")


def _as_row_tensor(name, value, B, device, dtype, integral):
    """A scalar or (B,) tensor -> (B,) tensor of `dtype` on `device`; shape and type errors name `name`."""
    if isinstance(value, torch.Tensor):
        if value.dim() == 0:
            value = value.reshape(1)
        if value.dim() != 1 or value.shape[0] not in (1, B):
            raise ValueError(f"{name} must be a scalar or a tensor of shape ({B},), got shape {tuple(value.shape)}")
        if value.dtype == torch.bool or value.is_complex() or (integral and value.is_floating_point()):
            kind = "an integer" if integral else "a real"
            raise ValueError(f"{name} must be {kind} tensor, got dtype {value.dtype}")
        return value.to(device=device, dtype=dtype).expand(B).contiguous()
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"{name} must be a number or a tensor of shape ({B},), got {type(value).__name__}")
    if integral and not isinstance(value, int):
        if not float(value).is_integer():
            raise ValueError(f"{name} must be an integer, got {value!r}")
        value = int(value)
    if integral and not INT64_MIN <= value <= INT64_MAX:
        raise ValueError(f"{name} must fit in int64, got {value}")
    return torch.full((B,), value, device=device, dtype=dtype)


# The one rule of each sampler setting: (ok for a Python number, ok for a tensor, what is allowed). The kernel
# checks its per-row values with it; decoding.check_sampling (SamplingParams, and through it the CLIs) checks a
# run's settings with `check_value`, so that a setting is allowed, and worded, the same everywhere.
RULES = {
    "temperature": (lambda v: 0 <= v <= FLOAT32_MAX, lambda x: (x >= 0) & torch.isfinite(x), ">= 0 (0 is greedy)"),
    "top_k": (lambda v: v >= 0, lambda x: x >= 0, ">= 0 (0 turns top-k off)"),
    "top_p": (lambda v: 0 < v <= 1, lambda x: (x > 0) & (x <= 1), "in (0, 1] (1 turns top-p off)"),
    "min_p": (lambda v: 0 <= v <= 1, lambda x: (x >= 0) & (x <= 1), "in [0, 1] (0 turns min-p off)"),
    "epsilon_cutoff": (lambda v: 0 <= v < 1, lambda x: (x >= 0) & (x < 1), "in [0, 1) (0 turns it off)"),
    "eta_cutoff": (lambda v: 0 <= v < 1, lambda x: (x >= 0) & (x < 1), "in [0, 1) (0 turns it off)"),
    "typical_p": (lambda v: 0 < v <= 1, lambda x: (x > 0) & (x <= 1), "in (0, 1] (1 turns it off)"),
    "seed": (lambda v: 0 <= v < MAX_SEED, lambda x: (x >= 0) & (x < MAX_SEED), "in [0, 2**62)"),
}


def check_value(name: str, value, label: str | None = None) -> None:
    """Raise ValueError "<label> must be <allowed>, got <value>" unless the Python number obeys name's rule."""
    number_ok, _, allowed = RULES[name]
    if isinstance(value, float) and not math.isfinite(value):
        raise ValueError(f"{label or name} must be a finite number {allowed}, got {value!r}")
    if not number_ok(value):
        raise ValueError(f"{label or name} must be {allowed}, got {value!r}")


def _check_range(name, v, t):
    """Python numbers are checked as numbers (no tensor ops: this runs every decode step); tensors where reading
    them back is free (on a GPU it would stall the stream)."""
    _, tensor_ok, allowed = RULES[name]
    if not isinstance(v, torch.Tensor):
        check_value(name, v)
    elif v.device.type == "cpu" and not bool(tensor_ok(t).all()):
        bad = t[~tensor_ok(t)][0].item()
        raise ValueError(f"{name} must be {allowed}, got {bad}")


def normalize_params(logits, temperature, top_k, top_p, seed, position):
    """Return (temperature f32, top_k i64, top_p f32, seed i64, position i64), each (B,) on logits.device.

    Python scalars are always range-checked; tensors are range-checked when they live on the CPU (on a
    GPU that would stall the stream; there the kernel treats top_k <= 0 as off and clamps top_p).
    """
    B, dev = logits.shape[0], logits.device
    T = _as_row_tensor("temperature", temperature, B, dev, torch.float32, integral=False)
    k = _as_row_tensor("top_k", top_k, B, dev, torch.int64, integral=True)
    p = _as_row_tensor("top_p", top_p, B, dev, torch.float32, integral=False)
    s = _as_row_tensor("seed", seed, B, dev, torch.int64, integral=True)
    pos = _as_row_tensor("position", position, B, dev, torch.int64, integral=True)
    for name, v, t in (("temperature", temperature, T), ("top_k", top_k, k), ("top_p", top_p, p), ("seed", seed, s)):
        _check_range(name, v, t)
    return T, k, p, s, pos


def normalize_cutoffs(logits, min_p, epsilon_cutoff, eta_cutoff=0.0, typical_p=1.0):
    """The rules after top-p, as (B,) float32 tensors on logits.device: (log(min_p), epsilon_cutoff, eta_cutoff,
    typical_p); -inf, 0, 0 and 1 turn them off. min-p's log is taken here, once, by torch, so that both backends
    compare against the very same number and keep the very same tokens."""
    B, dev = logits.shape[0], logits.device
    out = []
    for name, v in (("min_p", min_p), ("epsilon_cutoff", epsilon_cutoff), ("eta_cutoff", eta_cutoff),
                    ("typical_p", typical_p)):
        t = _as_row_tensor(name, v, B, dev, torch.float32, integral=False)
        _check_range(name, v, t)
        out.append(t)
    return torch.log(out[0]), out[1], out[2], out[3]


def is_number(x) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def check_finite(x: torch.Tensor) -> torch.Tensor:
    """Row maxima of float32 logits (B,); raises on NaN, +inf, or a row with no finite logit.

    One pass: max propagates NaN, so the row maxima tell all three.
    """
    mx = x.amax(-1)
    if bool(torch.isfinite(mx).all()):  # one check on the common path; the cause only when one is wrong
        return mx
    if torch.isnan(mx).any():
        raise ValueError("logits contain NaN (check the model's forward pass / dtype overflow)")
    if (mx == float("inf")).any():
        raise ValueError("logits contain +inf; mask tokens with -inf instead")
    if (mx == float("-inf")).any():
        raise ValueError("a row of logits is entirely -inf: nothing can be drawn")
    return mx
