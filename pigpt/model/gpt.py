"""A minimal GPT-2 in PyTorch, with a static KV cache for fast decoding.

Module and parameter names match Hugging Face's GPT2LMHeadModel checkpoints
(`transformer.h.0.attn.c_attn.weight`, ...) and so do the weight layouts: GPT-2 stores its projections as
Conv1D with weights [in, out], and we keep that layout because `addmm` with [in, out] weights is also the
fastest float32 matrix-vector product on CPU. At more than one row (prefill, n rollouts, beams) CPU inference
uses oneDNN with weights prepacked into its blocked layout instead (model/packed.py), and a decode step of a
few rows runs in a few C kernels (model/cpu_decode.py) where they can be built. `quantize("int8")` keeps the
linear weights as int8 with per-channel scales (model/quant.py).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields

import torch
import torch.nn as nn
import torch.nn.functional as F
from einops import rearrange

from . import cpu_decode, invariant, packed, quant
from .cache import KVCache, SharedPrefixKVCache


@dataclass
class GPTConfig:
    block_size: int = 1024  # context length (n_positions)
    vocab_size: int = 50257
    n_layer: int = 12
    n_head: int = 12
    n_embd: int = 768
    n_inner: int | None = None  # MLP width; None means 4 * n_embd
    layer_norm_epsilon: float = 1e-5
    activation: str = "gelu_new"  # GPT-2's tanh approximation of GELU
    dropout: float = 0.0
    scale_attn_by_inverse_layer_idx: bool = False
    bos_token_id: int = 50256
    eos_token_id: int = 50256

    def __post_init__(self):
        for name in ("block_size", "vocab_size", "n_layer", "n_head", "n_embd"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"GPTConfig.{name} must be a positive integer, got {value!r}")
        if self.n_embd % self.n_head:
            raise ValueError(
                f"GPTConfig.n_embd ({self.n_embd}) must be divisible by n_head ({self.n_head})"
            )
        if self.activation not in _ACTIVATIONS:
            raise ValueError(
                f"GPTConfig.activation {self.activation!r} is not supported; use one of {sorted(_ACTIVATIONS)}"
            )
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"GPTConfig.dropout must be in [0, 1), got {self.dropout}")

    @property
    def head_dim(self) -> int:
        return self.n_embd // self.n_head

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "GPTConfig":
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in known})


_ACTIVATIONS = {
    "gelu_new": lambda x: F.gelu(x, approximate="tanh"),
    "gelu_pytorch_tanh": lambda x: F.gelu(x, approximate="tanh"),
    "gelu_fast": lambda x: F.gelu(x, approximate="tanh"),
    "gelu": F.gelu,
    "relu": F.relu,
}


class Conv1D(nn.Module):
    """GPT-2's linear layer: weight [in, out], y = act(x @ W + b), `act` a name from _ACTIVATIONS.

    After `quantize_()` the weight is int8 instead: `qweight` [out, in] with one float32 scale per output
    channel (`qscale`, stored as int32 bits: see quant.scale_bits), and `weight` is None."""

    def __init__(self, n_in: int, n_out: int):
        super().__init__()
        self.weight = nn.Parameter(torch.empty(n_in, n_out))
        self.bias = nn.Parameter(torch.zeros(n_out))
        nn.init.normal_(self.weight, std=0.02)
        self.register_buffer("qweight", None)
        self.register_buffer("qscale", None)
        self.use_packed = True  # GPT._settle_storage sets it from GPT.packed_weights
        self.use_kernels = True  # GPT.cpu_kernels sets it: int8 products in the CPU kernels (quant.linear)
        self._packed = packed.DerivedWeight()
        self.invariant = False  # GPT.batch_invariant sets it
        self._panels = packed.DerivedWeight()  # the batch-invariant kernels' copy of the weight

    def quantize_(self, weight: torch.Tensor | None = None, work: torch.Tensor | None = None) -> None:
        """int8 from `weight` [in, out] (default: this layer's own; from_pretrained passes each as it reads it,
        so that the float weight is never a parameter). `work`: quant.quantize_rows's buffer, shared by a load."""
        if weight is None and self.qweight is not None:  # already int8
            return
        w = self.weight if weight is None else weight
        q, scale = quant.quantize_rows(w.t(), work=work)  # per output channel: rows of [out, in]
        self.qweight, self.qscale = q, quant.scale_bits(scale)
        self.register_parameter("weight", None)
        self._packed.clear()

    def scales(self) -> torch.Tensor:
        return self.qscale.view(torch.float32)

    def forward(self, x, act: str | None = None):
        if self.invariant:
            w = self.weight
            return invariant.linear(x, w, self.bias, self._panels.get(w, invariant.panels), act)
        if self.qweight is not None:
            y = quant.linear(x, self.qweight, self.scales(), self.bias, self._packed if self.use_packed else None,
                             self.use_kernels)
            return _ACTIVATIONS[act](y) if act else y
        w = self.weight
        if self.use_kernels and (y := cpu_decode.many_rows(x, w, self.bias, act)) is not None:
            return y
        if self.use_packed and packed.preferred(x, w):
            return packed.linear(x, self._packed.get(w, lambda w: packed.reorder(w.t())), self.bias, act)
        shape = x.shape[:-1] + (w.shape[1],)
        x2 = x.reshape(-1, x.shape[-1])
        if packed.widened(w):
            y = torch.addmm(self.bias.float(), x2.float(), w.float()).to(w.dtype).view(shape)
        else:
            y = torch.addmm(self.bias, x2, w).view(shape)
        return _ACTIVATIONS[act](y) if act else y


