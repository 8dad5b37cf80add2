"""pigpt's model: a minimal GPT-2 with a static KV cache, its checkpoints, and its tokenizer; int8 weights
(model/quant.py, GPT.quantize) and the CPU decode kernels (model/cpu_decode.py) behind GPT.forward."""

from .cache import KVCache, SharedPrefixKVCache
from .checkpoint import DEFAULT_MODEL, CheckpointError
from .gpt import GPT, GPTConfig
from .tokenizer import EOT_TOKEN, get_tokenizer

__all__ = ["GPT", "GPTConfig", "KVCache", "SharedPrefixKVCache", "CheckpointError", "DEFAULT_MODEL", "get_tokenizer", "EOT_TOKEN"]
