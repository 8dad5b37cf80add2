"""Shared test helpers: random-weight GPT-2 checkpoints written by transformers (the reference)."""

import importlib.util
import os
import sys
from pathlib import Path

import pytest
import torch

from pigpt.kernels.interpreter import choose_interpreter

# Without CUDA, Triton kernels run on CPU tensors through the interpreter; with CUDA they compile and run on
# the GPU. Decided here, before any test imports triton; a TRITON_INTERPRET the user set wins.
choose_interpreter()

ROOT = Path(__file__).resolve().parents[1]

torch.set_num_threads(min(2, os.cpu_count() or 1))


def make_hf_model(seed: int = 0, **overrides):
    """A random-weight transformers.GPT2LMHeadModel (eval mode, float32). Small unless told otherwise."""
    from transformers import GPT2Config, GPT2LMHeadModel

    cfg = dict(n_layer=2, n_head=4, n_embd=64, vocab_size=50257, n_positions=128,
               bos_token_id=50256, eos_token_id=50256)
    cfg.update(overrides)
    torch.manual_seed(seed)
    model = GPT2LMHeadModel(GPT2Config(**cfg)).eval()
    # transformers' init draws tiny weights whose logits are nearly flat; widen them so that argmax,
    # top-k and beam choices are decided by clear margins, as in a trained model.
    with torch.no_grad():
        model.transformer.wte.weight.mul_(5.0)
    return model


def save_hf_checkpoint(path, seed: int = 0, safe_serialization: bool = True, **overrides):
    model = make_hf_model(seed, **overrides)
    model.save_pretrained(path, safe_serialization=safe_serialization)
    return model


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory):
    """(directory, transformers model) of a small random GPT-2 with GPT-2's vocabulary."""
    path = tmp_path_factory.mktemp("tiny-gpt2")
    model = save_hf_checkpoint(path)
    return path, model


def load_script(relpath: str):
    """A script beside the package (benchmarks/*.py) as a module, loaded from its file: the scripts import
    `pigpt` only, so nothing needs to put their folder on sys.path."""
    path = ROOT / relpath
    if path.stem in sys.modules:
        return sys.modules[path.stem]
    spec = importlib.util.spec_from_file_location(path.stem, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[path.stem] = module  # before exec: dataclasses and pickling look their module up by name
    spec.loader.exec_module(module)
    return module