class CausalSelfAttention(nn.Module):
    def __init__(self, config: GPTConfig, layer_idx: int):
        super().__init__()
        self.n_head = config.n_head
        self.layer_idx = layer_idx
        self.c_attn = Conv1D(config.n_embd, 3 * config.n_embd)
        self.c_proj = Conv1D(config.n_embd, config.n_embd)
        self.dropout = config.dropout
        self.resid_dropout = nn.Dropout(config.dropout)
        self.scale = config.head_dim**-0.5
        if config.scale_attn_by_inverse_layer_idx:
            self.scale /= layer_idx + 1
        self.invariant = False  # GPT.batch_invariant sets it

    def forward(self, x, cache: KVCache | None = None, mask=None):
        q, k, v = rearrange(self.c_attn(x), "b t (three nh hs) -> three b nh t hs", three=3, nh=self.n_head)
        if cache is not None:
            k, v = cache.update(self.layer_idx, k, v)  # (B, nh, S_used, hs)
            if k.dtype != q.dtype:  # a cache in another dtype than the activations (GPT.kv_dtype)
                if self.invariant:
                    raise invariant.InvariantError("batch-invariant mode reads a float32 KV cache: set "
                                                   "model.kv_dtype = None (or torch.float32)")
                if q.shape[2] > 1:  # a prompt, once: its attention in the activations' dtype
                    k, v = k.to(q.dtype), v.to(q.dtype)
                else:  # a step: in the cache's, rather than converting every key each step
                    q = q.to(k.dtype)
        if self.invariant:  # keys in position order from the first real one: the mask is implied
            return self.resid_dropout(self.c_proj(invariant.attention(q, k, v, self.scale, cache, self.layer_idx)))
        if isinstance(cache, SharedPrefixKVCache):  # rows' own keys here, their prompt's inside the cache
            y = cache.attend(self.layer_idx, q, k, v, self.scale)
        elif cache is not None and q.shape[2] == 1 and q.shape[0] >= 16 and q.device.type == "cpu":
            y = _one_query_attention(q, k, v, mask, self.scale)
        else:
            y = F.scaled_dot_product_attention(
                q, k, v,
                attn_mask=mask,
                is_causal=cache is None and mask is None,
                dropout_p=self.dropout if self.training else 0.0,
                scale=self.scale,
            )  # (B, nh, T, hs)
        y = rearrange(y, "b nh t hs -> b t (nh hs)").to(x.dtype)  # (from the cache's dtype, after a step in it)
        return self.resid_dropout(self.c_proj(y))


