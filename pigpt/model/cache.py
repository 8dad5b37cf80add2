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
        out.k, out.v = _take_rows(self.k, self.v, rows, self.pos)
        out.pos = self.pos
        out.pad = None if self.pad is None else self.pad.index_select(0, rows)
        if out.pad is not None and not bool((out.pad > 0).any()):
            out.pad = None
        out._min_pad = 0 if out.pad is None else int(out.pad.min())
        return out

    def share(self, prompt_of_row: torch.Tensor) -> "SharedPrefixKVCache":
        """A decode cache for rows continuing this cache's rows (prompts): row r continues prompt_of_row[r].
        The prompts' keys and values are shared by their rows, not copied (SharedPrefixKVCache)."""
        prompt_of_row = torch.as_tensor(prompt_of_row, dtype=torch.long, device=self.k.device)
        return SharedPrefixKVCache(self, prompt_of_row, self.max_len - self.pos)

    def expand(self, n: int) -> "KVCache":
        """Repeat every row n times (row b -> rows b*n .. b*n+n-1): one prefill shared by n rollouts."""
        return self.select(torch.arange(self.batch_size, device=self.k.device).repeat_interleave(n))

    def reorder_(self, rows: torch.Tensor) -> None:
        """In place: row i becomes old row rows[i] (beam search). Copies only the slots in use, and only
        the rows that change (beams often keep their place)."""
        rows = _reorder_rows_(self.k, self.v, rows, self.pos)
        if self.pad is not None:
            self.pad = self.pad.index_select(0, rows)


def _take_rows(k: torch.Tensor, v: torch.Tensor, rows: torch.Tensor, pos: int):
    """New buffers whose row i is row rows[i] of k, v (L, B, nh, S, hs).

    Only slots < pos hold data, and nothing reads past pos before writing it: copy just those, so that
    expanding a short prompt to many rows doesn't write the whole (mostly empty) buffer.
    """
    L, _, nh, S, hs = k.shape
    out_k, out_v = k.new_empty((L, rows.numel(), nh, S, hs)), v.new_empty((L, rows.numel(), nh, S, hs))
    out_k[:, :, :, :pos] = k[:, :, :, :pos].index_select(1, rows)
    out_v[:, :, :, :pos] = v[:, :, :, :pos].index_select(1, rows)
    return out_k, out_v


def _reorder_rows_(k: torch.Tensor, v: torch.Tensor, rows, pos: int) -> torch.Tensor:
    """In place: row i of k, v (L, B, nh, S, hs) becomes old row rows[i]; returns rows as a tensor.
    Copies only the slots in use, and only the rows that change (beams often keep their place)."""
    rows = torch.as_tensor(rows, dtype=torch.long, device=k.device)
    if rows.numel() != k.shape[1]:
        raise ValueError(f"reorder_ needs {k.shape[1]} row indices, got {rows.numel()}")
    moved = torch.nonzero(rows != torch.arange(rows.numel(), device=rows.device))[:, 0]  # (M,)
    if moved.numel():
        # gather the sources first: a moved row may be another moved row's source
        _put_rows(k[:, :, :, :pos], moved, rows[moved])  # writes through the view into the buffer
        _put_rows(v[:, :, :, :pos], moved, rows[moved])
    return rows


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


