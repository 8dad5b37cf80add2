"""Compiled Triton on a GPU, or Triton's interpreter on the CPU: the one place that decides.

Triton reads TRITON_INTERPRET when a kernel is defined (at `@triton.jit`, so when kernels/sampling_triton.py
is imported), not per call: the choice has to be made before that import. Nothing here imports triton.
"""

import os

ENV = "TRITON_INTERPRET"
_TRUE = ("1", "true", "on", "yes")  # what triton itself reads as true (its getenv_bool)


def interpreting(environ=None) -> bool:
    """Whether Triton kernels run through the interpreter (TRITON_INTERPRET is true)."""
    environ = os.environ if environ is None else environ
    return environ.get(ENV, "").lower() in _TRUE


def choose_interpreter(environ=None, cuda: bool | None = None) -> bool:
    """Set TRITON_INTERPRET=1 where there is no CUDA device, so Triton kernels run on CPU tensors; on a CUDA
    machine leave it unset, so they compile and run on the GPU. A TRITON_INTERPRET already set (by the
    user) is left as it is. Returns whether the interpreter is on. Call it before triton is imported.

    environ: the environment to read and set (os.environ by default); cuda: whether CUDA is available
    (torch.cuda.is_available() by default).
    """
    environ = os.environ if environ is None else environ
    if ENV not in environ:
        if cuda is None:
            import torch

            cuda = torch.cuda.is_available()
        if not cuda:
            environ[ENV] = "1"
    return interpreting(environ)
