"""A GPT-2 decode step on the CPU in one call: a few C kernels (csrc/), compiled on first use.

Why: at batch 1 a decode step should cost about the time to read the weights once (GPT-2 small: ~495 MB
in float32, ~250 MB in bfloat16, ~125 MB in int8). Through torch ops it costs more: ~15 ops per block,
each a dispatch (and a fork-join of the thread pool), SDPA's CPU kernel is slow for one query in bfloat16,
and the matrix-vector products leave bandwidth unused on these short, strided weight streams. Here one
call runs all blocks for a decode step's rows (one token each; up to MAX_ROWS: 8 in float32, 128 in bfloat16 on
pair-blocked copies, 128 in int8 on VNNI): layer norms, products with bias, GELU and
residual fused into their epilogues, this step's keys and values written into the cache, and attention,
with software prefetch in the weight streams; a second call runs the LM head (benchmarks/bench_linear.py
--decode measures both paths). Products of more rows (a prompt's prefill, scoring) run here too, up to MANY_ROWS
rows where that beats torch's path (`many_rows`; on AVX2 float32 and bfloat16 prefills take ~0.6x the time).

Activations stay float32 throughout, whatever the weights are stored in (float32, bfloat16, or int8 with
one float32 scale per output channel), with two exceptions. A bfloat16 model's products on CPUs with avx512_bf16
(the blocks' pair-blocked copies and the LM head) read their input rounded to bfloat16, as torch's path does.
An int8 model's products quantize their input per block of 32 (llama.cpp's q8_0 scheme, blocks strided within
groups of 512: csrc/decode.c) and multiply in integers (layout NK_Q8; INT8_DOTS = False keeps the float path,
int8 widened against float32 activations). The KV cache is float32 or bfloat16, as the model's dtype makes it.
So a bfloat16 model's decode step here is slightly *more* precise than its torch path (which rounds every
activation, the residual stream included, to bfloat16): logits agree to bfloat16 rounding, not bit for bit.

The kernels (csrc/decode.c; the interface in csrc/decode.h, mirrored below in ctypes and checked against the
library's own report when it loads) need x86-64 with AVX-512 (F, BW, VL) or AVX2 with FMA, and a C compiler with
OpenMP (gcc). One source builds for either (a vector layer of 16 or 8 float32 lanes; `isa()` picks the build by
torch's own CPU detection); the int8 integer products are the same AVX2 instructions in both, so the same bits.
They are built once per machine into a per-user cache ($PIGPT_CACHE/lib, else ~/.cache/pigpt/lib; model/cbuild.py
says what makes a cached copy trusted) and run on torch.get_num_threads() threads of torch's own OpenMP pool
(the caller's thread included), which claim tiles of work rather than splitting it up front.
Anywhere else, with PIGPT_CPU_KERNELS=0, if the build fails (one line on stderr says why) or if the C and Python
views of the interface disagree, `load()` returns None and the model runs its torch path; `status()` says why.
"""

from __future__ import annotations

import ctypes
import functools
import os
import shutil
import sys
import weakref
from importlib import resources

import torch

from . import cbuild, packed

