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


def _read_tensors(file: Path) -> dict[str, torch.Tensor]:
    try:
        if file.suffix == ".safetensors":
            from safetensors.torch import load_file

            return load_file(str(file))
        return torch.load(file, map_location="cpu", weights_only=True)
    except Exception as e:
        raise CheckpointError(f"{file}: could not read the weights ({type(e).__name__}: {e})") from None


# -- loading -------------------------------------------------------------------------------------------------
def load_pretrained(cls, name_or_path, device=None, dtype=None):
    directory = resolve(name_or_path)
    config_file = directory / "config.json"
    if not config_file.exists():
        raise CheckpointError(f"{directory}: no config.json; a Hugging Face GPT-2 checkpoint directory has one")
    try:
        hf = json.loads(config_file.read_text())
    except json.JSONDecodeError as e:
        raise CheckpointError(f"{config_file}: not valid JSON ({e})") from None
    config = config_from_hf(hf, str(directory))

    state = {}
    for file in _weight_files(directory):
        state.update(_read_tensors(file))

    with torch.device("meta"):
        model = cls(config)
    expected = {k: p for k, p in model.state_dict().items()}
    tensors = {}
    for key, t in state.items():
        if key.endswith(_IGNORED_SUFFIXES):
            continue
        name = key if key.startswith(("transformer.", "lm_head.")) else "transformer." + key
        tensors[name] = t
    head = tensors.pop("lm_head.weight", None)
    missing = sorted(set(expected) - set(tensors))
    if missing:
        raise CheckpointError(
            f"{directory}: the checkpoint lacks {len(missing)} tensor(s) a GPT-2 with this config needs, "
            f"e.g. {missing[:5]}"
        )
    unexpected = sorted(set(tensors) - set(expected))
    if unexpected:
        raise CheckpointError(
            f"{directory}: the checkpoint has tensors this GPT-2 config does not use, e.g. {unexpected[:5]}; "
            "is config.json the one that belongs to these weights?"
        )
    for name, p in expected.items():
        if tuple(tensors[name].shape) != tuple(p.shape):
            raise CheckpointError(
                f"{directory}: tensor {name} has shape {tuple(tensors[name].shape)}, but config.json implies "
                f"{tuple(p.shape)}; the weights and config.json don't match"
            )
    wte = tensors["transformer.wte.weight"]
    if head is not None and (head.shape != wte.shape or not torch.equal(head.to(wte.dtype), wte)):
        raise CheckpointError(f"{directory}: lm_head.weight differs from transformer.wte.weight; GPT-2 ties them")

    dtype = _parse_dtype(dtype) if dtype is not None else torch.float32
    model = model.to_empty(device=device or "cpu")
    model.load_state_dict({k: v.to(dtype) for k, v in tensors.items()}, strict=True, assign=False)
    model.to(dtype=dtype)
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
