"""Reading and writing GPT-2 checkpoints in the Hugging Face format.

A directory holds `config.json` and the weights as `model.safetensors`, `pytorch_model.bin` (read with
`weights_only=True`: no code runs), or either one sharded with an `*.index.json`. Hub ids (`gpt2`,
`distilgpt2`, any GPT2LMHeadModel repo) are resolved with huggingface_hub, from its local cache first.
"""

from __future__ import annotations

import json
import os
import secrets
from pathlib import Path

import torch

from . import quant
from .textform import CONFIG_KEY, TextForm

HUB_IDS = ("gpt2", "gpt2-medium", "gpt2-large", "gpt2-xl", "distilgpt2")

# Buffers that old GPT-2 checkpoints carry and that we recompute (the causal mask).
_IGNORED_SUFFIXES = (".attn.bias", ".attn.masked_bias")


class CheckpointError(ValueError):
    """A checkpoint that can't be loaded, with a message that says why and what to do."""


# -- config ----------------------------------------------------------------------------------------------
def config_from_hf(hf: dict, source: str):
    from .gpt import GPTConfig

    model_type = hf.get("model_type")
    archs = hf.get("architectures") or []
    if model_type != "gpt2":
        raise CheckpointError(
            f"{source}: config.json describes a {model_type or 'unknown'!r} model "
            f"(architectures {archs}); pigpt loads GPT-2 checkpoints (model_type 'gpt2') only"
        )
    if hf.get("tie_word_embeddings", True) is False:
        raise CheckpointError(f"{source}: untied input/output embeddings are not GPT-2's; pigpt ties them")
    if hf.get("add_cross_attention"):
        raise CheckpointError(f"{source}: cross-attention (encoder-decoder GPT-2) is not supported")
    try:
        return GPTConfig(
            block_size=hf.get("n_positions", 1024),
            vocab_size=hf.get("vocab_size", 50257),
            n_layer=hf.get("n_layer", 12),
            n_head=hf.get("n_head", 12),
            n_embd=hf.get("n_embd", 768),
            n_inner=hf.get("n_inner"),
            layer_norm_epsilon=hf.get("layer_norm_epsilon", 1e-5),
            activation=hf.get("activation_function", "gelu_new"),
            scale_attn_by_inverse_layer_idx=bool(hf.get("scale_attn_by_inverse_layer_idx", False)),
            bos_token_id=hf.get("bos_token_id", 50256) if hf.get("bos_token_id") is not None else 50256,
            eos_token_id=hf.get("eos_token_id", 50256) if hf.get("eos_token_id") is not None else 50256,
        )
    except ValueError as e:
        raise CheckpointError(f"{source}: config.json is not a valid GPT-2 config: {e}") from None


def config_to_hf(cfg) -> dict:
    return {
        "architectures": ["GPT2LMHeadModel"],
        "model_type": "gpt2",
        "vocab_size": cfg.vocab_size,
        "n_positions": cfg.block_size,
        "n_ctx": cfg.block_size,
        "n_embd": cfg.n_embd,
        "n_layer": cfg.n_layer,
        "n_head": cfg.n_head,
        "n_inner": cfg.n_inner,
        "activation_function": cfg.activation,
        "layer_norm_epsilon": cfg.layer_norm_epsilon,
        "resid_pdrop": cfg.dropout,
        "embd_pdrop": cfg.dropout,
        "attn_pdrop": cfg.dropout,
        "initializer_range": 0.02,
        "scale_attn_weights": True,
        "scale_attn_by_inverse_layer_idx": cfg.scale_attn_by_inverse_layer_idx,
        "reorder_and_upcast_attn": False,
        "tie_word_embeddings": True,
        "bos_token_id": cfg.bos_token_id,
        "eos_token_id": cfg.eos_token_id,
        "torch_dtype": "float32",
    }


# -- locating files ----------------------------------------------------------------------------------------
DEFAULT_MODEL = Path(__file__).resolve().parent / "default"  # package data: the shipped model (docs/training.md)
SHIPPED = {"default": DEFAULT_MODEL}  # names GPT.from_pretrained knows without a path or a hub


