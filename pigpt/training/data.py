"""Training data: documents -> GPT-2 tokens in uint16 shard files, cached; a train/val split; batches.

A corpus is a text file, a directory (every text file under it), or a glob: each file is one document. With
no `--data` it is the running interpreter's standard library taken apart into English prose and short
functions (training/corpus.py): every machine has it, so training needs no download.

Each document is rewritten into the model's text form (model/textform.py: "tabs" turns leading groups of 4
spaces into tabs) and followed by <|endoftext|>. Tokens go into shard files of at most SHARD_TOKENS uint16
each, under a cache directory keyed by the files' paths, sizes and mtimes, so a second run with the same
files reads the shards instead of tokenising again. Units (a file; a stdlib module or help topic) go to the
val split by a hash of their key, a path relative to the corpus root (stable across machines and runs); a
corpus of one file is split by tokens instead (its last `val_fraction`).
"""

from __future__ import annotations

import glob as globlib
import hashlib
import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pigpt.model import EOT_TOKEN, get_tokenizer
from pigpt.model.textform import TextForm

from . import corpus as stdlib_corpus
from . import wordnet
from .corpus import Unit

FORMAT_VERSION = 2
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
def find_files(spec: str) -> tuple[Path, list[Path]]:
    """(root, files) for `--data`: a file, a directory, or a glob such as 'src/**/*.py'."""
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


@dataclass
class Source:
    """What to tokenise: `units` (split by their keys); `files`, whose paths, sizes and mtimes key the cache."""

    root: Path
    units: list[Unit]
    files: list[Path]
    recipe: str  # "files", or the stdlib recipe's version: part of the cache key


def find_source(spec: str | None, wordnet_dir: Path | None | bool = True, wordnet_repeats=wordnet.REPEATS,
                code_repeats: int = 1) -> Source:
    """The corpus of `--data spec`: one document per file. None is the default corpus: the standard library's
    prose and code, and WordNet's sentences and questions where WordNet is installed (`wordnet_dir`: True
    finds it, a path names it, None or False leaves it out; `wordnet_repeats`: copies of its sentences, kind
    questions and superlative questions; `code_repeats`: copies of the standard library's code-on-request
    documents)."""
    if spec is None:
        files = stdlib_corpus.stdlib_files()
        if not files:
            raise DataError(f"found no .py files under the standard library ({stdlib_corpus.stdlib_root()}); "
                            "pass --data PATH")
        units = stdlib_corpus.stdlib_units(code_repeats)
        recipe = f"stdlib-v{stdlib_corpus.VERSION}" + (f"-code{code_repeats}" if code_repeats != 1 else "")
        directory = wordnet.find_dir() if wordnet_dir is True else (wordnet_dir or None)
        if directory is not None:
            units += wordnet.wordnet_units(directory, wordnet_repeats)
            files = files + wordnet.data_files(directory)
            recipe += "+" + wordnet.recipe(wordnet_repeats)
        return Source(stdlib_corpus.stdlib_root(), units, files, recipe)
    root, files = find_files(spec)
    units = [Unit(p.relative_to(root).as_posix(), p.stat().st_size, lambda p=p: read_text(p)) for p in files]
    return Source(root, units, files, "files")


def read_text(path: Path) -> tuple[list[str], str]:
    """([the file's text], "ok"); ([], "binary") for a NUL byte in its first 8 KiB; ([text], "not-utf8") when
    bytes that are not UTF-8 were replaced with U+FFFD."""
    data = path.read_bytes()
    if b"\0" in data[:8192]:
        return [], "binary"
    try:
        return [data.decode("utf-8")], "ok"
    except UnicodeDecodeError:
        return [data.decode("utf-8", errors="replace")], "not-utf8"


# -- the split ------------------------------------------------------------------------------------------------
def _unit_hash(name: str) -> float:
    return int.from_bytes(hashlib.sha256(name.encode()).digest()[:8], "big") / 2**64


def split_units(units: list[Unit], val_fraction: float) -> tuple[list[Unit], list[Unit]]:
    """(train, val) by a hash of each unit's key; both non-empty when there are >= 2 units."""
    if len(units) < 2:
        return list(units), []
    keyed = sorted(units, key=lambda u: _unit_hash(u.key))
    n_val = min(len(units) - 1, max(1, sum(_unit_hash(u.key) < val_fraction for u in units)))
    val = {id(u) for u in keyed[:n_val]}
    return [u for u in units if id(u) not in val], [u for u in units if id(u) in val]