def _one_query_attention(q, k, v, mask, scale):
    """A decode step's attention as two batched matmuls: q (B, nh, 1, hs), k/v (B, nh, S, hs).

    SDPA's CPU kernel is 10-30% slower than this for one query a row once B is large (B = 64, S = 80-140,
    measured), and the step reads the whole cache, so it is worth a few lines; below B = 16 SDPA wins.
    """
    att = torch.matmul(q, k.transpose(-1, -2)).mul_(scale)  # (B, nh, 1, S)
    if mask is not None:  # (B, 1, 1, S) True = attend
        att.masked_fill_(~mask, float("-inf"))
    return torch.matmul(att.softmax(-1), v)  # (B, nh, 1, hs)


class MLP(nn.Module):
    def __init__(self, config: GPTConfig):
        super().__init__()
        inner = config.n_inner or 4 * config.n_embd
        self.c_fc = Conv1D(config.n_embd, inner)
        self.c_proj = Conv1D(inner, config.n_embd)
        self.act = config.activation
        self.dropout = nn.Dropout(config.dropout)

    def forward(self, x):
        return self.dropout(self.c_proj(self.c_fc(x, act=self.act)))  # act fused into c_fc where it can be


class Block(nn.Module):
    def __init__(self, config: GPTConfig, layer_idx: int):
        super().__init__()
        self.ln_1 = nn.LayerNorm(config.n_embd, eps=config.layer_norm_epsilon)
        self.attn = CausalSelfAttention(config, layer_idx)
        self.ln_2 = nn.LayerNorm(config.n_embd, eps=config.layer_norm_epsilon)
        self.mlp = MLP(config)
        self.invariant = False  # GPT.batch_invariant sets it

    def forward(self, x, cache=None, mask=None):
        if self.invariant:
            x = x + self.attn(invariant.layer_norm(x, self.ln_1), cache, mask)
            return x + self.mlp(invariant.layer_norm(x, self.ln_2))
        x = x + self.attn(self.ln_1(x), cache, mask)
        return x + self.mlp(self.ln_2(x))