def resolve(name_or_path) -> Path:
    """A local directory for `name_or_path`: itself, a model shipped with pigpt ("default"), or a hub snapshot
    (cache first, then download). A local directory wins over a shipped name, as it does over a hub id."""
    path = Path(os.path.expanduser(str(name_or_path)))
    if path.is_dir():
        return path
    if str(name_or_path) in SHIPPED:
        return SHIPPED[str(name_or_path)]
    if path.exists():
        raise CheckpointError(
            f"{name_or_path}: is a file; pass the checkpoint directory that holds config.json and the weights"
        )
    text = str(name_or_path)
    if text.startswith((".", "/", "~")) or text.count("/") > 1 or "\\" in text:  # a path, not a hub id
        raise CheckpointError(f"{name_or_path}: no such directory; pass a directory with config.json and weights")
    return _from_hub(str(name_or_path))


def _from_hub(repo_id: str) -> Path:
    try:
        from huggingface_hub import snapshot_download
    except ImportError:  # pragma: no cover - huggingface_hub is a dependency
        raise CheckpointError(
            f"{repo_id!r} is not a local directory, and huggingface_hub is not installed to fetch it from the hub"
        ) from None
    patterns = ["config.json", "*.safetensors", "*.safetensors.index.json"]
    try:
        return Path(snapshot_download(repo_id, allow_patterns=patterns, local_files_only=True))
    except Exception:
        pass
    try:
        local = Path(snapshot_download(repo_id, allow_patterns=patterns))
        if not any(local.glob("*.safetensors")):  # some repos only have pytorch_model.bin
            local = Path(snapshot_download(repo_id, allow_patterns=["config.json", "pytorch_model*.bin*"]))
        return local
    except Exception as e:
        raise CheckpointError(
            f"could not get {repo_id!r}: it is not a local directory and the Hugging Face Hub could not be "
            f"reached or has no such repo ({type(e).__name__}). Pass a local directory in the Hugging Face "
            "GPT-2 format (config.json + model.safetensors), e.g. one written by "
            "`transformers.GPT2LMHeadModel.save_pretrained(dir)` or by `python train.py`"
        ) from None


def _weight_files(directory: Path) -> list[Path]:
    for index_name in ("model.safetensors.index.json", "pytorch_model.bin.index.json"):
        index = directory / index_name
        if index.exists():
            try:
                weight_map = json.loads(index.read_text())["weight_map"]
            except (json.JSONDecodeError, KeyError) as e:
                raise CheckpointError(f"{index}: not a valid shard index ({e})") from None
            files = [directory / f for f in dict.fromkeys(weight_map.values())]
            missing = [f.name for f in files if not f.exists()]
            if missing:
                raise CheckpointError(f"{index} names shards that are missing: {missing}")
            return files
    for name in ("model.safetensors", "pytorch_model.bin"):
        if (directory / name).exists():
            return [directory / name]
    raise CheckpointError(
        f"{directory}: no weights found; expected model.safetensors, pytorch_model.bin or a sharded "
        "*.index.json beside config.json"
    )


_SAFETENSORS_DTYPES = {"F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
                       "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8,
                       "U8": torch.uint8, "BOOL": torch.bool}