# Rows (batch x 1 token) the kernels run, by build and weight type: up to where they beat the torch path in wall
# time on a quiet machine (tests run them at these: tests/test_model.py, tests/test_quant.py), measured with
# benchmarks/bench_linear.py --decode --force-kernels (GPT-2 small, 2 threads, kernels on / off interleaved in one
# process, median of 7-9).
# AVX512, 2026-11-29, the 2-vCPU AMD EPYC (Zen 4, avx512_bf16): float32 1 row 2.62x, 2 rows 1.12x, 4 rows 1.11x,
# 8 rows 0.82x; bfloat16 (pair-blocked weights) 1.44x, 1.58x, 1.63x, 1.81x; int8 ~2x at every row count up to 8
# (against torch's _weight_int8pack_mm, on the float path before NK_Q8). bfloat16 on a CPU without avx512_bf16
# reads the [K, N] weights widened to float32, which lost to oneDNN at 8 rows (0.79x; 1.26x, 1.49x, 1.12x at 1,
# 2, 4): the second limit.
# AVX512, 2026-12-05, the same kind of machine, split products (csrc/decode.c) with 8 rows of W a pass: float32 1.73x,
# 1.72x, 1.10x, 1.02x against oneDNN's prepacked products, which also keep a blocked second copy of every weight
# (+500 MB for GPT-2 small): float32 now runs 8 rows here too.
# AVX2, 2026-12-04, the 2-vCPU AMD EPYC (Zen 3, no AVX-512): float32 1.39x, 1.36x, 1.27x, 1.08x; bfloat16 (widened;
# torch has no fast bfloat16 product there) 15x, 28x, 38x, 44x; int8 (NK_Q8) 2.33x, 2.76x, 2.93x, 2.29x.
# AVX512, 2026-12-05, the same kind of machine, whole generate() runs (16-token prompt, 32 new tokens, one process
# per mode, median of 3 after a warm-up): decode steps of more than 8 rows in the kernels against the torch path.
# bfloat16 on the pair-blocked copies: n = 16 33.0 -> 23.4 ms a step, n = 64 91.5 -> 77 (peak -90 MB: no oneDNN
# copies; XL's widths, 6 blocks, 122.7 -> 99.8 ms, -196 MB), n = 128 174 -> 152: every 64-column block of W stays in
# L2 while the tiles of 8 rows run over it. int8 on VNNI: n = 16 45 -> 30, n = 24 61 -> 47, n = 32 79 -> 61, but
# n = 48 74 -> 81 (past 32 rows the torch path runs oneDNN's bfloat16 products; quant.DEQUANT_ROWS); float32 n = 16
# 52 -> 54, n = 64 137 -> 213 (its 64-row products run kn_many_rows there): float32 stays at 8.
# AVX512, the night of 2026-12-05, bfloat16 without copies on dot products over the weights stored [out, in]
# (NK_DOTS), torch path -> kernels, ms a step (32 new tokens, one process, median of 5): n = 16 39.1 -> 20.5, n = 32
# 57.9 -> 39.0, n = 64 79.7 -> 65.2, n = 128 141.9 -> 138.1; XL's widths (6 blocks) n = 16 57.0 -> 40.0, n = 64 123
# -> 111: bfloat16 on dot products now runs 128 rows with or without copies.
# AVX512, 2026-12-06, int8 after its blocks were strided in groups of 512 (csrc/decode.c), torch path (oneDNN's
# bfloat16 products on blocked copies) -> kernels, ms a step (32 new tokens, one process, median of 3): n = 16 16.2 ->
# 16.3, n = 48 68.3 -> 48.6, n = 64 73.4 -> 59.0, n = 128 162 -> 132; XL's widths (6 blocks) n = 16 28.7 -> 28.3, n =
# 64 124 -> 104: int8 on VNNI runs 128 rows too, and keeps no bfloat16 copies.
_LIMITS = {"AVX512": ({"float32": 8, "bfloat16": 128, "int8": 128}, 4, 128),
           "AVX2": ({"float32": 8, "bfloat16": 8, "int8": 8}, 8, 8)}
# MAX_ROWS, MAX_ROWS_BF16_WIDEN (bfloat16 without avx512_bf16), MAX_ROWS_BF16_PAIRS (bfloat16 on pair-blocked
# copies; MAX_ROWS' bfloat16 is then the limit without them, on dot products over the weights stored [out, in]):
# below, by isa(). int8's limit past 8 rows holds with VNNI (Plan: 8 without).

# int8 weights multiply activations quantized per block of 32 in integers (layout NK_Q8); False: the float path
# (int8 widened to float32 against float32 activations; NK), which tests compare it with.
INT8_DOTS = True

# -- the interface: a mirror of csrc/decode.h, checked against the compiled library's own report at load --------
F32, BF16, I8 = 0, 1, 2  # value types
# weight layouts: [in, out] (GPT-2's Conv1D), [out, in] (wte as the head; int8 copies), bfloat16 pair-blocked
# [N/64, K/2, 64, 2] copies of Conv1D weights (`pair_blocked`), int8 [out, in] on integer dot products against
# activations quantized per block of 32 (Q8_TILE, with VNNI Q8V_TILE, in csrc/decode.c), or a Conv1D's bfloat16
# weight stored [out, in] (store_out_major) and read by avx512_bf16 dot products on each output's row (DP_TILE)
KN, NK, PAIRS, NK_Q8, NK_DOTS = 0, 1, 2, 3, 4
ACT_NONE, ACT_GELU_TANH, ACT_GELU_ERF, ACT_RELU = 0, 1, 2, 3
ACTIVATIONS = {"gelu_new": ACT_GELU_TANH, "gelu_pytorch_tanh": ACT_GELU_TANH, "gelu_fast": ACT_GELU_TANH,
               "gelu": ACT_GELU_ERF, "relu": ACT_RELU}
PHASES_PER_LAYER, MAX_PHASES = 5, 4096  # a step runs n_layer * PHASES_PER_LAYER + 1 phases, at most MAX_PHASES
_TYPES = {torch.float32: F32, torch.bfloat16: BF16, torch.int8: I8}

_P, _I64, _I32 = ctypes.c_void_p, ctypes.c_int64, ctypes.c_int32


class Linear(ctypes.Structure):
    _fields_ = [("w", _P), ("scale", _P), ("bias", _P), ("K", _I64), ("N", _I64),
                ("wtype", _I32), ("layout", _I32), ("act", _I32)]