# -- the cache ------------------------------------------------------------------------------------------------
def cache_key(source: Source, val_fraction: float, text_form: str = "plain") -> str:
    h = hashlib.sha256(json.dumps({"format": FORMAT_VERSION, "tokenizer": "gpt2", "val_fraction": val_fraction,
                                   "text_form": text_form, "recipe": source.recipe}).encode())
    for p in source.files:
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


def tokenize_corpus(source: Source, val_fraction: float, directory: Path, progress=True,
                    text_form: str = "plain", spec: str | None = None) -> dict:
    """Tokenise `source` into train/val shards under `directory`; returns the metadata written to meta.json."""
    from tqdm import tqdm

    enc, form = get_tokenizer(), TextForm(text_form)
    train_units, val_units = split_units(source.units, val_fraction)
    single = len(source.units) == 1
    writers = {"train": ShardWriter(directory, "train"), "val": ShardWriter(directory, "val")}
    odd = {"binary": [], "not-utf8": []}  # keys of skipped binary files, of files with replaced bytes
    docs = 0
    bar = tqdm(total=sum(u.size for u in source.units), unit="B", unit_scale=True, desc="tokenising",
               disable=not progress, dynamic_ncols=True)
    for split, group in (("train", train_units), ("val", val_units)):
        for i in range(0, len(group), 64):  # batches of units, encoded on all cores
            chunk = group[i:i + 64]
            texts = []
            for unit in chunk:
                unit_docs, status = unit.load()
                if status in odd:
                    odd[status].append(unit.key)
                texts += [form.to_model(d) for d in unit_docs if d]
            docs += len(texts)
            for ids in enc.encode_ordinary_batch(texts, num_threads=os.cpu_count() or 1):
                tokens = np.asarray(ids + [EOT_TOKEN], dtype=np.int64)
                if single:  # one file: the split is by tokens, its last val_fraction is val
                    cut = len(tokens) - max(1, int(len(tokens) * val_fraction))
                    writers["train"].write(tokens[:cut])
                    writers["val"].write(tokens[cut:])
                else:
                    writers[split].write(tokens)
            bar.update(sum(u.size for u in chunk))
    bar.close()
    if not docs:
        what = f"--data {spec}" if spec else "the corpus"
        raise DataError(f"{what}: all {len(source.units)} file(s) are binary (a NUL byte in the first 8 KiB) or "
                        "empty, so there is no text to train on; pass text files")
    meta = {
        "format": FORMAT_VERSION,
        "root": str(source.root),
        "recipe": source.recipe,
        "files": {"train": len(train_units), "val": len(val_units), "documents": docs,
                  "skipped_binary": len(odd["binary"]), "first_binary": (odd["binary"] or [None])[0],
                  "not_utf8": len(odd["not-utf8"]), "first_not_utf8": (odd["not-utf8"] or [None])[0]},
        "text_form": text_form,
        "shards": {split: w.close() for split, w in writers.items()},
        "unigram_entropy": unigram_entropy(writers["train"].counts) if writers["train"].counts.any() else None,
    }
    meta["tokens"] = {split: sum(s["tokens"] for s in shards) for split, shards in meta["shards"].items()}
    return meta


def prepare(spec: str | None, val_fraction: float, cache_dir: Path | None = None, progress=True,
            text_form: str = "plain", wordnet: bool = True, wordnet_repeats=wordnet.REPEATS,
            code_repeats: int = 1) -> Path:
    """The cache directory of `spec`'s tokens, tokenising first when it is not cached yet."""
    source = find_source(spec, wordnet, wordnet_repeats, code_repeats)
    cache_dir = Path(cache_dir) if cache_dir else default_cache_dir()
    final = cache_dir / cache_key(source, val_fraction, text_form)
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
        meta = tokenize_corpus(source, val_fraction, tmp, progress, text_form, spec)
        (tmp / "meta.json").write_text(json.dumps(meta, indent=1))
        try:
            os.replace(tmp, final)  # the whole directory appears at once, or not at all
        except OSError:  # another process finished the same corpus first
            if not (final / "meta.json").exists():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return final


def describe_files(meta: dict) -> list[str]:
    """Notes on files that were skipped (binary) or read with replaced bytes (not UTF-8), for the user."""
    f, notes = meta["files"], []
    if f.get("skipped_binary"):
        notes.append(f"skipped {f['skipped_binary']} binary file(s) (a NUL byte in the first 8 KiB), "
                     f"e.g. {f['first_binary']}")
    if f.get("not_utf8"):
        notes.append(f"{f['not_utf8']} file(s) are not valid UTF-8, e.g. {f['first_not_utf8']}: their undecodable "
                     "bytes were replaced with U+FFFD")
    return notes


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
           "find_files", "find_source", "split_units", "describe_files", "default_cache_dir"]
