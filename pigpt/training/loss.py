"""The training loss: GPT-2's tied LM head fused with cross-entropy, a chunk of rows at a time.

The plain path (`F.cross_entropy(gpt(idx))`) writes [N, V] logits, upcasts and log-softmaxes them, and
zero-fills and reads back an [N, V] gradient, each a pass over hundreds of MB. With gradients the loss runs
model/head.py's fused head instead (each chunk's logits, loss and logit gradient softmax - onehot computed
while the chunk is in cache, the gradient written once in the compute dtype). The same maths as
cross_entropy (tests/test_train.py checks loss and gradients; benchmarks/train_step.py times both).
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from pigpt.model.head import fused_head

CHUNK_ROWS = 128  # rows of float32 logits per chunk: 128 x 50257 x 4 B ~ 26 MB, about the size of L3


def hidden_states(gpt, idx: torch.Tensor) -> torch.Tensor:
    """The final-layer-norm output of GPT `gpt` for idx (B, T): (B, T, C), everything but the head."""
    tr = gpt.transformer
    pos = torch.arange(idx.shape[1], device=idx.device)  # (T,)
    x = tr.drop(tr.wte(idx) + tr.wpe(pos))  # (B, T, C)
    for block in tr.h:
        x = block(x)
    return tr.ln_f(x)


def head_loss(h: torch.Tensor, w: torch.Tensor, targets: torch.Tensor, chunk: int | None = None) -> torch.Tensor:
    """Mean cross-entropy of logits h @ w.T against targets; h (N, C), w (V, C), targets (N,).

    The matmuls run in the autocast dtype when autocast is on (bf16 on CPU), the softmax in float32.
    """
    device_type, chunk = h.device.type, chunk or CHUNK_ROWS
    dtype = torch.get_autocast_dtype(device_type) if torch.is_autocast_enabled(device_type) else torch.float32
    with torch.autocast(device_type, enabled=False):
        if torch.is_grad_enabled() and (h.requires_grad or w.requires_grad):
            return fused_head(h, w, targets, dtype=dtype, chunk=chunk, reduction="mean")[0]
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