class Layer(ctypes.Structure):
    _fields_ = [("ln1_w", _P), ("ln1_b", _P), ("ln2_w", _P), ("ln2_b", _P),
                ("qkv", Linear), ("proj", Linear), ("fc", Linear), ("proj2", Linear), ("attn_scale", ctypes.c_float)]


class Cache(ctypes.Structure):
    _fields_ = [("k", _P), ("v", _P), ("layer", _I64), ("row", _I64), ("head", _I64), ("pos", _I64), ("start", _P),
                ("pk", _P), ("pv", _P), ("p_layer", _I64), ("p_row", _I64), ("p_head", _I64), ("P", _I64),
                ("prompt", _P), ("p_start", _P), ("kvtype", _I32)]


class Model(ctypes.Structure):
    _fields_ = [("L", _I32), ("C", _I32), ("nh", _I32), ("ptype", _I32), ("eps", ctypes.c_float),
                ("layers", _P), ("lnf_w", _P), ("lnf_b", _P)]


class InterfaceEntry(ctypes.Structure):
    _fields_ = [("name", ctypes.c_char_p), ("value", _I64)]


def python_interface() -> dict[str, int]:
    """This module's view of the interface, as the library's `pigpt_interface()` reports its own: each struct's
    size ('sizeof(Linear)'), its fields' offsets ('Linear.K') and sizes ('sizeof(Linear.K)'), and the shared
    constants."""
    out = {}
    for struct in (Linear, Layer, Cache, Model):
        s = struct.__name__
        out[f"sizeof({s})"] = ctypes.sizeof(struct)
        for name, _ in struct._fields_:
            out[f"{s}.{name}"], out[f"sizeof({s}.{name})"] = getattr(struct, name).offset, getattr(struct, name).size
    return out | dict(F32=F32, BF16=BF16, I8=I8, KN=KN, NK=NK, PAIRS=PAIRS, NK_Q8=NK_Q8, NK_DOTS=NK_DOTS,
                      ACT_NONE=ACT_NONE,
                      ACT_GELU_TANH=ACT_GELU_TANH, ACT_GELU_ERF=ACT_GELU_ERF, ACT_RELU=ACT_RELU,
                      PHASES_PER_LAYER=PHASES_PER_LAYER, MAX_PHASES=MAX_PHASES)


def c_interface(lib) -> dict[str, int]:
    """The compiled library's view of the interface (csrc/decode.c: pigpt_interface)."""
    lib.pigpt_interface.argtypes, lib.pigpt_interface.restype = [_P], ctypes.c_int
    entries = ctypes.POINTER(InterfaceEntry)()
    n = lib.pigpt_interface(ctypes.byref(entries))
    return {entries[i].name.decode(): entries[i].value for i in range(n)}


def interface_mismatch(c: dict[str, int], py: dict[str, int]) -> str | None:
    """Where the C and Python views disagree (a few, named), or None."""
    diffs = [f"{k}: C {c.get(k, 'has none')}, Python {py.get(k, 'has none')}"
             for k in sorted(c.keys() | py.keys()) if c.get(k) != py.get(k)]
    return None if not diffs else "; ".join(diffs[:4]) + (f"; {len(diffs) - 4} more" if len(diffs) > 4 else "")


# -- building and loading -----------------------------------------------------------------------------------
_BASE_FLAGS = ("-O3", "-fopenmp", "-pthread", "-shared", "-fPIC")
# one source, two builds (csrc/decode.c's vector layer): which one this CPU runs, by torch's own detection
ISA_FLAGS = {"AVX512": ("-mavx512f", "-mavx512bw", "-mavx512vl", "-mfma"), "AVX2": ("-mavx2", "-mfma")}
_SOURCES = ("decode.c", "decode.h")  # in csrc/, shipped as package data (pyproject.toml)
_status = "not loaded yet"


def status() -> str:
    """Why the kernels are or aren't in use: 'loaded from <path>', or the reason they aren't."""
    load()
    return _status


def isa() -> str | None:
    """The build this CPU runs: 'AVX512', 'AVX2' (with FMA), or None (no kernels: the torch path)."""
    cap = torch.backends.cpu.get_cpu_capability()
    return cap if cap in ISA_FLAGS else None


MAX_ROWS, MAX_ROWS_BF16_WIDEN, MAX_ROWS_BF16_PAIRS = _LIMITS[isa() or "AVX512"]

