"""int8 weights: `GPT.quantize("int8")`, or `GPT.from_pretrained(path, quantize="int8")`.

Each linear layer's weight becomes int8 with one float32 scale per output channel (symmetric, round to
nearest: w ~ q * scale, scale = max |w| of the channel / 127); wte becomes an int8 copy with one scale per
row, which the LM head multiplies by and the embedding lookup reads rows of (`GPT.embed`; no float wte is
kept, as llama.cpp's q8_0 models keep none). Biases, layer norms and activations stay float (the
model's dtype: float32, or bfloat16 after `.to(torch.bfloat16)`); the KV cache is bfloat16 (`GPT.kv_dtype`: half
a float32 cache's bytes, as llama.cpp keeps an f16 one; on the shipped model the mean KL from float32 went 3.6e-4 ->
3.7e-4, the table below). A decode step reads ~125 MB of weights instead of ~495 MB (GPT-2 small, float32).

Where the products run: the CPU decode kernels (model/cpu_decode.py), for decode steps of up to 8 rows (128 with
AVX-512 VNNI) and, through `linear`, every other product where they load; there each product's input is quantized
per block of 32 as llama.cpp's q8_0 does (d = max |x| / 127, q = round(x / d); a block is 32 positions of a group of
512, 4 from each 64, so that the tiles sum 8 instructions in integers before one FMA applies d: csrc/decode.c) and
multiplied by the int8 weights in integers (vpmaddubsw on AVX2, vpdpbusd where the CPU has AVX-512 VNNI;
cpu_decode.INT8_DOTS = False keeps the earlier float path, int8 rows converted in registers against float32
activations; products of more than DEQUANT_ROWS rows run there with VNNI, or where oneDNN has no bfloat16 GEMM:
`linear`). Otherwise torch's `_weight_int8pack_mm`
(activations rounded to bfloat16, its only vectorised input type) up to DEQUANT_ROWS rows, and above that
oneDNN's bfloat16 GEMM on a blocked bfloat16 copy of the dequantized weight, built on first use (like the float
models' blocked copies: `gpt.packed_weights = False` drops it, and then each call dequantizes). Products of many rows are
compute-bound, and there torch's int8 kernel (float FMAs, each weight converted again for every 4 rows)
took ~2x oneDNN's bfloat16 GEMM (64 rows, measured).

Quality against float32 on 8,192 tokens of stdlib docstrings (64 windows of 128 tokens; greedy: 100 8-token
prompts from the same text, 32 new tokens each; benchmarks/quant_quality.py [--decode]), through the decode
kernels (token by token) and through torch's path (full forwards, where the int8 products round activations to
bfloat16). Quantizing the activations (the integer path) costs about what the int8 weights do again: mean KL
2.1e-4 -> 3.7e-4 on the shipped model; reading the embedding from the int8 copy instead of a float wte moves
it by less (2.8e-4 -> 3.7e-4 with integer products). The rows below the shipped model's are from before both:

    model                      path         perplexity           mean KL   max |d log p|   same     identical
                                            float32 -> int8      (nats)    at the text's   argmax   greedy runs
    pigpt/model/default (shipped; 2026-12-06, Zen 4, VNNI tiles, token by token; what runs by default first):
      blocks strided in groups of 512          125.85 -> 125.91     3.7e-4    0.432           98.4%    82/100
    (2026-12-05, the same, before: contiguous blocks of 32, as q8_0)
      + bfloat16 KV cache (kv_dtype)           125.85 -> 125.89     3.7e-4    0.350           98.7%    86/100
      float32 KV cache                         125.85 -> 125.88     3.6e-4    0.284           98.6%    84/100
    (2026-12-04, the AVX2 build, float32 KV cache:)
      integer dot products, int8 embedding     125.85 -> 125.90     3.7e-4    0.270           98.6%    84/100
      float path (INT8_DOTS off), int8 embed   125.85 -> 125.87     2.1e-4    0.243           99.1%    89/100
      integer dot products, float32 wte        125.85 -> 125.87     2.8e-4    0.187           98.7%    82/100
    earlier shipped model      kernels      97.38 -> 97.41       7.2e-5    0.117           99.4%    88/100
      6 x 256, 1600 steps
    first default recipe run   kernels      244.80 -> 244.93     1.5e-5    0.036           99.6%    92/100
      (not shipped)            torch path   244.80 -> 244.90     6.1e-5    0.053           99.0%    90/100
    default recipe, step 300   kernels      309.95 -> 310.00     1.2e-5    0.028           99.5%    98/100
                               torch path   309.96 -> 310.06     6e-5      0.062           98.5%    96/100
    small preset 4 x 128       kernels      257.62 -> 257.90     2.5e-5    0.060           99.8%    97/100
      (600 steps)              torch path   257.63 -> 258.05     7e-5      0.073           99.2%    91/100

bfloat16 weights on the shipped pigpt/model/default, through the kernels (pair-blocked weights on avx512_bf16: the
products read bfloat16-rounded inputs, the residual stream stays float32; 2026-11-29): perplexity 97.35, mean
KL 2.8e-5, same argmax 99.7%, 94/100 identical greedy runs. Before, through torch's decode path (every
activation in bfloat16): mean KL 1.0e-4, 99.1%, 83/100; through the earlier kernels (float32 activations
throughout; first default run, step 300, small): mean KL 6.5e-6 / 4e-6 / 7e-6, same argmax 99.8% / 99.7% /
99.9%, identical greedy runs 96 / 99 / 99 of 100. On random GPT-2 small weights (wte x5, peaked
distributions) int8's max |d log p| at the text's tokens is 0.24 through the kernels, 0.35 through torch's
path (bfloat16, earlier kernels: 0.07 / 0.18), argmax unchanged everywhere, 40/40 greedy runs identical.
tests/test_quant.py bounds these quantities on random and heavy-tailed GPT-2-width weights.

A quantized model is for inference only: `train()` and forward passes that would need gradients raise a
ValueError, and it can't be saved as a Hugging Face checkpoint (save the float model and quantize after
loading).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from . import cpu_decode, packed

MODES = ("int8",)
DEQUANT_ROWS = 32  # more rows than this: a dense bfloat16 product on the dequantized weight (measured)


def check_mode(mode) -> str:
    if mode not in MODES:
        raise ValueError(f"unknown quantization mode {mode!r}; use one of {list(MODES)}")
    return mode


def quantize(model, mode: str = "int8"):
    """In place: the model's weights in `mode`; returns the model (same as model.quantize(mode))."""
    return model.quantize(mode)


