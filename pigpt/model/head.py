"""The tied LM head fused with what follows it, for every loss and score that needs gradients through it.

With GPT-2's 50257-token vocabulary the head dominates a small model's cost, and plain autograd makes it
worse: [N, V] logits are written, upcast, processed, log-softmaxed, and as many [N, V] gradients are
zero-filled and read back, each a pass over hundreds of MB that a CPU page-faults in. Here each chunk of rows
computes its float32 logits, its values and the gradient of those values with respect to the logits in a
few in-place passes while the chunk is in cache, and writes that gradient once, into one [N, V] buffer in the
compute dtype; backward is two matmuls.

    values = fused_head(h, w, targets, chunk_fn, dtype=torch.bfloat16, chunk=128)   # (N,), differentiable

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
    computed in forward; returns (values (N,), aux), aux being what chunk_fn returned beside the values
    (concatenated over the chunks; None if it returned None), not differentiable."""

    @staticmethod
    def forward(ctx, h, w, targets, chunk_fn, dtype, chunk):
        N, V = h.shape[0], w.shape[0]
        hc, wc = h.to(dtype), w.to(dtype)
        grad = torch.empty(N, V, dtype=dtype, device=h.device)  # (N, V): d value_i / d logits_i
        values, auxes = [], []
        for s in range(0, N, chunk):
            rows = slice(s, s + chunk)
            logits = (hc[rows] @ wc.t()).float()  # (n, V), float32 for the softmax
            v, aux = chunk_fn(logits, rows, targets[rows], grad[rows])
            values.append(v)
            auxes.append(aux)
        ctx.save_for_backward(hc, wc, grad)
        ctx.h_dtype, ctx.w_dtype = h.dtype, w.dtype
        aux = None if not auxes or auxes[0] is None else torch.cat(auxes)
        ctx.mark_non_differentiable(*(() if aux is None else (aux,)))
        return (torch.cat(values) if values else h.new_zeros(0, dtype=torch.float32)), aux

    @staticmethod
    def backward(ctx, grad_values, _grad_aux):
        hc, wc, grad = ctx.saved_tensors
        # Each row's upstream factor scales grad's rows; applied to the (N, C) sides of the two products
        # instead, it costs no pass over the [N, V] buffer (which also stays intact for another backward).
        g = grad_values[:, None]  # (N, 1), float32
        grad_h = (grad @ wc) * g  # (N, C)
        grad_w = grad.t() @ (hc * g).to(grad.dtype)  # (V, C)
        return grad_h.to(ctx.h_dtype), grad_w.to(ctx.w_dtype), None, None, None, None


def fused_head(h: torch.Tensor, w: torch.Tensor, targets: torch.Tensor, chunk_fn=nll_chunk,
               dtype: torch.dtype = torch.float32, chunk: int = 128):
    """(values (N,), aux): `FusedHead` over h (N, C), w (V, C), targets (N,); see the module docstring."""
    return FusedHead.apply(h, w, targets, chunk_fn, dtype, chunk)


__all__ = ["FusedHead", "fused_head", "nll_chunk"]