# Products of a float model's Conv1D weights ([in, out], layout KN) in the kernels outside decode steps (a prompt's
# prefill, scoring, decode steps of more rows than MAX_ROWS), up to these many rows; more rows than 8 run
# kn_many_rows (csrc/decode.c: a panel of W copied row by row into cache, then tiles of rows over it). Set where
# it beats torch's path on a quiet machine (benchmarks/bench_linear.py --many-rows [--width 1600]: one block's
# products of GPT-2 small's / XL's widths, 2 threads, median of 7 interleaved runs), and only there.
# AVX2, 2026-12-05, the 2-vCPU AMD EPYC (Zen 3): float32 against MKL's addmm (the path below PREFILL_PACK_ROWS)
# 1.24x / 1.19x / 1.18x / 1.03x at 9 / 16 / 32 / 64 rows (small), 1.50x / 1.32x / 1.15x / 1.08x (XL), 0.96x / 0.99x
# at 128; bfloat16 against widening to float32 (packed.widened: no oneDNN bfloat16 here) 1.85x / 1.92x / 1.46x /
# 1.25x / 1.05x at 9 / 16 / 32 / 64 / 128 rows (small), 5.65x / 4.76x / 3.16x / 2.34x / 1.61x (XL).
# AVX512, 2026-12-05, the 2-vCPU AMD EPYC (Zen 4, avx512_bf16), small: float32 1.20x / 1.65x / 1.39x / 1.23x /
# 1.11x / 1.03x at 9 / 16 / 32 / 64 / 128 / 256 rows. bfloat16 against oneDNN's avx512_bf16 products on blocked
# copies: 0.75x / 0.82x / 0.69x / 0.57x at 9 / 16 / 32 / 64 rows. Those copies are a second copy of every block
# weight (+170 MB for GPT-2 small, whose bfloat16 weights are 249 MB), made on the first prompt and kept, to save
# ~4 ms per 16-token prompt; so bfloat16 prompts of up to 64 tokens run here anyway (the trade PREFILL_PACK_ROWS
# makes for float32).
# AVX512, later the same day, with the next panel prefetched and bfloat16 on dot products (kn_many_rows_dots), two
# runs: float32 1.37-1.67x / 1.72-1.74x / 1.53-1.62x / 1.32-1.54x / 1.19-1.37x / 1.11-1.17x at 9 / 16 / 32 / 64 /
# 128 / 256 rows (small), 1.62x / 1.65x / 1.48x / 1.31x / 1.21x / 1.09x (XL): float32 now up to 256 rows.
# bfloat16 0.86-0.94x / 0.98-1.12x / 1.00-1.03x / 0.97-1.00x / 0.85-0.94x (small), 0.94x / 1.07x / 1.01x / 1.08x /
# 1.00x (XL) at 9 / 16 / 32 / 64 / 128: level with oneDNN up to 64, still without its copies.
MANY_ROWS = {"AVX2": {"float32": 64, "bfloat16": 128},
             "AVX512": {"float32": 256, "bfloat16": 64}}.get(isa() or "", {})
# ... except in decode steps of more rows than the plan takes (Plan.max_rows; n rollouts, beams: one token a row),
# which run every step: there bfloat16 stays on oneDNN's blocked copies, which beat these products (AVX512: n = 64
# rollouts of GPT-2 small 0.78x of llama.cpp with the kernels' 64-row products, measured 2026-12-05). Up to
# the plan's rows (MAX_ROWS_BF16_PAIRS on the pair-blocked copies, MAX_ROWS' bfloat16 without them) such steps run
# whole in the decode kernels instead.
STEP_ROWS = {"AVX512": {"bfloat16": 0}}.get(isa() or "", {})
# A bfloat16 weight stored [out, in] (packed_weights off, on avx512_bf16: store_out_major) runs in the dot-product
# tiles up to this many rows, and in torch's products past them, which take the transposed view as it is. One
# product on cold weights, Zen 4, 2 threads, ms, tiles / torch: [768, 2304] 0.21 / 0.30 at 9 rows, 0.41 / 0.48 at
# 32, 0.59 / 0.61 at 48, 0.78 / 0.74 at 64; [768, 3072] 0.54 / 0.64 at 32; [3072, 768] 0.37 / 0.32 at 9, 0.66 / 0.56
# at 32 (the [in, out] panel product, kn_many_rows_dots: 0.49, 0.60, 0.63 at 32).
NK_DOTS_ROWS = 32


def recipe() -> cbuild.Recipe | None:
    """What `load()` builds for this CPU's build (`isa()`): the sources in csrc/ with the system's C compiler;
    None without one."""
    cc = os.environ.get("CC") or shutil.which("gcc") or shutil.which("cc")
    if not cc:
        return None
    csrc = resources.files(__package__).joinpath("csrc")
    flags = _BASE_FLAGS + ISA_FLAGS[isa() or "AVX512"]
    return cbuild.Recipe("pigpt_cpu_decode", tuple((n, csrc.joinpath(n).read_bytes()) for n in _SOURCES), cc, flags)