def quantize_rows(w: torch.Tensor, out: tuple[torch.Tensor, torch.Tensor] | None = None,
                  work: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-row symmetric int8 of a [rows, cols] float weight: (q int8 [rows, cols], scale float32 [rows]),
    w ~ q * scale[:, None], written into `out` if given. An all-zero row gets scale 0 (and q 0). `work`: a
    float32 buffer (work_buffer) on w's device, for a caller quantizing many weights in a row."""
    w = w.detach()
    q, scale = out if out is not None else (torch.empty(w.shape, dtype=torch.int8, device=w.device),
                                            torch.empty(w.shape[0], dtype=torch.float32, device=w.device))
    # in chunks of rows, through one buffer: a whole wte's float temporaries would be ~3 copies of it, and
    # temporaries freed chunk by chunk fragment the heap (both stay resident after a load). A load passes one
    # `work` for every weight: a buffer of each weight's own, freed between int8 weights, left the heap with
    # 4 MB holes too small for what came next (GPT-2 small int8's load: +49-56 MB of heap in 3-5 loads of 16)
    step = max(1, min(w.shape[0], (1 << 20) // max(1, w.shape[1])))
    if work is None:
        work = torch.empty(step * w.shape[1], dtype=torch.float32, device=w.device)
    buf = work[: step * w.shape[1]].view(step, w.shape[1])
    for i in range(0, w.shape[0], step):
        c, b, s = w[i:i + step], buf[: min(step, w.shape[0] - i)], scale[i:i + step]
        b.copy_(c)
        torch.amax(b.abs_(), dim=1, out=s)
        s.div_(127.0)
        b.copy_(c)
        b.div_(s.clamp(min=torch.finfo(torch.float32).tiny)[:, None]).round_().clamp_(-127, 127)
        q[i:i + step].copy_(b)
    return q, scale


def work_buffer(config, device) -> torch.Tensor:
    """A `work` for quantize_rows that serves every weight of a GPT of `config`."""
    widest = max(config.n_embd, config.n_inner or 4 * config.n_embd)
    return torch.empty(max(1 << 20, widest), dtype=torch.float32, device=device)


def scale_bits(scale: torch.Tensor) -> torch.Tensor:
    """float32 scales stored as their int32 bits, so that model.to(dtype) (which casts floating buffers)
    leaves them exact; `.view(torch.float32)` reads them back."""
    return scale.to(torch.float32).contiguous().view(torch.int32)


def linear(x: torch.Tensor, q: torch.Tensor, scale: torch.Tensor, bias: torch.Tensor | None,
           dense: packed.DerivedWeight | None = None, kernels: bool = False) -> torch.Tensor:
    """x @ (q * scale[:, None]).T + bias for x [..., in], q int8 [out, in], scale float32 [out]; the result in
    x's dtype. With `kernels` (the model's cpu_kernels) and where the CPU decode kernels load, the product runs
    there on integer dot products (cpu_decode.linear, NK_Q8), as decode steps do, up to DEQUANT_ROWS rows, and at
    any row count where the CPU has AVX-512 VNNI or oneDNN has no bfloat16 GEMM (AVX2: there torch's bfloat16
    products of a 16-token prefill took 66 ms, the kernels ~15). With VNNI that keeps no bfloat16 copy: a
    forward of GPT-2 small int8 over T tokens (all logits; Zen 4, 2 threads, two runs, ms) took 16-20 / 53-66 /
    101-122 / 224-251 / 543-562 at T = 16 / 64 / 128 / 256 / 512, against 28 / 54-59 / 97-107 / 209-230 / 471-493
    with the copies, which held +320 MB. Otherwise torch's CPU kernels; `dense`: where to keep a
    oneDNN-blocked bfloat16 copy of the dequantized weight for products of more than DEQUANT_ROWS rows (None:
    dequantize for each call)."""
    shape, dtype = x.shape[:-1] + (q.shape[0],), x.dtype
    rows = x.numel() // x.shape[-1]
    if (kernels and cpu_decode.INT8_DOTS and q.device.type == "cpu" and q.is_contiguous() and x.numel()
            and cpu_decode.load() is not None
            and (rows <= DEQUANT_ROWS or cpu_decode.int8_vnni() or not packed.available(torch.bfloat16))):
        y = cpu_decode.linear(x.reshape(-1, x.shape[-1]).float().contiguous(), q, cpu_decode.NK_Q8,
                              scale.contiguous(), None if bias is None else bias.contiguous())
        return y.to(dtype).view(shape)
    x2 = x.reshape(-1, x.shape[-1]).to(torch.bfloat16).contiguous()
    # torch's int8 kernel reads 16 columns at a time with aligned loads: it needs in % 16 == 0 and an
    # aligned x (it crashes otherwise); up to DEQUANT_ROWS rows it is the faster one
    if x2.shape[0] <= DEQUANT_ROWS and q.shape[1] % 16 == 0 and x2.data_ptr() % 32 == 0 and q.device.type == "cpu":
        y = torch._weight_int8pack_mm(x2, q, scale.to(torch.bfloat16))
    elif dense is not None and q.device.type == "cpu" and packed.available(torch.bfloat16):
        w = dense.get(q, lambda q: packed.reorder(_dequantized(q, scale)))
        y = packed.linear(x2, w, None)
    else:
        y = F.linear(x2, _dequantized(q, scale))
    y = y.to(dtype)
    if bias is not None:
        y += bias.to(dtype)
    return y.view(shape)


def _dequantized(q: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    return q.to(torch.bfloat16) * scale.to(torch.bfloat16)[:, None]
