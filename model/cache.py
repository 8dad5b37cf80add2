"""A static KV cache: one preallocated buffer per layer, written by position.

Every row of the batch writes its t-th token into slot `pos + t`, so a decode step writes one slot and never
reallocates (no `torch.cat` growth). A ragged batch of prompts is left-padded: row b's first `pad[b]` slots
are padding that no query attends to, and its positions count from its first real token, exactly as
transformers does with an attention mask.
"""

from __future__ import annotations

import torch


class KVCache:
    def __init__(self, n_layer, batch_size, n_head, max_len, head_dim, *, device=None, dtype=torch.float32,
                 pad=None):
        if batch_size < 1 or max_len < 1:
            raise ValueError(f"a KV cache needs batch_size >= 1 and max_len >= 1, got {batch_size}, {max_len}")
        shape = (n_layer, batch_size, n_head, max_len, head_dim)
        self.k = torch.zeros(shape, device=device, dtype=dtype)  # (L, B, nh, S, hs)
        self.v = torch.zeros(shape, device=device, dtype=dtype)
        self.pos = 0  # next slot to write, shared by all rows
        if pad is None:
            self.pad = None
        else:
            pad = torch.as_tensor(pad, dtype=torch.long, device=device).reshape(-1)
            if pad.numel() != batch_size:
                raise ValueError(f"pad has {pad.numel()} entries for a batch of {batch_size}")
            self.pad = pad if bool((pad > 0).any()) else None  # (B,) left-padding slots per row
        self._min_pad = 0 if self.pad is None else int(self.pad.min())

    @property
    def batch_size(self) -> int:
        return self.k.shape[1]

    @property
    def max_len(self) -> int:
        return self.k.shape[3]

    # -- used by the model's forward ------------------------------------------------------------------
    def prepare(self, T: int, block_size: int):
        """Positions and attention mask for T new tokens written at slot `pos`."""
        start, end = self.pos, self.pos + T
        if end > self.max_len:
            raise ValueError(
                f"the KV cache holds {self.max_len} slots but {end} are needed; allocate it with a larger "
                "max_len (prompt length + max_new_tokens)"
            )
        if end - self._min_pad > block_size:
            raise ValueError(
                f"sequence of {end - self._min_pad} tokens exceeds the model's context of {block_size} tokens; "
                "use a shorter prompt or fewer new tokens"
            )
        slots = torch.arange(start, end, device=self.k.device)  # (T,)
        if self.pad is None:
            if T == 1 or start == 0:
                # one query sees every cached key; a prefill from slot 0 is plain causal
                return slots, None if T == 1 else _causal(slots, end)
            return slots, _causal(slots, end)
        pos = (slots[None, :] - self.pad[:, None]).clamp_(min=0)  # (B, T)
        keys = torch.arange(end, device=self.k.device)
        real = keys[None, :] >= self.pad[:, None]  # (B, S)
        mask = _causal(slots, end)[None] & real[:, None, :]  # (B, T, S)
        # A padding query would see no key at all and SDPA would return NaN there, which later layers
        # would read through their (masked, weight 0) values: 0 * NaN = NaN. Let it see itself.
        mask |= keys[None, None, :] == slots[None, :, None]
        return pos, mask[:, None]  # (B, 1, T, S)

    def update(self, layer: int, k: torch.Tensor, v: torch.Tensor):
        """Write k, v [B, nh, T, hs] at the current slots; return this layer's keys/values so far."""
        start, end = self.pos, self.pos + k.shape[2]
        self.k[layer, :, :, start:end] = k
        self.v[layer, :, :, start:end] = v
        return self.k[layer, :, :, :end], self.v[layer, :, :, :end]  # (B, nh, end, hs)

    def advance(self, T: int) -> None:
        self.pos += T

    # -- row bookkeeping: rollouts, beam search, dropping finished rows ------------------------------------
    def select(self, rows: torch.Tensor) -> "KVCache":
        """A new cache whose row i is this cache's row rows[i] (expand, shrink or permute)."""
        rows = torch.as_tensor(rows, dtype=torch.long, device=self.k.device)
        out = KVCache.__new__(KVCache)
        L, _, nh, S, hs = self.k.shape
        # Only slots < pos hold data, and nothing reads past pos before writing it: copy just those, so
        # that expanding a short prompt to many rollouts doesn't write the whole (mostly empty) buffer.
        out.k = self.k.new_empty((L, rows.numel(), nh, S, hs))
        out.v = self.v.new_empty((L, rows.numel(), nh, S, hs))
        used = slice(0, self.pos)
        out.k[:, :, :, used] = self.k[:, :, :, used].index_select(1, rows)
        out.v[:, :, :, used] = self.v[:, :, :, used].index_select(1, rows)
        out.pos = self.pos
        out.pad = None if self.pad is None else self.pad.index_select(0, rows)
        if out.pad is not None and not bool((out.pad > 0).any()):
            out.pad = None
        out._min_pad = 0 if out.pad is None else int(out.pad.min())
        return out

    def expand(self, n: int) -> "KVCache":
        """Repeat every row n times (row b -> rows b*n .. b*n+n-1): one prefill shared by n rollouts."""
        return self.select(torch.arange(self.batch_size, device=self.k.device).repeat_interleave(n))

    def reorder_(self, rows: torch.Tensor) -> None:
        """In place: row i becomes old row rows[i] (beam search). Copies only the slots in use, and only
        the rows that change (beams often keep their place)."""
        rows = torch.as_tensor(rows, dtype=torch.long, device=self.k.device)
        if rows.numel() != self.batch_size:
            raise ValueError(f"reorder_ needs {self.batch_size} row indices, got {rows.numel()}")
        moved = torch.nonzero(rows != torch.arange(rows.numel(), device=rows.device))[:, 0]  # (M,)
        if moved.numel():
            src, used = rows[moved], slice(0, self.pos)
            # gather the sources first: a moved row may be another moved row's source
            _put_rows(self.k[:, :, :, used], moved, src)  # writes through the view into the buffer
            _put_rows(self.v[:, :, :, used], moved, src)
        if self.pad is not None:
            self.pad = self.pad.index_select(0, rows)


def _put_rows(x: torch.Tensor, dst: torch.Tensor, src: torch.Tensor) -> None:
    """In place: x's rows dst (dim 1) become copies of its rows src, gathered before any is written.

    Layer by layer: the gathered copy is then one layer's rows (~1 MB), which the allocator reuses,
    rather than every layer's (tens of MB), which it maps fresh and page-faults in on every step.
    """
    for layer in x:  # (B, nh, S_used, hs)
        layer.index_copy_(0, dst, layer.index_select(0, src))


def _causal(slots: torch.Tensor, end: int) -> torch.Tensor:
    keys = torch.arange(end, device=slots.device)
    return keys[None, :] <= slots[:, None]  # (T, S)