@functools.lru_cache(maxsize=None)
def load():
    """The compiled library (a ctypes.CDLL), or None where it can't be built here (see `status()`). Built once
    per machine and cached (model/cbuild.py: a per-user folder, loaded only if this user built it unchanged)."""
    global _status
    if os.environ.get("PIGPT_CPU_KERNELS", "1") == "0":
        _status = "turned off by PIGPT_CPU_KERNELS=0"
        return None
    if os.name != "posix":
        _status = "the kernels are built and loaded on POSIX systems only"
        return None
    if isa() is None:
        _status = f"this CPU has neither AVX-512 nor AVX2 (torch reports {torch.backends.cpu.get_cpu_capability()})"
        return None
    if (r := recipe()) is None:
        _status = "no C compiler found (set CC, or install gcc)"
        return None
    try:
        lib, path = cbuild.load(r, "the CPU decode kernels")
    except cbuild.BuildError as e:
        _status = f"build failed: {e}"
        print(f"pigpt: could not build the CPU decode kernels ({e}); decoding runs on the torch path",
              file=sys.stderr, flush=True)
        return None
    try:
        problem = interface_mismatch(c_interface(lib), python_interface())
    except AttributeError:  # a library from before the check (no pigpt_interface)
        problem = "it reports no interface (pigpt_interface)"
    if problem:
        _status = f"{path.name} disagrees with cpu_decode.py's mirror of csrc/decode.h: {problem}"
        print(f"pigpt: the CPU decode kernels' C interface disagrees with pigpt/model/cpu_decode.py ({problem}); "
              f"decoding runs on the torch path", file=sys.stderr, flush=True)
        return None
    lib.pigpt_decode.argtypes = [_P, ctypes.c_int, _P, _P, _P, _I64, ctypes.c_int]
    lib.pigpt_decode.restype = ctypes.c_int
    lib.pigpt_linear.argtypes = [_P, ctypes.c_int, _P, ctypes.c_int, _P, ctypes.c_int, _P, ctypes.c_int]
    lib.pigpt_hugepages.argtypes, lib.pigpt_hugepages.restype = [_P, _I64], _I64
    lib.pigpt_work_floats.argtypes = [ctypes.c_int, _I64, _I64, _I64, ctypes.c_int]
    lib.pigpt_work_floats.restype = _I64
    lib.pigpt_has_avx512bf16.restype = ctypes.c_int
    lib.pigpt_vector_width.restype = ctypes.c_int
    lib.pigpt_int8_vnni.argtypes, lib.pigpt_int8_vnni.restype = [ctypes.c_int], ctypes.c_int
    _status = f"loaded from {path}"
    if len(runtimes := _openmp_runtimes()) > 1:  # torch's build uses another OpenMP than gcc's libgomp
        _status += f"; its OpenMP pool is not torch's (both loaded: {', '.join(sorted(runtimes))}), so steps are slower"
    return lib


def has_avx512bf16() -> bool:
    """Whether this CPU has avx512_bf16 dot products: then a bfloat16 model's weights are read pair-blocked and
    its LM head by dot products; without them, widened to float32 (tests turn them off to run that path)."""
    return bool(load().pigpt_has_avx512bf16())


def int8_vnni(on: bool | None = None) -> bool:
    """Whether int8 products run on AVX-512 VNNI dot products (where the CPU has avx512_vnni; else on the AVX2
    integer tiles). `on` turns them off or back on, for the whole process: tests and benchmarks compare both."""
    return bool(load().pigpt_int8_vnni(-1 if on is None else int(on)))


def _openmp_runtimes() -> set[str]:
    """The OpenMP runtimes mapped into this process (Linux; empty elsewhere)."""
    try:
        with open("/proc/self/maps") as f:
            return {line.split()[-1] for line in f if any(n in line for n in ("libgomp", "libiomp", "libomp"))}
    except OSError:
        return set()


# -- the model's side ---------------------------------------------------------------------------------------
def _ptr(t: torch.Tensor | None):
    return None if t is None else t.data_ptr()


