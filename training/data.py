"""Training data: text files -> GPT-2 tokens in uint16 shard files, cached; a train/val split by file; batches.

A corpus is a text file, a directory (every text file under it), or a glob. With no `--data` it is the
running interpreter's own standard library (`*.py` under `sysconfig.get_paths()["stdlib"]`, without
site-packages and the test suites): every machine has it, so training needs no download.

Each file becomes one document followed by <|endoftext|>. Tokens go into shard files of at most
SHARD_TOKENS uint16 each, under a cache directory keyed by the files' paths, sizes and mtimes, so a second
run with the same files reads the shards instead of tokenising again. Files are assigned to the val split
by a hash of their path relative to the corpus root (stable across machines and runs); a corpus of one
file is split by tokens instead (its last `val_fraction`).

GPT-2's BPE has no tokens for runs of spaces: every space of an indentation is a token of its own, a third
of the tokens of typical Python. With `tabs`, each leading group of 4 spaces becomes a tab (one token per
level, still valid Python); it is on for the default stdlib corpus, and samples are shown with tabs expanded.
"""

from __future__ import annotations

import glob as globlib
import hashlib
import json
import os
import re
import shutil
import sysconfig
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from model import EOT_TOKEN, get_tokenizer

FORMAT_VERSION = 1
SHARD_TOKENS = 2**24  # 32 MiB of uint16 per shard file
VOCAB_SIZE = 50257  # GPT-2's vocabulary fits in uint16
_SKIP_DIRS = {"__pycache__", "site-packages", "node_modules"}


class DataError(ValueError):
    """Training data that can't be used, with a message that says why and what to do."""