class GPT(nn.Module):
    """GPT-2. `gpt(idx)` with idx [B, T] returns logits [B, T, vocab_size]."""

    def __init__(self, config: GPTConfig):
        super().__init__()
        self.config = config
        self.transformer = nn.ModuleDict(dict(
            wte=nn.Embedding(config.vocab_size, config.n_embd),
            wpe=nn.Embedding(config.block_size, config.n_embd),
            drop=nn.Dropout(config.dropout),
            h=nn.ModuleList(Block(config, i) for i in range(config.n_layer)),
            ln_f=nn.LayerNorm(config.n_embd, eps=config.layer_norm_epsilon),
        ))
        self.apply(self._init_weights)
        # GPT-2's scaled init of the residual projections (1/sqrt(2 * n_layer)).
        for name, p in self.named_parameters():
            if name.endswith("c_proj.weight"):
                nn.init.normal_(p, mean=0.0, std=0.02 / math.sqrt(2 * config.n_layer))
        self._head_t = packed.DerivedWeight()  # [C, V] for one-row float32: x @ W beats F.linear's [V, C] here
        self._head_packed = packed.DerivedWeight()
        self._packed_weights = None  # packed_weights as set; None: automatic (see the property)
        self._kv_dtype = None  # kv_dtype: None, the default for the model's weights
        # quantize(): the int8 copy of wte ([V, C] and per-row scales as int32 bits) that the LM head and the
        # embedding lookup read; wte itself is then emptied
        self.register_buffer("lm_head_qweight", None)
        self.register_buffer("lm_head_qscale", None)
        self._cpu_kernels = True
        self._cpu_plan = None  # cpu_decode.Plan, False where the kernels can't take this model, None: not built
        self._out_major = None  # whether the Conv1D weights are stored [out, in] (_settle_storage); None: not settled
        self._batch_invariant = False
        self._head_panels = packed.DerivedWeight()  # the batch-invariant kernels' copy of wte^T

    @staticmethod
    def _init_weights(module):
        if isinstance(module, nn.Embedding):
            nn.init.normal_(module.weight, std=0.02)
        elif isinstance(module, nn.LayerNorm):
            nn.init.ones_(module.weight)
            nn.init.zeros_(module.bias)

    # -- properties -------------------------------------------------------------------------------------
    @property
    def device(self) -> torch.device:
        return self.transformer.wte.weight.device

    @property
    def dtype(self) -> torch.dtype:
        return self.transformer.wte.weight.dtype

    def num_params(self, non_embedding: bool = True) -> int:
        n = sum(p.numel() for p in self.parameters())
        n += sum(m.qweight.numel() for m in self.modules() if isinstance(m, Conv1D) and m.qweight is not None)
        n += self.lm_head_qweight.numel() if self.lm_head_qweight is not None else 0  # wte's place
        return n - self.transformer.wpe.weight.numel() if non_embedding else n

    @property
    def quantized(self) -> str | None:
        """The quantization mode of the weights ("int8"), or None for float weights."""
        return "int8" if self.lm_head_qweight is not None else None

    # -- forward ----------------------------------------------------------------------------------------
    def forward(self, idx: torch.Tensor, cache: KVCache | None = None, *, last_only: bool = False):
        """Logits for `idx` [B, T].

        With `cache`, the T tokens are written at the cache's current position (per-row positions come from
        its left padding) and attend to everything cached before them; the cache then advances by T.
        `last_only` returns logits for the last position only ([B, 1, V]), as generation needs. Logits are in
        the model's dtype, or float32 where the CPU decode kernels computed them (see `lm_head`).
        """
        x = self._hidden(idx, cache)  # (B, T, C)
        return self.lm_head(x[:, -1:] if last_only else x)

    def hidden(self, idx: torch.Tensor, cache: KVCache | None = None) -> torch.Tensor:
        """The final hidden states (after ln_f) for `idx` [B, T]: (B, T, C). `forward` is lm_head(hidden(...));
        callers that need logits at a few positions only (scoring a completion) select them first, so the
        [T, vocab] head product is computed where it is read."""
        return self._hidden(idx, cache).to(self.dtype)

    def _hidden(self, idx, cache):
        """hidden(), except that a step of the CPU decode kernels returns its float32 states uncast."""
        if not isinstance(idx, torch.Tensor) or idx.dim() != 2:
            got = tuple(idx.shape) if isinstance(idx, torch.Tensor) else type(idx).__name__
            raise ValueError(f"idx must be a LongTensor of shape [batch, time], got {got}")
        B, T = idx.shape
        cfg = self.config
        self._settle_storage()
        if self._batch_invariant:
            invariant.check(self)  # a .to() since it was turned on may have left float32 or the CPU
        if self.quantized and torch.is_grad_enabled() and any(p.requires_grad for p in self.parameters()):
            raise ValueError("this model's weights are quantized (int8): it runs inference only, with no gradients; "
                             "run it under torch.no_grad(), or use the float model to train or differentiate")
        if cache is not None and T == 1 and (plan := self._plan_for(B)):
            desc = cpu_decode.cache_desc(cache)
            if desc is not None:
                pos, _ = cache.prepare(1, cfg.block_size)  # (1,) or (B, 1); checks the cache has room
                x = (self.embed(idx) + self.transformer.wpe(pos)).float().reshape(B, cfg.n_embd)
                cpu_decode.decode(plan, x, cache, desc)
                cache.advance(1)
                return x.view(B, 1, cfg.n_embd)
        if cache is None:
            self._check_tokens(idx)
            if T > cfg.block_size:
                raise ValueError(
                    f"input of {T} tokens is longer than the model's context of {cfg.block_size} tokens; "
                    f"shorten the prompt or keep its last {cfg.block_size} tokens"
                )
            pos = torch.arange(T, device=idx.device)  # (T,)
            mask = None
        else:
            if T > 1:  # prefill: validate once; decode steps stay free of host syncs
                self._check_tokens(idx)
            pos, mask = cache.prepare(T, cfg.block_size)  # (T,) or (B, T); None or (B, 1, T, S)
        x = self.embed(idx) + self.transformer.wpe(pos)  # (B, T, C)
        x = self.transformer.drop(x)
        for block in self.transformer.h:
            x = block(x, cache, mask)
        if cache is not None:
            cache.advance(T)
        if self._batch_invariant:
            return invariant.layer_norm(x, self.transformer.ln_f)
        return self.transformer.ln_f(x)

    def embed(self, idx: torch.Tensor) -> torch.Tensor:
        """Token embeddings (B, T, C) in the model's dtype: rows of wte, or for an int8 model rows of its int8
        copy times their scales (as llama.cpp's q8_0 models read their token embeddings)."""
        if self.lm_head_qweight is None:
            return self.transformer.wte(idx)
        scale = self.lm_head_qscale.view(torch.float32)[idx]  # (B, T)
        return (self.lm_head_qweight[idx].float() * scale[..., None]).to(self.dtype)

    def lm_head(self, x):
        """Tied output projection: x @ wte.T (the int8 copy of wte when quantized). Logits in the model's dtype,
        except that the CPU decode kernels return theirs in float32, which they compute in: rounding 50k logits
        to bfloat16 would only lose precision, and cost a parallel pass each step that the caller's .float()
        then undoes (~2x a bfloat16 step's time on a loaded 2-core machine, measured)."""
        if self._batch_invariant:
            w = self.transformer.wte.weight
            return invariant.linear(x, w.t(), None, self.invariant_head_panels())
        if not x.requires_grad and (plan := self._plan_for(x.numel() // x.shape[-1])):
            logits = cpu_decode.head(plan, x.reshape(-1, x.shape[-1]).float().contiguous())
            return logits.view(*x.shape[:-1], logits.shape[1])
        w = self.transformer.wte.weight
        x = x.to(w.dtype)
        if self.lm_head_qweight is not None:
            return quant.linear(x, self.lm_head_qweight, self.lm_head_qscale.view(torch.float32), None,
                                self._head_packed if self.packed_weights else None, self._cpu_kernels)
        if self.packed_weights and packed.preferred(x, w):
            return packed.linear(x, self._head_packed.get(w, packed.reorder), None)  # wte is [V, C] already
        if packed.widened(w):
            return F.linear(x.float(), w.float()).to(w.dtype)
        if ((torch.is_grad_enabled() and w.requires_grad) or not packed.settled(w) or w.dtype != torch.float32
                or w.device.type != "cpu"):
            return F.linear(x, w)  # training (or a step pending), GPUs, and CPU dtypes oneDNN doesn't take
        head_t = self._head_t.get(w, lambda w: w.t().contiguous())  # (C, V)
        # 2-D: matmul would broadcast a strided 3-D x into a batched product with the weight expanded
        return (x.reshape(-1, x.shape[-1]) @ head_t).view(*x.shape[:-1], head_t.shape[1])

    @property
    def kv_dtype(self) -> torch.dtype:
        """The KV cache's dtype (new_cache): the model's dtype, except bfloat16 for an int8 model (its activations
        stay float32; llama.cpp's q8_0 models keep an f16 cache too). Keys and values are then stored rounded to
        bfloat16 in half the bytes: at n = 64 rollouts of 128 tokens of GPT-2 small a float32 cache is 604 MB, ~55% of
        the peak. Steps read half the bytes too (int8: n = 8 9% faster, batch 1 2%). The CPU kernels' steps attend in
        float32 over the stored keys; torch's path attends over a prompt in the activations' dtype and over a
        step's keys in the cache's. Set it (torch.float32 or torch.bfloat16) to choose; None: the default."""
        if self._kv_dtype is not None:
            return self._kv_dtype
        return torch.bfloat16 if self.quantized else self.dtype

    @kv_dtype.setter
    def kv_dtype(self, dtype: torch.dtype | None) -> None:
        if dtype not in (None, torch.float32, torch.bfloat16):
            raise ValueError(f"kv_dtype {dtype} is not one pigpt keeps a KV cache in; use torch.float32, "
                             "torch.bfloat16, or None for the model's default")
        self._kv_dtype = dtype

    @property
    def packed_weights(self) -> bool:
        """Whether CPU inference keeps copies of the weights in faster layouts: oneDNN-blocked copies for the
        torch path (faster at more than one row), and for a bfloat16 model on a CPU with avx512_bf16 the decode
        kernels' pair-blocked copies. Each is a second copy of the weight in memory.

        By default (None) it is on, except for a bfloat16 model on a CPU with avx512_bf16 where the kernels load:
        there the decode kernels read the weights themselves, stored [out, in] (dot products on each output's row
        of weights), in the memory llama.cpp takes (GPT-2 small at one row: peak 318 MB less torch's own, 1.14x of
        llama.cpp's, against 557 MB with the copies) and at its speed or better (Zen 4, 2 threads: batch 1 1.08x of
        llama.cpp, n = 8 1.64x, n = 64 1.40x; with the copies 1.11x, 2.01x, 1.63x; bench_generate.py --copies).
        Set True for the copies' speed, False to save their memory in every precision."""
        if self._packed_weights is not None:
            return self._packed_weights
        return not (self.dtype == torch.bfloat16 and not self.quantized and self.device.type == "cpu"
                    and self._cpu_kernels and cpu_decode.load() is not None and cpu_decode.has_avx512bf16())

    @packed_weights.setter
    def packed_weights(self, on: bool | None) -> None:
        self._packed_weights = None if on is None else bool(on)
        self.clear_weight_caches()  # Conv1D.use_packed and the weights' storage follow on the next forward

    def clear_weight_caches(self) -> None:
        """Drop the inference copies of the weights (blocked, transposed head) and the CPU kernels' pointers to
        them; they are rebuilt on next use. Needed only after assigning weights through `.data`, which no
        cache key can see."""
        for m in self.modules():
            if isinstance(m, Conv1D):
                m._packed.clear()
                m._panels.clear()
        self._head_packed.clear()
        self._head_t.clear()
        self._head_panels.clear()
        self._cpu_plan = self._out_major = None

    @property
    def cpu_kernels(self) -> bool:
        """Whether CPU decode steps of up to Plan.max_rows rows (cpu_decode.MAX_ROWS; and the LM head at those rows)
        run in the C kernels of model/cpu_decode.py where they can be built, and an int8 model's other products too
        (quant.linear), and a float model's products of up to cpu_decode.MANY_ROWS rows outside decode steps (a
        prompt's prefill) where those are faster; else the torch path runs."""
        return self._cpu_kernels

    @cpu_kernels.setter
    def cpu_kernels(self, on: bool) -> None:
        self._cpu_kernels = bool(on)
        self._cpu_plan = self._out_major = None
        for m in self.modules():
            if isinstance(m, Conv1D):
                m.use_kernels = self._cpu_kernels

    @property
    def batch_invariant(self) -> bool:
        """Whether every op computes a row's result in a fixed order that depends on that row alone
        (model/invariant.py): a rollout's tokens and log-probs are then the same bits drawn alone or in any batch,
        and score() gives exactly the log-probs generate drew with. Float32 on the CPU."""
        return self._batch_invariant

    @batch_invariant.setter
    def batch_invariant(self, on: bool) -> None:
        on = bool(on)
        if on:
            invariant.check(self)
        self._batch_invariant = on
        for m in self.modules():
            if isinstance(m, (Conv1D, CausalSelfAttention, Block)):
                m.invariant = on
                if isinstance(m, Conv1D) and not on:
                    m._panels.clear()  # the kernels' copies of the weights: freed when the mode goes off
        if not on:
            self._head_panels.clear()

    def invariant_head_panels(self) -> torch.Tensor:
        """wte^T as the batch-invariant kernels read it (a cached copy, rebuilt when wte changes)."""
        return self._head_panels.get(self.transformer.wte.weight, lambda w: invariant.panels(w.t()))

    def _settle_storage(self) -> None:
        """Store the Conv1D weights the way this model's CPU products read them, before any of them runs: [out, in]
        for a bfloat16 model without copies on a CPU with avx512_bf16 (each output's weights in one row, for the
        dot-product tiles: cpu_decode.NK_DOTS), else [in, out]. The values and shapes stay; only the strides change
        (the parameter is then a transposed view). Settled on the first forward after a change of dtype, device,
        packed_weights or cpu_kernels, so that a prompt's products and a decode step's read one layout on every
        call (the same seed, the same bits, on the first call as on later ones)."""
        if self._out_major is not None:
            return
        copies = self.packed_weights
        want = (self._cpu_kernels and not copies and self.dtype == torch.bfloat16
                and self.device.type == "cpu" and cpu_decode.load() is not None and cpu_decode.has_avx512bf16())
        for m in self.modules():
            if isinstance(m, Conv1D):
                m.use_packed = copies
                if m.weight is not None:
                    cpu_decode.store_out_major(m.weight, want)
        self._out_major = want
        self._cpu_plan = None  # its pointers may be to the old storage

    def _plan_for(self, rows: int):
        """The CPU kernels' plan when a step of `rows` rows can run in them: inference on the CPU (no gradients
        needed, no autocast), float32/bfloat16 or int8 weights, kernels built for this machine."""
        if self._batch_invariant:
            return None
        if not self._cpu_kernels or self.training or self._cpu_plan is False:
            return None
        if torch.is_autocast_enabled("cpu") or (torch.is_grad_enabled() and self.transformer.wte.weight.requires_grad):
            return None
        if self._cpu_plan is None or not self._cpu_plan.fresh():
            self._cpu_plan = None  # free the old copies before building new ones
            ok = cpu_decode.load() is not None and cpu_decode.supports(self)
            self._cpu_plan = cpu_decode.Plan(self) if ok else False
        return self._cpu_plan if self._cpu_plan and rows <= self._cpu_plan.max_rows else None

    def _apply(self, fn, *args, **kwargs):  # .to(), .float(), ...: the weights may move
        self._cpu_plan = self._out_major = None
        return super()._apply(fn, *args, **kwargs)

    # -- int8 weights -----------------------------------------------------------------------------------
    def quantize(self, mode: str = "int8") -> "GPT":
        """In place: int8 weights with per-output-channel scales for every linear layer and an int8 copy of wte
        for the LM head (model/quant.py); returns the model. Inference only from then on."""
        quant.check_mode(mode)
        if self._batch_invariant:
            raise invariant.InvariantError("this model runs batch-invariant, which needs float32 weights: set "
                                           "model.batch_invariant = False before quantize()")
        with torch.no_grad():
            work = quant.work_buffer(self.config, self.device)
            for m in self.modules():
                if isinstance(m, Conv1D):
                    m.quantize_(work=work)
            if self.lm_head_qweight is None:  # else done already (again, or by from_pretrained as it read wte)
                w = self.transformer.wte.weight
                self.quantize_embedding_([(slice(0, len(w)), w)], w.device, w.dtype)
        self.requires_grad_(False)
        self.clear_weight_caches()
        return self.eval()

    def quantize_embedding_(self, chunks, device, dtype, work: torch.Tensor | None = None) -> None:
        """wte's int8 copy (one scale per row: the head's outputs) from `chunks`, (row slice, rows of wte in the
        model's dtype) pairs covering it; then wte is emptied. embed() reads the rows of the int8 copy from then
        on: keeping the float wte too would hold ~4x the int8 model's head again (GPT-2 small: 154 MB). The
        empty wte keeps the model's dtype and device. `work`: quant.quantize_rows's buffer (a load passes its own)."""
        V, C = self.config.vocab_size, self.config.n_embd
        q = torch.empty(V, C, dtype=torch.int8, device=device)
        scale = torch.empty(V, dtype=torch.float32, device=device)
        work = quant.work_buffer(self.config, device) if work is None else work
        for rows, w in chunks:
            quant.quantize_rows(w.to(device), out=(q[rows], scale[rows]), work=work)
        self.lm_head_qweight, self.lm_head_qscale = q, quant.scale_bits(scale)
        self.transformer.wte.weight = nn.Parameter(torch.empty(0, dtype=dtype, device=device), requires_grad=False)

    def train(self, mode: bool = True):
        if mode and self.quantized:
            raise ValueError("this model's weights are quantized (int8): it runs inference only; train the float "
                             "model (GPT.from_pretrained without quantize=) and quantize it afterwards")
        return super().train(mode)

    def _check_tokens(self, idx):
        if idx.dtype not in (torch.int64, torch.int32):
            raise ValueError(f"token ids must be an integer tensor (torch.long), got dtype {idx.dtype}")
        if idx.numel():
            lo, hi = torch.aminmax(idx)
            lo, hi = int(lo), int(hi)
            if lo < 0 or hi >= self.config.vocab_size:
                bad = hi if hi >= self.config.vocab_size else lo
                raise ValueError(
                    f"token id {bad} is outside the vocabulary [0, {self.config.vocab_size}); "
                    "encode text with this model's tokenizer (model.get_tokenizer())"
                )

    # -- caches -----------------------------------------------------------------------------------------
    def new_cache(self, batch_size: int, max_len: int, pad: torch.Tensor | list[int] | None = None) -> KVCache:
        """A preallocated KV cache of `max_len` slots for `batch_size` rows, in the model's dtype/device.

        `pad[b]` is the number of left-padding slots of row b (a ragged batch of prompts).
        """
        c = self.config
        return KVCache(c.n_layer, batch_size, c.n_head, max_len, c.head_dim,
                       device=self.device, dtype=self.kv_dtype, pad=pad)

    # -- checkpoints ------------------------------------------------------------------------------------
    @classmethod
    def from_pretrained(cls, name_or_path, device=None, dtype=None, quantize: str | None = None,
                        batch_invariant: bool = False) -> "GPT":
        """Load a GPT-2 checkpoint in the Hugging Face format: a local directory, or a hub id when online.
        `quantize="int8"` quantizes the weights after loading (see `quantize`; None keeps them float).
        `batch_invariant=True` turns on the batch-invariant numerics (see `batch_invariant`)."""
        from .checkpoint import load_pretrained

        if quantize is not None:
            quant.check_mode(quantize)
        if batch_invariant and quantize is not None:
            raise invariant.InvariantError("batch_invariant=True needs float32 weights: drop quantize=")
        model = load_pretrained(cls, name_or_path, device=device, dtype=dtype, quantize=quantize)
        if batch_invariant:
            model.batch_invariant = True
        return model.quantize(quantize) if quantize is not None else model

    def save_pretrained(self, directory) -> None:
        """Write config.json + model.safetensors, loadable by transformers.GPT2LMHeadModel (atomically)."""
        from .checkpoint import save_pretrained

        if self.quantized:
            raise ValueError("a quantized model can't be saved as a Hugging Face checkpoint; save the float model, "
                             "and load it with GPT.from_pretrained(dir, quantize='int8')")
        save_pretrained(self, directory)
