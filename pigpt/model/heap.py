"""Freed memory handed back to the OS during a long decode of many rows (glibc's malloc_trim).

Why: a decode step of many rows makes and frees a few logits-sized tensors (64 rows x 50,257 floats: 12.9 MB each)
and, in bfloat16, oneDNN's working buffers. glibc serves them from its heap once it has seen one freed (its mmap
threshold follows the largest freed block), and keeps what they leave free in the middle of the heap resident.
At n = 64 rollouts of GPT-2 small (128 tokens, Zen 4; peaks from inside the process, 3 runs each) trimming every 8
steps took bfloat16's peak from 1255 to 1164 MB and int8's from 1157 to 995 (float32's stayed 1350), at 0.4% and 2.1%
of the time (interleaved in one process): the trimmed pages fault back in when the next step's temporaries take
them. A fixed threshold instead (MALLOC_MMAP_THRESHOLD_) saves as much but doubles the time there: every logits
tensor page-faults in anew. malloc_trim(0) returns whole free pages anywhere in the heap (~3 ms a call here), so the
decode loop calls it every RELEASE_EVERY steps, and only when a step's logits are at least RELEASE_BYTES.

Only where the C library has it (glibc); elsewhere `release` does nothing. `ctypes.CDLL(None)` opens no file: it is
the symbols this process has already loaded.
"""

from __future__ import annotations

import ctypes
import functools

RELEASE_EVERY = 8  # decode steps between calls
RELEASE_BYTES = 4 << 20  # a step's float32 logits of at least this many bytes (GPT-2's vocabulary: 21 rows and up)


@functools.lru_cache(maxsize=None)
def _malloc_trim():
    try:
        fn = ctypes.CDLL(None).malloc_trim
    except (OSError, AttributeError):
        return None
    fn.argtypes, fn.restype = [ctypes.c_size_t], ctypes.c_int
    return fn


def available() -> bool:
    return _malloc_trim() is not None


def release() -> None:
    """Hand the heap's free pages back to the OS (nothing where the C library can't)."""
    fn = _malloc_trim()
    if fn is not None:
        fn(0)


def due(step: int, logits) -> bool:
    """Whether the decode loop releases after this step: every RELEASE_EVERY steps of a CPU job with big logits."""
    return (step % RELEASE_EVERY == RELEASE_EVERY - 1 and logits.device.type == "cpu"
            and logits.numel() * logits.element_size() >= RELEASE_BYTES)