class SharedPrefixKVCache:
    """A decode cache for many rows that continue a few prompts: each prompt's KV is stored and read once.

    n rollouts (or beams) of one prompt share its prefill. A plain KVCache copies the prompt's keys and
    values into every row and a decode step reads all n copies; here the prompt part (`pk`, `pv`: one row
    per prompt) is kept apart from each row's own generated part (`k`, `v`), and a step scores a prompt's
    keys for all its rows in one matrix product. For a 512-token prompt and 64 rollouts that is ~38 MB of
    prompt KV read a step instead of ~2.4 GB (GPT-2 small, float32). Decode only (one token a step).

    Row r continues prompt `prompt[r]`; prompt p's first `ppad[p]` slots are left padding (never attended).
    """

    def __init__(self, prefix: KVCache, prompt_of_row: torch.Tensor, max_new: int):
        L, Bp, nh, _, hs = prefix.k.shape
        P = prefix.pos
        if max_new < 1:
            raise ValueError(f"a shared-prefix cache needs room for >= 1 new token, got {max_new}")
        self.pk, self.pv = prefix.k[:, :, :, :P], prefix.v[:, :, :, :P]  # (L, Bp, nh, P, hs), views
        self.ppad = prefix.pad  # (Bp,) or None
        B = prompt_of_row.numel()
        self.k = prefix.k.new_empty((L, B, nh, max_new, hs))  # (L, B, nh, T, hs) each row's own tokens
        self.v = prefix.v.new_empty((L, B, nh, max_new, hs))
        self.pos = 0  # next own slot, shared by all rows
        self._set_rows(prompt_of_row)

    def _set_rows(self, prompt_of_row: torch.Tensor) -> None:
        """Index the rows by prompt: a (prompts, n_max) table of rows (padded with row 0) and each row's
        place in it, so that every prompt's rows meet its keys in one batched product, with no Python loop
        over prompts. Prompts left without rows are dropped from the prefix (one copy, here, not a step)."""
        used, prompt = torch.unique(prompt_of_row, sorted=True, return_inverse=True)
        if used.numel() < self.pk.shape[1]:
            self.pk, self.pv = self.pk.index_select(1, used), self.pv.index_select(1, used)
            self.ppad = None if self.ppad is None else self.ppad.index_select(0, used)
        self.prompt = prompt  # (B,) index into pk's prompts
        Bp, B, device = used.numel(), prompt.numel(), prompt.device
        counts = torch.bincount(prompt, minlength=Bp)
        order = torch.argsort(prompt, stable=True)  # rows grouped by prompt
        rank = torch.empty_like(order)
        rank[order] = torch.arange(B, device=device) - (counts.cumsum(0) - counts)[prompt[order]]
        n_max = int(counts.max())
        self._slot = prompt * n_max + rank  # (B,) row -> flat place in the table
        table = torch.zeros(Bp * n_max, dtype=torch.long, device=device)
        table[self._slot] = torch.arange(B, device=device)
        self._table = table.view(Bp, n_max)
        P = self.pk.shape[3]
        self._start = P if self.ppad is None else (P - self.ppad).index_select(0, prompt)  # row positions
        self._longest = P - (0 if self.ppad is None else int(self.ppad.min()))  # longest real prompt

    @property
    def batch_size(self) -> int:
        return self.k.shape[1]

    @property
    def max_len(self) -> int:
        return self.pk.shape[3] + self.k.shape[3]

    def prepare(self, T: int, block_size: int):
        if T != 1:
            raise ValueError("a shared-prefix cache decodes one token a step; prefill with a KVCache")
        if self.pos + 1 > self.k.shape[3]:
            raise ValueError(f"the shared-prefix cache holds {self.k.shape[3]} new tokens a row; "
                             "allocate it with a larger max_new")
        longest = self._longest + self.pos + 1  # no host sync: decode steps stay free of them
        if longest > block_size:
            raise ValueError(f"sequence of {longest} tokens exceeds the model's context of {block_size} tokens; "
                             "use a shorter prompt or fewer new tokens")
        pos = self._start + self.pos  # () or (B,)
        return (pos.reshape(-1, 1) if torch.is_tensor(pos) else torch.tensor([pos], device=self.k.device)), None

    def update(self, layer: int, k: torch.Tensor, v: torch.Tensor):
        """Write this step's k, v [B, nh, 1, hs]; return the rows' own keys/values so far (B, nh, pos+1, hs)."""
        self.k[layer, :, :, self.pos:self.pos + 1] = k
        self.v[layer, :, :, self.pos:self.pos + 1] = v
        return self.k[layer, :, :, :self.pos + 1], self.v[layer, :, :, :self.pos + 1]

    def attend(self, layer: int, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float):
        """One query a row, q [B, nh, 1, hs], over its prompt's keys and its own k, v [B, nh, S, hs].

        Scores for both parts go through one softmax (concatenated along the keys), so this is exactly
        attention over the row's whole sequence; only the order of reading differs.
        """
        pk, pv = self.pk[layer], self.pv[layer]  # (Bp, nh, P, hs)
        B, nh, _, hs = q.shape
        Bp, n_max = self._table.shape
        P = pk.shape[2]
        qg = q[:, :, 0][self._table].transpose(1, 2)  # (Bp, nh, n_max, hs): each prompt's rows
        s_pre = torch.matmul(qg, pk.transpose(-1, -2))  # (Bp, nh, n_max, P): the prompt's keys read once
        s_pre = s_pre.transpose(1, 2).reshape(Bp * n_max, nh, 1, P)[self._slot]  # (B, nh, 1, P)
        s_own = torch.matmul(q, k.transpose(-1, -2))  # (B, nh, 1, S)
        att = torch.cat((s_pre, s_own), -1).mul_(scale)  # (B, nh, 1, P + S)
        if self.ppad is not None:
            hidden = torch.arange(P, device=q.device)[None, :] < self.ppad.index_select(0, self.prompt)[:, None]
            att[..., :P].masked_fill_(hidden[:, None, None, :], float("-inf"))
        att = att.softmax(-1)
        a_pre = att.new_zeros((Bp * n_max, nh, P))  # table places without a row stay 0
        a_pre[self._slot] = att[:, :, 0, :P]
        y_pre = torch.matmul(a_pre.view(Bp, n_max, nh, P).transpose(1, 2), pv)  # (Bp, nh, n_max, hs)
        y_pre = y_pre.transpose(1, 2).reshape(Bp * n_max, nh, hs)[self._slot]  # (B, nh, hs)
        return torch.matmul(att[..., P:], v).add_(y_pre[:, :, None])  # (B, nh, 1, hs)

    def advance(self, T: int) -> None:
        self.pos += T

    def select(self, rows: torch.Tensor) -> "SharedPrefixKVCache":
        """A new cache whose row i is this cache's row rows[i]; the prompt part is shared, not copied."""
        rows = torch.as_tensor(rows, dtype=torch.long, device=self.k.device)
        out = SharedPrefixKVCache.__new__(SharedPrefixKVCache)
        out.pk, out.pv, out.ppad, out.pos = self.pk, self.pv, self.ppad, self.pos
        out.k, out.v = _take_rows(self.k, self.v, rows, self.pos)
        out._set_rows(self.prompt.index_select(0, rows))
        return out

    def reorder_(self, rows: torch.Tensor) -> None:
        """In place: row i becomes old row rows[i] (beam search: rows stay with their prompt)."""
        rows = _reorder_rows_(self.k, self.v, rows, self.pos)
        prompt = self.prompt.index_select(0, rows)
        if not torch.equal(prompt, self.prompt):
            self._set_rows(prompt)
