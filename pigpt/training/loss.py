"""The training loss: GPT-2's tied LM head fused with cross-entropy, a chunk of rows at a time.

With GPT-2's 50257-token vocabulary the head dominates a small model's cost, and the plain path
(`F.cross_entropy(gpt(idx))`) makes it worse: [N, V] logits are written, upcast, log-softmaxed, and a
[N, V] gradient is zero-filled and read back, each a pass over hundreds of MB. Here each chunk of rows
computes its float32 logits, loss and logit gradient (softmax - onehot) in a few in-place passes while the
chunk is in cache, and writes that gradient once, in the compute dtype; two matmuls then give the gradients
of the hidden states and of the embedding matrix, and backward only scales them. The same maths as
cross_entropy (tests/test_train.py checks loss and gradients; benchmarks/train_step.py times both).
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

CHUNK_ROWS = 128  # rows of float32 logits per chunk: 128 x 50257 x 4 B ~ 26 MB, about the size of L3


def hidden_states(gpt, idx: torch.Tensor) -> torch.Tensor:
    """The final-layer-norm output of GPT `gpt` for idx (B, T): (B, T, C), everything but the head."""
    tr = gpt.transformer
    pos = torch.arange(idx.shape[1], device=idx.device)  # (T,)
    x = tr.drop(tr.wte(idx) + tr.wpe(pos))  # (B, T, C)
    for block in tr.h:
        x = block(x)
    return tr.ln_f(x)


class _HeadCrossEntropy(torch.autograd.Function):
    """mean_i CE(h_i @ W.T, t_i), with the gradients computed in forward."""

    @staticmethod
    def forward(ctx, h, w, targets, compute_dtype, chunk):
        # h (N, C), w (V, C), targets (N,)
        N, V = h.shape[0], w.shape[0]
        hc, wc = h.to(compute_dtype), w.to(compute_dtype)
        grad_logits = torch.empty(N, V, dtype=compute_dtype, device=h.device)  # (N, V): softmax - onehot
        total = torch.zeros((), dtype=torch.float32, device=h.device)
        for s in range(0, N, chunk):
            t_s, g_s = targets[s:s + chunk], grad_logits[s:s + chunk]
            logits = (hc[s:s + chunk] @ wc.t()).float()  # (n, V), float32 for the softmax
            target_logit = logits.gather(1, t_s[:, None])  # (n, 1)
            peak = logits.amax(dim=-1, keepdim=True)  # (n, 1)
            exp = logits.sub_(peak).exp_()  # in place: one buffer per chunk, reused while it is in cache
            norm = exp.sum(dim=-1, keepdim=True)  # (n, 1)
            total += (peak + norm.log() - target_logit).sum()
            torch.div(exp, norm, out=g_s)  # softmax, written straight into the compute dtype
            g_s[torch.arange(len(t_s), device=h.device), t_s] -= 1.0
        # Two large matmuls over all rows run faster than per-chunk ones with a (V, C) accumulator.
        grad_h = grad_logits @ wc  # (N, C)
        grad_w = grad_logits.t() @ hc  # (V, C)
        ctx.save_for_backward(grad_h, grad_w)
        ctx.n, ctx.h_dtype, ctx.w_dtype = N, h.dtype, w.dtype
        return total / N

    @staticmethod
    def backward(ctx, grad_out):
        grad_h, grad_w = ctx.saved_tensors
        scale = grad_out / ctx.n
        return (grad_h * scale).to(ctx.h_dtype), (grad_w * scale).to(ctx.w_dtype), None, None, None


def head_loss(h: torch.Tensor, w: torch.Tensor, targets: torch.Tensor, chunk: int | None = None) -> torch.Tensor:
    """Mean cross-entropy of logits h @ w.T against targets; h (N, C), w (V, C), targets (N,).

    The matmuls run in the autocast dtype when autocast is on (bf16 on CPU), the softmax in float32.
    """
    device_type, chunk = h.device.type, chunk or CHUNK_ROWS
    dtype = torch.get_autocast_dtype(device_type) if torch.is_autocast_enabled(device_type) else torch.float32
    with torch.autocast(device_type, enabled=False):
        if torch.is_grad_enabled() and (h.requires_grad or w.requires_grad):
            return _HeadCrossEntropy.apply(h, w, targets, dtype, chunk)
        total = h.new_zeros((), dtype=torch.float32)
        for s in range(0, h.shape[0], chunk):  # no grad (eval): chunks only bound the memory
            logits = (h[s:s + chunk].to(dtype) @ w.to(dtype).t()).float()
            total += F.cross_entropy(logits, targets[s:s + chunk], reduction="sum")
        return total / h.shape[0]


class LossModel(nn.Module):
    """gpt + the fused head loss as one module, so DistributedDataParallel (and torch.compile) can wrap it."""

    def __init__(self, gpt):
        super().__init__()
        self.gpt = gpt

    def forward(self, idx, targets):  # idx, targets (B, T) -> scalar mean loss
        h = hidden_states(self.gpt, idx)  # (B, T, C)
        return head_loss(h.flatten(0, 1), self.gpt.transformer.wte.weight, targets.flatten())