def pair_blocked(w: torch.Tensor) -> torch.Tensor:
    """A [K, N] bfloat16 weight as the PAIRS layout: [N/64, K/2, 64, 2], K padded to even and N to a multiple
    of 64 with zeros (see PB_TILE in csrc/decode.c)."""
    K, N = w.shape
    Kp, Np = K + K % 2, -(-N // 64) * 64
    w = torch.nn.functional.pad(w.detach(), (0, Np - N, 0, Kp - K))
    return w.view(Kp // 2, 2, Np // 64, 64).permute(2, 0, 3, 1).contiguous()


def is_out_major(w: torch.Tensor) -> bool:
    """Whether the [in, out] weight `w` is stored [out, in] (a transposed view: store_out_major)."""
    return w.dim() == 2 and not w.is_contiguous() and w.t().is_contiguous()


def store_out_major(w: torch.Tensor, on: bool) -> None:
    """Keep the [in, out] parameter `w`'s values, stored [out, in] (on: w is then a transposed view, and each
    output's weights lie in one row, which the dot-product tiles read in one stream) or [in, out] (contiguous).
    Moves one weight at a time (a transient copy of it), only where the storage is the other way."""
    if is_out_major(w) if on else w.is_contiguous():
        return
    with torch.inference_mode(False), torch.no_grad():  # a plain tensor even under inference_mode: it may train later
        w.data = w.data.t().contiguous().t() if on else w.data.contiguous()


class Plan:
    """The model's weights as the kernels see them: pointers to its own tensors, built once and valid while no
    parameter moves to new storage (GPT drops its plan on .to(), quantize() and clear_weight_caches()). Holds
    references to the tensors so that the pointers stay valid. Where the CPU has avx512_bf16, a bfloat16 model's
    block weights and head are read by dot products: on the weights themselves (each block weight stored [out, in]:
    NK_DOTS; wte's rows), or, where the model's packed_weights is on, on pair-blocked copies (a second copy of them
    in memory, ~250 MB for GPT-2 small); `fresh()` says whether the weights the copies are made from are unchanged
    since."""

    def __init__(self, gpt):
        tr = gpt.transformer
        self.keep = []  # the tensors behind every pointer
        self.sources = []  # (weight, its version) for each copy made
        self.grads = packed.grads_seen()  # fused optimizers update weights without bumping their versions
        self.dot = has_avx512bf16()
        self.int8_layout = NK_Q8 if INT8_DOTS else NK
        self.pairs = gpt.dtype == torch.bfloat16 and self.dot and gpt.packed_weights
        self.ptype = _TYPES[gpt.dtype]
        self._gpt = weakref.ref(gpt)  # the blocks are read on the first decode step (`model`)
        self._model = self._layers = None
        q = gpt.lm_head_qweight
        if q is not None:  # the int8 copy of wte, [V, C]
            scale = gpt.lm_head_qscale.view(torch.float32)
            self.head = Linear(self._t(q), self._t(scale), None, q.shape[1], q.shape[0], I8, self.int8_layout, 0)
        elif self.pairs:  # wte^T [C, V] pair-blocked: ~1.25x wte's own rows at 1 row (54 -> 67 GB/s, measured)
            w = tr.wte.weight
            self.sources.append((w, w._version))
            packed.watch(w)
            self.head = Linear(self._t(pair_blocked(w.t())), None, None, w.shape[1], w.shape[0], BF16, PAIRS, 0)
        else:  # wte itself: [V, C] is the head's [out, in]
            w = tr.wte.weight
            self.head = Linear(self._t(w), None, None, w.shape[1], w.shape[0], _TYPES[w.dtype], NK, 0)
        self.max_rows = MAX_ROWS["int8" if gpt.quantized else str(gpt.dtype).removeprefix("torch.")]
        if gpt.dtype == torch.bfloat16 and not gpt.quantized:
            self.max_rows = MAX_ROWS_BF16_PAIRS if self.pairs else self.max_rows if self.dot else MAX_ROWS_BF16_WIDEN
        if gpt.quantized and not (self.int8_layout == NK_Q8 and int8_vnni()):
            self.max_rows = min(self.max_rows, 8)
        self.work = torch.empty(0)
        # copies made while a gradient is pending serve this call only: a fused step may still change their
        # sources without a trace (packed.watch)
        self.pending, self._kept = False, 0
        self._settle(0)

    def _settle(self, first: int) -> None:
        """After sources[first:] and keep[...] were added: note a pending gradient; 2 MB pages for the weights."""
        self.pending = self.pending or not all(packed.settled(w) for w, _ in self.sources[first:])
        for t in self.keep[self._kept:]:  # (biases and norms: too small to matter)
            if t.numel() * t.element_size() >= 1 << 20:
                load().pigpt_hugepages(t.data_ptr(), t.numel() * t.element_size())
        self._kept = len(self.keep)

    @property
    def model(self) -> Model:
        if self._model is None:
            self._build_blocks()
        return self._model

    @property
    def layers(self):
        if self._model is None:
            self._build_blocks()
        return self._layers

    def _build_blocks(self) -> None:
        """The blocks and ln_f for `decode`, made on the first decode step, not with the plan: a job whose steps all
        have more rows than max_rows (n = 64 rollouts, 16 beams) uses the plan only for its prompt's last-token
        logits, and a bfloat16 model's pair-blocked block copies (170 MB for GPT-2 small) would sit unused."""
        gpt, first = self._gpt(), len(self.sources)
        cfg, tr = gpt.config, gpt.transformer
        layers = (Layer * cfg.n_layer)()
        for i, block in enumerate(tr.h):
            layers[i] = Layer(*(self._t(p) for p in (block.ln_1.weight, block.ln_1.bias, block.ln_2.weight,
                                                     block.ln_2.bias)),
                              self._linear(block.attn.c_attn), self._linear(block.attn.c_proj),
                              self._linear(block.mlp.c_fc, ACTIVATIONS[cfg.activation]),
                              self._linear(block.mlp.c_proj), block.attn.scale)
        self._layers = layers
        self._model = Model(cfg.n_layer, cfg.n_embd, cfg.n_head, self.ptype, cfg.layer_norm_epsilon,
                            ctypes.addressof(layers), self._t(tr.ln_f.weight), self._t(tr.ln_f.bias))
        self._settle(first)

    def _t(self, t: torch.Tensor):
        self.keep.append(t.detach())
        return t.data_ptr()

    def fresh(self) -> bool:
        """False once a weight that a copy was made from may have changed (training, load_state_dict)."""
        return (not self.pending and self.grads == packed.grads_seen()
                and all(w._version == v for w, v in self.sources))

    def _linear(self, conv, act: int = 0) -> Linear:
        b = self._t(conv.bias)
        if conv.qweight is not None:  # [out, in] int8 and its float32 scales
            q = conv.qweight
            return Linear(self._t(q), self._t(conv.scales()), b, q.shape[1], q.shape[0], I8, self.int8_layout, act)
        w = conv.weight  # [in, out]
        if not self.pairs and self.dot and w.dtype == torch.bfloat16:  # dot products on W's rows: no copy
            store_out_major(w, True)
            return Linear(self._t(w), None, b, w.shape[0], w.shape[1], BF16, NK_DOTS, act)
        store_out_major(w, False)
        if self.pairs:
            self.sources.append((w, w._version))
            packed.watch(w)
            return Linear(self._t(pair_blocked(w)), None, b, w.shape[0], w.shape[1], BF16, PAIRS, act)
        return Linear(self._t(w), None, b, w.shape[0], w.shape[1], _TYPES[w.dtype], KN, act)

    def __reduce__(self):  # pointers: deep copies and pickles of a model start without a plan
        return (type(None), ())

    def workspace(self, n: int) -> torch.Tensor:
        """A float32 buffer of >= n elements, reused across steps (no allocation per step)."""
        if self.work.numel() < n:
            self.work = torch.empty(n)
        return self.work


def supports(gpt) -> bool:
    """Whether the kernels take this model's weights: CPU, float32/bfloat16 (or int8 copies), contiguous (a
    Conv1D's weight may be stored [out, in] instead: the plan stores each the way its layout reads it)."""
    if gpt.dtype not in (torch.float32, torch.bfloat16) or gpt.device.type != "cpu":
        return False
    for m in gpt.modules():
        for t in list(m.parameters(recurse=False)) + list(m.buffers(recurse=False)):
            if not (t.is_contiguous() or is_out_major(t)) or t.device.type != "cpu":
                return False
            if t.is_floating_point() and t.dtype != gpt.dtype:  # the kernels read them all as the model's dtype
                return False
    return gpt.config.n_layer * PHASES_PER_LAYER + 1 <= MAX_PHASES


def cache_desc(cache) -> Cache | None:
    """The kernels' view of a KVCache or SharedPrefixKVCache (this step's slot included), or None when its
    layout isn't one they read."""
    from .cache import KVCache, SharedPrefixKVCache

    k, v = cache.k, cache.v
    if k.dtype not in (torch.float32, torch.bfloat16) or not (k.is_contiguous() and v.is_contiguous()):
        return None
    d = Cache(k.data_ptr(), v.data_ptr(), k.stride(0), k.stride(1), k.stride(2), cache.pos, None,
              None, None, 0, 0, 0, 0, None, None, _TYPES[k.dtype])
    if isinstance(cache, KVCache):
        d.start = _ptr(cache.pad)
    elif isinstance(cache, SharedPrefixKVCache):
        pk, pv = cache.pk, cache.pv
        if pk.dtype != k.dtype or pk.stride() != pv.stride() or pk.stride(4) != 1 or pk.stride(3) != pk.shape[4]:
            return None
        d.pk, d.pv, d.p_layer, d.p_row, d.p_head, d.P = pk.data_ptr(), pv.data_ptr(), *pk.stride()[:3], pk.shape[3]
        d.prompt, d.p_start = cache.prompt.data_ptr(), _ptr(cache.ppad)
    else:
        return None
    return d


def decode(plan: Plan, x: torch.Tensor, cache, desc: Cache) -> torch.Tensor:
    """All blocks and ln_f for x (M, C) float32 embeddings of one token per row, in place; writes this step's
    keys and values at the cache's current slot (the caller advances it)."""
    lib = load()
    cfg = plan.model
    M, C = x.shape
    inner = plan.layers[0].fc.N
    threads = torch.get_num_threads()
    S = cache.max_len  # the most keys any row can attend to
    work = plan.workspace(lib.pigpt_work_floats(M, C, inner, S, threads))
    lib.pigpt_decode(x.data_ptr(), M, ctypes.byref(cfg), ctypes.byref(desc), work.data_ptr(), S, threads)
    return x


def linear(x: torch.Tensor, w: torch.Tensor, layout: int, scale: torch.Tensor | None = None,
           bias: torch.Tensor | None = None, act: int = ACT_NONE) -> torch.Tensor:
    """One product in the kernels, for any number of rows: y (M, N) float32 = act(x (M, K) float32 times `w` in
    `layout` (KN: [K, N]; NK, NK_Q8, NK_DOTS: [N, K], int8 with its float32 `scale` [N]) plus `bias` [N] (float32 or
    bfloat16)). Up to 8 rows in the decode tiles; more rows on KN weights in the panel product (kn_many_rows in
    csrc/decode.c; bfloat16 ones on avx512_bf16 dot products where the CPU has them, reading x rounded to
    bfloat16, as a bfloat16 model's activations are). The torch path's int8 products run here where the kernels
    load (model/quant.py), and so do products of float models up to MANY_ROWS rows (`many_rows`)."""
    N = w.shape[1] if layout == KN else w.shape[0]
    lin = Linear(w.data_ptr(), _ptr(scale), _ptr(bias), x.shape[1], N, _TYPES[w.dtype], layout, act)
    # bfloat16 [K, N]: avx512_bf16 dot products on pairs of rows where the C side takes them (kn_many_rows_dots);
    # NK_DOTS: on rows of W
    dot = layout in (KN, NK_DOTS) and w.dtype == torch.bfloat16 and has_avx512bf16()
    return _product(lin, _TYPES[bias.dtype] if bias is not None else F32, x, dot)


def many_rows(x: torch.Tensor, w: torch.Tensor, bias: torch.Tensor | None, act: str | None) -> torch.Tensor | None:
    """act(x @ w + bias) for a Conv1D's [in, out] float weight `w` in the kernels, where they take it: inference on
    the CPU (no gradient needed, no autocast), at most MANY_ROWS rows for w's dtype on this build (and at most
    NK_DOTS_ROWS for a bfloat16 weight stored [out, in]); else None (the torch path runs). The result in x's dtype."""
    rows = x.numel() // x.shape[-1]
    dtype = str(w.dtype).removeprefix("torch.")
    limit = MANY_ROWS.get(dtype, 0)
    if x.dim() == 3 and x.shape[1] == 1:  # a decode step's rows
        limit = min(limit, STEP_ROWS.get(dtype, limit))
    out_major = is_out_major(w)
    if out_major:
        dots = w.dtype == torch.bfloat16 and load() is not None and has_avx512bf16()
        limit = min(limit, NK_DOTS_ROWS) if dots else 0
    if (not 0 < rows <= limit or x.dtype != w.dtype or w.device.type != "cpu" or not (w.is_contiguous() or out_major)
            or (torch.is_grad_enabled() and (w.requires_grad or x.requires_grad))
            or torch.is_autocast_enabled("cpu") or (act is not None and act not in ACTIVATIONS)
            or (bias is not None and bias.dtype != w.dtype) or load() is None):
        return None
    y = linear(x.reshape(rows, x.shape[-1]).float().contiguous(), w.t() if out_major else w,
               NK_DOTS if out_major else KN, None, bias, ACTIVATIONS[act] if act else ACT_NONE)
    return y.to(x.dtype).view(x.shape[:-1] + (w.shape[1],))


def head(plan: Plan, x: torch.Tensor) -> torch.Tensor:
    """Logits (M, V) float32 for final hidden states x (M, C) float32."""
    return _product(plan.head, plan.ptype, x, plan.dot)


def _product(lin: Linear, ptype: int, x: torch.Tensor, dot: bool) -> torch.Tensor:
    out = torch.empty(x.shape[0], lin.N)
    prepared = lin.layout in (PAIRS, NK_Q8) or dot  # x rounded to bfloat16 or quantized first; KN reads x as is
    xb = torch.empty(x.shape[0] * (x.shape[1] + 64) if prepared else 0, dtype=torch.bfloat16)
    load().pigpt_linear(ctypes.byref(lin), ptype, x.data_ptr(), x.shape[0], out.data_ptr(), torch.get_num_threads(),
                        xb.data_ptr(), int(dot))
    return out
