"""The tied LM head fused with what follows it, for every loss and score that needs gradients through it.

With GPT-2's 50257-token vocabulary the head dominates a small model's cost, and plain autograd makes it
worse: [N, V] logits are written, upcast, processed, log-softmaxed, and as many [N, V] gradients are
zero-filled and read back, each a pass over hundreds of MB that a CPU page-faults in. Here each chunk of rows
computes its float32 logits, its values and the gradient of those values with respect to the logits in a
few in-place passes while the chunk is in cache, and writes that gradient once, into one [N, V] buffer in the
compute dtype; two matmuls then give the gradients of the hidden states and of the embedding matrix.

    values, aux = fused_head(h, w, targets, chunk_fn, chunk=64)        # (N,), differentiable: score's
    loss, _ = fused_head(h, w, targets, dtype=torch.bfloat16, reduction="mean")   # the training loss

`chunk_fn(logits, rows, targets, grad)` is the maths: given one chunk's float32 logits (n, V) (its to use as
scratch), the slice of rows and their targets (n,), it returns the chunk's values (n,) and writes
d value / d logits into `grad` (n, V). `nll_chunk` is the plain one (cross-entropy: the next-token loss);
decoding/score.py passes the processed distribution's (repetition penalty, temperature, top-k / top-p).
"""

from __future__ import annotations

import torch


def nll_chunk(logits: torch.Tensor, rows: slice, targets: torch.Tensor, grad: torch.Tensor):
    """-log softmax(logits)[target] per row, and its gradient softmax - onehot, written into grad."""
    target_logit = logits.gather(1, targets[:, None])  # (n, 1)
    peak = logits.amax(dim=-1, keepdim=True)  # (n, 1)
    exp = logits.sub_(peak).exp_()  # in place: one buffer per chunk, reused while it is in cache
    norm = exp.sum(dim=-1, keepdim=True)  # (n, 1)
    torch.div(exp, norm, out=grad)  # softmax, written straight into the compute dtype
    grad[torch.arange(len(targets), device=grad.device), targets] -= 1.0
    return (peak + norm.log() - target_logit)[:, 0], None


class FusedHead(torch.autograd.Function):
    """values_i = chunk_fn(h_i @ W.T) for h (N, C) and the tied head W (V, C), with d values / d logits
    computed in forward. reduction="none": (values (N,), aux), aux being what chunk_fn returned beside the
    values (concatenated over the chunks; None if it returned None), not differentiable; backward scales the
    buffer's rows by their upstream gradients, in place, so it runs once. reduction="mean": the mean value,
    a scalar, with both matmuls done in forward, so the [N, V] buffer is freed before backward (which only
    scales their results): the training loss."""

    @staticmethod
    def forward(ctx, h, w, targets, chunk_fn, dtype, chunk, reduction, logits_fn=None):
        N, V = h.shape[0], w.shape[0]
        hc, wc = h.to(dtype), w.to(dtype)
        grad = torch.empty(N, V, dtype=dtype, device=h.device)  # (N, V): d value_i / d logits_i
        values, auxes = [], []
        total = torch.zeros((), dtype=torch.float32, device=h.device)
        for s in range(0, N, chunk):
            rows = slice(s, s + chunk)
            # (n, V), float32 for the softmax; logits_fn: the model's own head (its batch-invariant one)
            logits = (hc[rows] @ wc.t()).float() if logits_fn is None else logits_fn(hc[rows])
            v, aux = chunk_fn(logits, rows, targets[rows], grad[rows])
            if reduction == "mean":
                total += v.sum()
            else:
                values.append(v)
                auxes.append(aux)
        ctx.n, ctx.h_dtype, ctx.w_dtype, ctx.reduction, ctx.done = N, h.dtype, w.dtype, reduction, False
        if reduction == "mean":
            # Two large matmuls over all rows run faster than per-chunk ones with a (V, C) accumulator.
            ctx.save_for_backward(grad @ wc, grad.t() @ hc)  # (N, C), (V, C)
            return total / N, None
        ctx.save_for_backward(hc, wc, grad)
        aux = None if not auxes or auxes[0] is None else torch.cat(auxes)
        ctx.mark_non_differentiable(*(() if aux is None else (aux,)))
        return (torch.cat(values) if values else h.new_zeros(0, dtype=torch.float32)), aux

    @staticmethod
    def backward(ctx, grad_values, _grad_aux):
        if ctx.reduction == "mean":
            grad_h, grad_w = ctx.saved_tensors
            scale = grad_values / ctx.n
            return (grad_h * scale).to(ctx.h_dtype), (grad_w * scale).to(ctx.w_dtype), None, None, None, None, None, None
        if ctx.done:
            raise RuntimeError("the fused LM head's result can be backpropagated once (its gradient buffer is reused)")
        ctx.done = True
        hc, wc, grad = ctx.saved_tensors
        grad.mul_(grad_values.to(grad.dtype)[:, None])  # (N, V): each row's share of the loss, in place
        return (grad @ wc).to(ctx.h_dtype), (grad.t() @ hc).to(ctx.w_dtype), None, None, None, None, None, None


def fused_head(h: torch.Tensor, w: torch.Tensor, targets: torch.Tensor, chunk_fn=None,
               dtype: torch.dtype = torch.float32, chunk: int = 128, reduction: str = "none", logits_fn=None):
    """`FusedHead` over h (N, C), w (V, C), targets (N,) with chunk_fn (default nll_chunk, cross-entropy):
    (values (N,), aux) with reduction="none", (mean value, None) with reduction="mean". logits_fn(h_rows): a
    chunk's logits when they must come from elsewhere than h @ w.T (a batch-invariant model's head)."""
    if reduction not in ("none", "mean"):
        raise ValueError(f"reduction must be 'none' or 'mean', got {reduction!r}")
    return FusedHead.apply(h, w, targets, chunk_fn or nll_chunk, dtype, chunk, reduction, logits_fn)


__all__ = ["FusedHead", "fused_head", "nll_chunk"]