def default_cache_dir() -> Path:
    root = os.environ.get("PIGPT_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "pigpt")
    return Path(root) / "data"


# -- finding files --------------------------------------------------------------------------------------------
def stdlib_files() -> tuple[Path, list[Path]]:
    """The standard library's .py sources of this interpreter, without site-packages, the test suites (half of
    the stdlib's code is `self.assertEqual(...)`), the codec tables of `encodings` and pydoc's help text."""
    root = Path(sysconfig.get_paths()["stdlib"])
    skip = _SKIP_DIRS | {"test", "tests", "idle_test", "encodings", "pydoc_data"}  # tests, code tables, help text
    files = [p for p in root.rglob("*.py") if not skip.intersection(p.relative_to(root).parts)]
    return root, sorted(files)


def find_files(spec: str | None) -> tuple[Path, list[Path]]:
    """(root, files) for `--data`: None (the stdlib), a file, a directory, or a glob such as 'src/**/*.py'."""
    if spec is None:
        root, files = stdlib_files()
        if not files:
            raise DataError(f"found no .py files under the standard library ({root}); pass --data PATH")
        return root, files
    path = Path(os.path.expanduser(spec))
    if path.is_file():
        return path.parent, [path]
    if path.is_dir():
        files = sorted(
            p for p in path.rglob("*")
            if p.is_file() and not any(part.startswith(".") or part in _SKIP_DIRS
                                       for part in p.relative_to(path).parts)
        )
        if not files:
            raise DataError(f"--data {spec}: the directory holds no files; point it at text files")
        return path, files
    if globlib.has_magic(spec):
        files = sorted(Path(p) for p in globlib.glob(os.path.expanduser(spec), recursive=True) if os.path.isfile(p))
        if not files:
            raise DataError(f"--data {spec!r}: the glob matched no files (quote it so the shell does not expand it)")
        return Path(os.path.commonpath([p.parent for p in files])), files
    raise DataError(f"--data {spec}: no such file or directory; pass a text file, a directory or a glob")


def read_text(path: Path) -> str | None:
    """The file as text, or None for a binary file (a NUL byte in its first 8 KiB)."""
    data = path.read_bytes()
    if b"\0" in data[:8192]:
        return None
    return data.decode("utf-8", errors="replace")


_INDENT = re.compile(r"^(?: {4})+", flags=re.MULTILINE)


def tabify(text: str) -> str:
    """Leading groups of 4 spaces -> tabs ('        x' -> '\t\tx'); other spaces are kept."""
    return _INDENT.sub(lambda m: "\t" * (len(m.group(0)) // 4), text)


# -- the split ------------------------------------------------------------------------------------------------
def _unit_hash(name: str) -> float:
    return int.from_bytes(hashlib.sha256(name.encode()).digest()[:8], "big") / 2**64


def split_files(root: Path, files: list[Path], val_fraction: float) -> tuple[list[Path], list[Path]]:
    """(train, val) by a hash of each path relative to root; both non-empty when there are >= 2 files."""
    if len(files) < 2:
        return list(files), []
    keyed = sorted(((_unit_hash(p.relative_to(root).as_posix()), p) for p in files), key=lambda kp: kp[0])
    n_val = min(len(files) - 1, max(1, sum(u < val_fraction for u, _ in keyed)))
    val = {p for _, p in keyed[:n_val]}
    return [p for p in files if p not in val], [p for p in files if p in val]


# -- the cache ------------------------------------------------------------------------------------------------
def cache_key(files: list[Path], val_fraction: float, tabs: bool = False) -> str:
    h = hashlib.sha256(json.dumps({"format": FORMAT_VERSION, "tokenizer": "gpt2", "val_fraction": val_fraction,
                                   "tabs": tabs}).encode())
    for p in files:
        st = p.stat()
        h.update(f"{p.resolve()}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    return h.hexdigest()[:20]


class ShardWriter:
    """Appends tokens to <prefix>_NNNN.bin files of at most SHARD_TOKENS tokens each."""

    def __init__(self, directory: Path, prefix: str):
        self.directory, self.prefix = directory, prefix
        self.shards: list[dict] = []
        self.buffer: list[np.ndarray] = []
        self.buffered = 0
        self.counts = np.zeros(VOCAB_SIZE, dtype=np.int64)  # unigram counts, for the entropy baseline

    def write(self, tokens: np.ndarray):
        self.counts += np.bincount(tokens, minlength=VOCAB_SIZE)
        self.buffer.append(tokens)
        self.buffered += len(tokens)
        while self.buffered >= SHARD_TOKENS:
            self._flush(SHARD_TOKENS)

    def close(self) -> list[dict]:
        if self.buffered:
            self._flush(self.buffered)
        return self.shards

    def _flush(self, n: int):
        data = np.concatenate(self.buffer)
        name = f"{self.prefix}_{len(self.shards):04d}.bin"
        data[:n].astype(np.uint16).tofile(self.directory / name)
        self.shards.append({"file": name, "tokens": int(n)})
        rest = data[n:]
        self.buffer, self.buffered = ([rest] if len(rest) else []), len(rest)


def unigram_entropy(counts: np.ndarray) -> float:
    """Entropy in nats of the token frequencies: the loss of a model that ignores context."""
    p = counts[counts > 0] / counts.sum()
    return float(-(p * np.log(p)).sum())


def tokenize_corpus(root: Path, files: list[Path], val_fraction: float, directory: Path, progress=True,
                    tabs=False) -> dict:
    """Tokenise `files` into train/val shards under `directory`; returns the metadata written to meta.json."""
    from tqdm import tqdm

    enc = get_tokenizer()
    train_files, val_files = split_files(root, files, val_fraction)
    single = len(files) == 1
    writers = {"train": ShardWriter(directory, "train"), "val": ShardWriter(directory, "val")}
    skipped = 0
    bar = tqdm(total=sum(p.stat().st_size for p in files), unit="B", unit_scale=True, desc="tokenising",
               disable=not progress, dynamic_ncols=True)
    for split, group in (("train", train_files), ("val", val_files)):
        for i in range(0, len(group), 64):  # batches of files, encoded on all cores
            chunk = group[i:i + 64]
            texts = [read_text(p) for p in chunk]
            skipped += sum(t is None for t in texts)
            texts = [tabify(t) if tabs else t for t in texts if t]
            for ids in enc.encode_ordinary_batch(texts, num_threads=os.cpu_count() or 1):
                tokens = np.asarray(ids + [EOT_TOKEN], dtype=np.int64)
                if single:  # one file: the split is by tokens, its last val_fraction is val
                    cut = len(tokens) - max(1, int(len(tokens) * val_fraction))
                    writers["train"].write(tokens[:cut])
                    writers["val"].write(tokens[cut:])
                else:
                    writers[split].write(tokens)
            bar.update(sum(p.stat().st_size for p in chunk))
    bar.close()
    meta = {
        "format": FORMAT_VERSION,
        "root": str(root),
        "files": {"train": len(train_files), "val": len(val_files), "skipped_binary": skipped},
        "tabs": tabs,
        "shards": {split: w.close() for split, w in writers.items()},
        "unigram_entropy": unigram_entropy(writers["train"].counts) if writers["train"].counts.any() else None,
    }
    meta["tokens"] = {split: sum(s["tokens"] for s in shards) for split, shards in meta["shards"].items()}
    return meta


def prepare(spec: str | None, val_fraction: float, cache_dir: Path | None = None, progress=True,
            tabs=False) -> Path:
    """The cache directory of `spec`'s tokens, tokenising first when it is not cached yet."""
    root, files = find_files(spec)
    cache_dir = Path(cache_dir) if cache_dir else default_cache_dir()
    final = cache_dir / cache_key(files, val_fraction, tabs)
    if (final / "meta.json").exists():
        return final
    try:
        cache_dir.mkdir(parents=True, exist_ok=True)
        tmp = cache_dir / f"{final.name}.tmp-{os.getpid()}"
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir()
    except OSError as e:
        raise DataError(f"cannot write the token cache under {cache_dir}: {e.strerror}; pass --cache-dir DIR") from None
    try:
        meta = tokenize_corpus(root, files, val_fraction, tmp, progress, tabs)
        (tmp / "meta.json").write_text(json.dumps(meta, indent=1))
        try:
            os.replace(tmp, final)  # the whole directory appears at once, or not at all
        except OSError:  # another process finished the same corpus first
            if not (final / "meta.json").exists():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return final


# -- reading --------------------------------------------------------------------------------------------------
class TokenStream:
    """One split's shards as a single read-only token sequence (memory-mapped)."""

    def __init__(self, directory: Path, shards: list[dict]):
        self.shards = [np.memmap(directory / s["file"], dtype=np.uint16, mode="r") for s in shards]
        self.offsets = np.cumsum([0] + [len(s) for s in self.shards])  # shard i starts at offsets[i]

    def __len__(self) -> int:
        return int(self.offsets[-1])

    def read(self, start: int, length: int) -> np.ndarray:
        """tokens[start : start + length] as int64, across shard boundaries."""
        out = np.empty(length, dtype=np.int64)
        i, done = int(np.searchsorted(self.offsets, start, side="right")) - 1, 0
        while done < length:
            local = start + done - int(self.offsets[i])
            piece = self.shards[i][local:local + length - done]
            out[done:done + len(piece)] = piece
            done, i = done + len(piece), i + 1
        return out


@dataclass
class Corpus:
    directory: Path
    meta: dict
    train: TokenStream
    val: TokenStream


def load(directory: Path) -> Corpus:
    meta = json.loads((Path(directory) / "meta.json").read_text())
    return Corpus(Path(directory), meta, TokenStream(directory, meta["shards"]["train"]),
                  TokenStream(directory, meta["shards"]["val"]))


def check_fits(corpus: Corpus, block_size: int, spec: str | None):
    """Both splits need one window of block_size + 1 tokens (inputs and the next-token targets)."""
    for split in ("train", "val"):
        n = len(getattr(corpus, split))
        if n < block_size + 1:
            what = "corpus" if split == "train" else "val split"
            raise DataError(
                f"the {what} of --data {spec or '(stdlib)'} has {n} tokens, fewer than one block of "
                f"{block_size} + 1; use more text, a smaller --block-size"
                + (" or a larger --val-fraction" if split == "val" else "")
            )


# -- batches --------------------------------------------------------------------------------------------------
class Windows:
    """Epochs over the non-overlapping (block_size + 1)-token windows of a stream, in a seeded shuffled order.

    Every epoch starts the windows at a random shift in [0, block_size) so block boundaries move between
    epochs. The position (epoch, index) is the whole state: the order is a pure function of (seed, epoch).
    """

    def __init__(self, stream: TokenStream, block_size: int, seed: int):
        self.stream, self.block_size, self.seed = stream, block_size, seed
        self.epoch, self.index = 0, 0
        self._order_epoch, self._order = None, None

    def _starts(self) -> np.ndarray:
        if self._order_epoch != self.epoch:
            rng = np.random.default_rng([self.seed, self.epoch])
            T, n = self.block_size, len(self.stream)
            shift = int(rng.integers(T)) if n - 1 - T >= T else 0
            count = (n - 1 - shift) // T
            self._order = shift + rng.permutation(count) * T
            self._order_epoch = self.epoch
        return self._order

    def next_starts(self, n: int) -> np.ndarray:
        out = []
        while n:
            starts = self._starts()
            take = starts[self.index:self.index + n]
            out.append(take)
            n -= len(take)
            self.index += len(take)
            if self.index == len(starts):
                self.epoch, self.index = self.epoch + 1, 0
        return np.concatenate(out)

    def batch(self, starts: np.ndarray) -> np.ndarray:
        """(rows, block_size + 1) int64 tokens for the given window starts."""
        return np.stack([self.stream.read(int(s), self.block_size + 1) for s in starts])

    def state_dict(self) -> dict:
        return {"epoch": self.epoch, "index": self.index, "seed": self.seed}

    def load_state_dict(self, state: dict):
        self.epoch, self.index, self.seed = state["epoch"], state["index"], state["seed"]


def eval_starts(stream: TokenStream, block_size: int, n: int) -> np.ndarray:
    """A fixed set of at most n val window starts, spread evenly over the stream (the same every eval)."""
    count = (len(stream) - 1) // block_size
    picks = np.unique(np.linspace(0, count - 1, num=min(n, count)).round().astype(np.int64))
    return picks * block_size


def tokens_per_epoch(stream: TokenStream, block_size: int) -> int:
    return ((len(stream) - 1) // block_size) * block_size


def epochs(tokens_seen: int, stream: TokenStream, block_size: int) -> float:
    return tokens_seen / max(1, tokens_per_epoch(stream, block_size))


__all__ = ["DataError", "prepare", "load", "check_fits", "Windows", "eval_starts", "unigram_entropy",
           "find_files", "split_files", "default_cache_dir"]