class _Tensors:
    """A checkpoint's tensors by name, read one at a time. A .safetensors file is read tensor by tensor into
    memory of our own (its 8-byte header length, a JSON header, then the raw little-endian data), so that a load
    holds the model in its target precision plus one tensor of the file's: never the whole file as well, which a
    memory map would leave resident as it is read, nor a second copy of the model. .bin files go through
    torch.load(weights_only=True, mmap=True) where their format allows."""

    def __init__(self, files: list[Path]):
        self._where = {}  # key -> (file, (dtype, shape, start, end)) or (file, tensor)
        self._scratch = torch.empty(0, dtype=torch.uint8)
        self._chunk = torch.empty(0, dtype=torch.uint8)
        for file in files:
            try:
                if file.suffix == ".safetensors":
                    for k, entry in _safetensors_index(file).items():
                        self._where[k] = (file, entry)
                else:
                    try:
                        state = torch.load(file, map_location="cpu", weights_only=True, mmap=True)
                    except RuntimeError:  # the legacy (pre-zip) format can't be mapped
                        state = torch.load(file, map_location="cpu", weights_only=True)
                    for k, t in state.items():
                        self._where[k] = (file, t)
            except CheckpointError:
                raise
            except Exception as e:
                raise CheckpointError(f"{file}: could not read the weights ({type(e).__name__}: {e})") from None

    def keys(self):
        return self._where.keys()

    def shape(self, key) -> tuple[int, ...]:
        src = self._where[key][1]
        return tuple(src.shape) if isinstance(src, torch.Tensor) else src[1]

    def get(self, key, dtype: torch.dtype, keep: bool = True) -> tuple[torch.Tensor, bool]:
        """(the tensor, whether it is memory of its own). Read straight into a tensor of its own when the file
        stores `dtype` and the caller keeps it, or converted into one a chunk of rows at a time (`chunks`) when
        it stores another; else (keep=False: the caller quantizes it) into one scratch buffer reused for every
        such tensor: memory freed tensor by tensor would fragment the heap and stay resident."""
        file, src = self._where[key]
        if isinstance(src, torch.Tensor):
            return src, False
        stored, shape, begin, end = src
        if stored != dtype and keep:
            out = torch.empty(shape or (1,), dtype=dtype)
            for rows, chunk in self.chunks(key):
                out[rows].copy_(chunk)  # converted in place
            return out.view(shape), True
        if stored == dtype and keep:
            out = torch.empty(shape, dtype=dtype)
            buf = out.view(-1).view(torch.uint8)
        else:
            if self._scratch.numel() < end - begin:  # the largest tensor quantized so far (a linear weight)
                self._scratch = torch.empty(end - begin, dtype=torch.uint8)
            buf = self._scratch[: end - begin]
            out = buf.view(stored).view(shape)
        self._read(file, key, begin, buf)
        return out, stored == dtype and keep

    def chunks(self, key, buf: torch.Tensor | None = None):
        """(row slice, those rows as the file stores them) over the tensor's first dimension, up to CHUNK_BYTES
        at a time, read into `buf` (default: one buffer kept for every call; valid until the next chunk): a
        conversion never holds the whole tensor twice (wte: 154 MB in float32 for GPT-2 small, 322 MB for XL),
        and no temporary is freed to fragment the heap."""
        file, src = self._where[key]
        if isinstance(src, torch.Tensor):
            t = src if src.dim() else src.view(1)
            step = max(1, CHUNK_BYTES // max(1, t[0].numel() * t.element_size()))
            for i in range(0, len(t), step):
                yield slice(i, i + step), t[i:i + step]
            return
        stored, shape, begin, end = src
        shape = shape or (1,)
        row = (end - begin) // shape[0] if shape[0] else 0
        step = max(1, CHUNK_BYTES // max(1, row))
        if buf is None:
            if self._chunk.numel() < min(shape[0], step) * row:
                self._chunk = torch.empty(max(CHUNK_BYTES, row), dtype=torch.uint8)
            buf = self._chunk
        for i in range(0, shape[0], step):
            n = min(step, shape[0] - i)
            self._read(file, key, begin + i * row, buf[: n * row])
            yield slice(i, i + n), buf[: n * row].view(stored).view(n, *shape[1:])

    @staticmethod
    def _read(file, key, begin, buf) -> None:
        try:
            with open(file, "rb") as f:
                f.seek(begin)
                n = f.readinto(buf.numpy()) if buf.numel() else 0
        except OSError as e:
            raise CheckpointError(f"{file}: could not read tensor {key} ({e})") from None
        if n != buf.numel():
            raise CheckpointError(f"{file}: ends inside tensor {key}; the file is truncated, download it again")


CHUNK_BYTES = 8 << 20


def _safetensors_index(file: Path) -> dict:
    """{key: (dtype, shape, start, end)} from a .safetensors header, offsets absolute and checked."""
    size = file.stat().st_size
    with open(file, "rb") as f:
        head = f.read(8)
        n = int.from_bytes(head, "little") if len(head) == 8 else -1
        if not 0 < n <= size - 8:
            raise CheckpointError(f"{file}: not a safetensors file (bad header length)")
        header = json.loads(f.read(n))
    out = {}
    for k, e in header.items():
        if k == "__metadata__":
            continue
        dtype = _SAFETENSORS_DTYPES.get(e.get("dtype"))
        if dtype is None:
            raise CheckpointError(f"{file}: tensor {k} has dtype {e.get('dtype')!r}, which pigpt does not read")
        shape, (a, b) = tuple(e["shape"]), e["data_offsets"]
        numel = 1
        for d in shape:
            numel *= d
        if b - a != numel * dtype.itemsize or not 0 <= a <= b <= size - 8 - n:
            raise CheckpointError(f"{file}: tensor {k}'s offsets don't match its shape or the file's size")
        out[k] = (dtype, shape, 8 + n + a, 8 + n + b)
    return out


class _SkipRandomInit(torch.overrides.TorchFunctionMode):
    """Random initialisation skipped while a model is built on the meta device to be loaded into: its weights
    are about to be read from the file, and torch's meta kernel for normal_ imports ~145 MB of modules
    (sympy, mpmath) on first use, which a load would otherwise hold for the life of the process."""

    SKIPPED = {torch.Tensor.normal_, torch.Tensor.uniform_, torch.nn.init.normal_, torch.nn.init.uniform_,
               torch.nn.init.trunc_normal_}

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func in self.SKIPPED:
            t = args[0] if args else kwargs.get("tensor")
            if isinstance(t, torch.Tensor) and t.is_meta:
                return t
        return func(*args, **kwargs)


# -- loading -------------------------------------------------------------------------------------------------
def load_pretrained(cls, name_or_path, device=None, dtype=None, quantize=None):
    """The model in `dtype` (default float32) on `device`, its linear layers quantized as they are read when
    `quantize` names a mode: each tensor goes from the file straight into its final form (peak memory: the
    model as it will be, plus one tensor of the file's)."""
    directory = resolve(name_or_path)
    config_file = directory / "config.json"
    if not config_file.exists():
        raise CheckpointError(f"{directory}: no config.json; a Hugging Face GPT-2 checkpoint directory has one")
    try:
        hf = json.loads(config_file.read_text())
    except json.JSONDecodeError as e:
        raise CheckpointError(f"{config_file}: not valid JSON ({e})") from None
    config = config_from_hf(hf, str(directory))
    source = _Tensors(_weight_files(directory))

    with torch.device("meta"), _SkipRandomInit():
        model = cls(config)
    expected = dict(model.state_dict())
    names = {}  # our name -> the checkpoint's key
    for key in source.keys():
        if key.endswith(_IGNORED_SUFFIXES):
            continue
        names[key if key.startswith(("transformer.", "lm_head.")) else "transformer." + key] = key
    head = names.pop("lm_head.weight", None)
    missing = sorted(set(expected) - set(names))
    if missing:
        raise CheckpointError(
            f"{directory}: the checkpoint lacks {len(missing)} tensor(s) a GPT-2 with this config needs, "
            f"e.g. {missing[:5]}"
        )
    unexpected = sorted(set(names) - set(expected))
    if unexpected:
        raise CheckpointError(
            f"{directory}: the checkpoint has tensors this GPT-2 config does not use, e.g. {unexpected[:5]}; "
            "is config.json the one that belongs to these weights?"
        )
    for name, p in expected.items():
        if source.shape(names[name]) != tuple(p.shape):
            raise CheckpointError(
                f"{directory}: tensor {name} has shape {source.shape(names[name])}, but config.json implies "
                f"{tuple(p.shape)}; the weights and config.json don't match"
            )
    if head is not None and source.shape(head) != source.shape(names["transformer.wte.weight"]):
        raise CheckpointError(f"{directory}: lm_head.weight differs from transformer.wte.weight; GPT-2 ties them")

    dtype = _parse_dtype(dtype) if dtype is not None else torch.float32
    device = torch.device(device or "cpu")
    with torch.no_grad():
        # quant.quantize_rows's buffer, one for every weight (see there)
        work = quant.work_buffer(config, device) if quantize else None
        for name in expected:
            module_name, _, attr = name.rpartition(".")
            module = model.get_submodule(module_name)
            if quantize and name == "transformer.wte.weight":  # its int8 copy, a chunk of rows as read
                rows = ((r, c.to(dtype)) for r, c in source.chunks(names[name]))
                model.quantize_embedding_(rows, device, dtype, work)
                continue
            quantized = quantize and attr == "weight" and hasattr(module, "quantize_")
            t, own = source.get(names[name], dtype, keep=not quantized)
            if quantized:
                module.quantize_(t.to(device, dtype), work)  # int8 from the weight as the float model would hold it
                continue
            converted = t.to(device, dtype)
            # memory of our own, not a view of a mapped file or of the scratch buffer
            t = converted if (own or converted.data_ptr() != t.data_ptr()) else t.clone()
            del converted
            setattr(module, attr, torch.nn.Parameter(t.contiguous(), requires_grad=True))
        wte = names["transformer.wte.weight"]
        other = torch.empty(CHUNK_BYTES if head is not None else 0, dtype=torch.uint8)
        if head is not None and not all(torch.equal(a.to(dtype), b.to(dtype)) for (_, a), (_, b) in
                                        zip(source.chunks(head, other), source.chunks(wte))):
            raise CheckpointError(f"{directory}: lm_head.weight differs from transformer.wte.weight; GPT-2 ties them")
    model.text_form = TextForm(hf.get(CONFIG_KEY) or "plain").name  # what textform.for_model(model) reads
    return model.eval()


def _parse_dtype(dtype):
    if isinstance(dtype, torch.dtype):
        return dtype
    names = {"float32": torch.float32, "fp32": torch.float32, "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
             "float16": torch.float16, "fp16": torch.float16}
    if dtype not in names:
        raise ValueError(f"unknown dtype {dtype!r}; use one of {sorted(names)}")
    return names[dtype]


# -- saving ---------------------------------------------------------------------------------------------------
def save_pretrained(model, directory, dtype=None, text_form: str | None = None) -> None:
    """config.json + model.safetensors. `dtype` (e.g. "float16") stores the weights in that precision (loading
    casts them back to float32 unless told otherwise); `text_form` (default: the model's `text_form`, else
    "plain") is recorded under textform.CONFIG_KEY, which transformers ignores."""
    from safetensors.torch import save_file

    directory = Path(directory)
    try:
        directory.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise CheckpointError(f"cannot create checkpoint directory {directory}: {e.strerror}") from None
    dtype = _parse_dtype(dtype) if dtype is not None else model.dtype
    tensors = {k: v.detach().to("cpu", dtype if v.is_floating_point() else v.dtype).contiguous()
               for k, v in model.state_dict().items()}
    config = config_to_hf(model.config)
    config["torch_dtype"] = str(dtype).removeprefix("torch.")
    config[CONFIG_KEY] = TextForm(text_form or getattr(model, "text_form", None) or "plain").name
    # Weights first, config last: a directory with a config.json always has matching weights.
    atomic_write(directory / "model.safetensors", lambda f: save_file(tensors, f, metadata={"format": "pt"}))
    atomic_write(directory / "config.json",
                 lambda f: Path(f).write_text(json.dumps(config, indent=2, sort_keys=True) + "\n"))


def atomic_write(path: Path, write) -> None:
    """Call write(tmp_path), fsync, then rename over `path`: readers see the old file or the new, never half.

    The file gets the mode of any newly created file (0666 less the umask, 0644 under umask 022), not the
    0600 of tempfile.mkstemp: the renamed file keeps its temporary's mode."""
    path = Path(path)
    tmp = path.parent / f".{path.name}.{os.getpid()}-{secrets.token_hex(4)}.tmp"
    os.close(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
    mode = os.stat(tmp).st_mode & 0o777  # 0666 less the umask: the kernel applied it
    try:
        write(tmp)
        os.chmod(tmp, mode)  # some writers (safetensors) replace the file with a 0600 one of their own
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
