"""Train a GPT-2 from scratch, or fine-tune one, on any text.

    python train.py                                  # default preset on the stdlib's .py sources, into out/
    python train.py --data notes.txt --max-steps 500
    python train.py --data 'src/**/*.py' --init gpt2 --out out-ft   # fine-tune GPT-2 (or --init DIR)
    python train.py --resume                         # continue out/ exactly where it stopped
    torchrun --nproc_per_node=4 train.py             # DistributedDataParallel, same global batch

The run directory (out/) gets the model in the Hugging Face GPT-2 format (sample.py, GPT.from_pretrained and
transformers load it), train_state.pt for --resume, log.jsonl and loss.png. See docs/training.md.
"""

from __future__ import annotations

import argparse
import contextlib
import math
import os
import signal
import sys
import time
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import torch
import torch.distributed as dist

from model import EOT_TOKEN, GPT, GPTConfig, CheckpointError, get_tokenizer
from training import data as datalib
from training import run as runlib
from training.data import DataError
from training.loss import LossModel
from training.run import TrainError

# -- configuration ------------------------------------------------------------------------------------------------


@dataclass
class TrainConfig:
    preset: str = "default"
    data: str | None = None  # None: the running interpreter's standard library sources
    val_fraction: float = 0.05
    tabs: bool | None = None  # leading 4 spaces -> tab before tokenising; None: on for the stdlib corpus only
    init: str = "scratch"  # scratch | gpt2 | any directory GPT.from_pretrained accepts
    n_layer: int = 4
    n_head: int = 4
    n_embd: int = 128
    block_size: int = 128  # training context (<= the model's context when fine-tuning)
    dropout: float = 0.0
    batch_size: int = 8  # rows per micro-step per process
    grad_accum: int = 1  # micro-steps per optimizer step, over all processes together
    max_steps: int = 600
    lr: float = 4e-3
    min_lr: float | None = None  # None: lr / 10
    warmup_steps: int = 20
    lr_decay_steps: int | None = None  # None: max_steps
    weight_decay: float = 0.1
    beta1: float = 0.9
    beta2: float = 0.95
    grad_clip: float = 1.0
    dtype: str = "auto"  # auto: bfloat16 autocast where it is faster (CUDA; CPUs measured), else float32
    seed: int = 1337
    eval_interval: int = 100
    eval_iters: int = 8
    ckpt_interval: int | None = None  # None: eval_interval
    compile: bool = False
    samples: int = 3
    sample_tokens: int = 120
    temperature: float = 0.7
    top_k: int = 50
    prompt: str | None = None  # None: unconditional (after <|endoftext|>)


PRESETS = {
    # For tests: seconds on a CPU.
    "tiny": dict(n_layer=2, n_head=2, n_embd=32, block_size=32, batch_size=4, max_steps=20, lr=3e-3,
                 warmup_steps=2, eval_interval=10, eval_iters=2, samples=1, sample_tokens=16),
    # <= 5 minutes on 2 CPU cores (docs/training.md has the measurements).
    "default": {},
    # GPT-2 small's shape (124M), for a GPU.
    "gpt2": dict(n_layer=12, n_head=12, n_embd=768, block_size=1024, batch_size=8, grad_accum=8,
                 max_steps=5000, lr=6e-4, warmup_steps=200, eval_interval=250, eval_iters=20),
}
ARCH_KEYS = ("n_layer", "n_head", "n_embd", "dropout")
FINETUNE_LR = 1e-4  # --init from a checkpoint, unless --lr: a scratch lr would wreck pretrained weights
# What a resumed run may change: nothing that alters the losses up to the old last step.
RESUME_MUTABLE = {"max_steps", "eval_interval", "eval_iters", "ckpt_interval", "compile", "samples",
                  "sample_tokens", "temperature", "top_k", "prompt"}


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
                                argument_default=None)
    add = p.add_argument
    add("--preset", choices=sorted(PRESETS), help="size and schedule preset (default: default)")
    add("--data", help="a text file, a directory of text/code files, or a quoted glob (default: stdlib .py)")
    add("--val-fraction", type=float, help="share of files held out for validation (default 0.05)")
    add("--cache-dir", type=Path, help="where token shards are cached (default ~/.cache/pigpt/data)")
    add("--init", help="scratch, gpt2 (any hub id) or a checkpoint directory (default scratch)")
    for name in ("n-layer", "n-head", "n-embd", "block-size", "batch-size", "grad-accum", "max-steps",
                 "warmup-steps", "lr-decay-steps", "eval-interval", "eval-iters", "ckpt-interval", "seed",
                 "samples", "sample-tokens", "top-k"):
        add(f"--{name}", type=int)
    for name in ("dropout", "lr", "min-lr", "weight-decay", "beta1", "beta2", "grad-clip", "temperature"):
        add(f"--{name}", type=float)
    add("--tabs", action=argparse.BooleanOptionalAction,
        help="turn leading groups of 4 spaces into tabs before tokenising (GPT-2 spends a token per space); "
             "default: on for the stdlib corpus, off for --data")
    add("--dtype", choices=["auto", "float32", "bfloat16"], help="autocast dtype (default auto)")
    add("--compile", action="store_true", default=None, help="torch.compile the model")
    add("--prompt", help="prompt of the samples printed at the end (default: unconditional)")
    add("--out", type=Path, default=Path("out"), help="run directory (default out)")
    add("--resume", action="store_true", help="continue the run in --out exactly where it stopped")
    add("--overwrite", action="store_true", help="replace the model already in --out")
    add("--device", default="auto", help="auto, cpu, cuda, cuda:N (default auto)")
    add("--num-threads", type=int, help="torch CPU threads (default: torch's, split among local processes)")
    return p.parse_args(argv)


def resolve_config(args, saved: dict | None, out: Path) -> TrainConfig:
    """Preset < saved run (on --resume) < flags given; a flag that would change a resumed run is an error."""
    names = {f.name for f in fields(TrainConfig)}
    given = {k: v for k, v in vars(args).items() if k in names and v is not None}
    if saved is not None:
        for k, v in given.items():
            if k not in RESUME_MUTABLE and v != saved.get(k) and not (k == "dtype" and v == "auto"):
                raise TrainError(
                    f"--{k.replace('_', '-')} {v} conflicts with the run being resumed in {out} "
                    f"(it used {saved.get(k)}); drop the flag to resume that run, or start a new one with another --out"
                )
        return TrainConfig(**{**saved, **given})
    cfg = TrainConfig(**{**PRESETS[given.get("preset", "default")], **given})
    if cfg.init != "scratch":
        clash = [k for k in ARCH_KEYS if k in given]
        if clash:
            raise TrainError(f"--{clash[0].replace('_', '-')} can't be set with --init {cfg.init}: "
                             "the architecture comes from the checkpoint")
        if "lr" not in given:
            cfg.lr = FINETUNE_LR
    cfg.tabs = cfg.data is None if cfg.tabs is None else cfg.tabs
    cfg.min_lr = cfg.lr / 10 if cfg.min_lr is None else cfg.min_lr
    cfg.lr_decay_steps = cfg.lr_decay_steps or cfg.max_steps
    cfg.ckpt_interval = cfg.ckpt_interval or cfg.eval_interval
    validate(cfg)
    return cfg


def validate(cfg: TrainConfig) -> None:
    for k in ("block_size", "batch_size", "grad_accum", "max_steps", "lr_decay_steps", "eval_interval",
              "eval_iters", "ckpt_interval"):
        if getattr(cfg, k) < 1:
            raise TrainError(f"--{k.replace('_', '-')} must be a positive integer, got {getattr(cfg, k)}")
    if not 0 < cfg.val_fraction <= 0.5:
        raise TrainError(f"--val-fraction must be in (0, 0.5], got {cfg.val_fraction}")
    if cfg.lr <= 0 or cfg.min_lr < 0 or cfg.min_lr > cfg.lr:
        raise TrainError(f"need 0 <= --min-lr <= --lr and --lr > 0, got lr={cfg.lr}, min_lr={cfg.min_lr}")
    if not 0 <= cfg.warmup_steps <= cfg.lr_decay_steps:
        raise TrainError(f"--warmup-steps {cfg.warmup_steps} must be within [0, lr_decay_steps={cfg.lr_decay_steps}]")


def learning_rate(step: int, cfg: TrainConfig) -> float:
    """Linear warmup to lr, then a cosine down to min_lr at lr_decay_steps, min_lr after."""
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    if step >= cfg.lr_decay_steps:
        return cfg.min_lr
    progress = (step - cfg.warmup_steps) / max(1, cfg.lr_decay_steps - cfg.warmup_steps)
    return cfg.min_lr + 0.5 * (1 + math.cos(math.pi * progress)) * (cfg.lr - cfg.min_lr)


# -- devices and processes ----------------------------------------------------------------------------------------


@dataclass
class Dist:
    rank: int = 0
    world: int = 1
    local_rank: int = 0
    local_world: int = 1

    @property
    def master(self) -> bool:
        return self.rank == 0


def setup(args) -> tuple[Dist, torch.device]:
    """torchrun's environment -> a process group (gloo on CPU, nccl on CUDA); the device; CPU threads."""
    want = args.device if args.device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu")
    d = Dist()
    if "RANK" in os.environ and "WORLD_SIZE" in os.environ:
        d = Dist(int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"]), int(os.environ.get("LOCAL_RANK", 0)),
                 int(os.environ.get("LOCAL_WORLD_SIZE", 1)))
        if want.startswith("cuda"):
            want = f"cuda:{d.local_rank}"
            torch.cuda.set_device(want)
        dist.init_process_group("nccl" if want.startswith("cuda") else "gloo")
    device = torch.device(want)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise TrainError("--device cuda: no CUDA device is available; use --device cpu")
    if args.num_threads:
        torch.set_num_threads(args.num_threads)
    elif device.type == "cpu" and d.local_world > 1:
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // d.local_world))
    return d, device


def resolve_dtype(cfg: TrainConfig, device: torch.device) -> str:
    """The autocast dtype. auto: bfloat16 on CUDA; on a CPU only where bf16 matmuls measure faster than
    float32 ones (AMX does; on the avx512_bf16 CPU this was written on they run at ~0.6x, see docs/training.md)."""
    bf16_ok = (torch.cuda.is_bf16_supported() if device.type == "cuda"
               else torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported())
    if cfg.dtype == "bfloat16" and not bf16_ok:
        raise TrainError(f"--dtype bfloat16: this {device.type} has no bfloat16 support; use --dtype float32")
    if cfg.dtype != "auto":
        return cfg.dtype
    if not bf16_ok:
        return "float32"
    if device.type == "cuda":
        return "bfloat16"
    faster = measure_peak_flops(device, torch.bfloat16) > 1.25 * measure_peak_flops(device, torch.float32)
    return "bfloat16" if faster else "float32"


def all_reduce_sum(x: torch.Tensor, d: Dist) -> torch.Tensor:
    if d.world > 1:
        dist.all_reduce(x, op=dist.ReduceOp.SUM)
    return x


def measure_peak_flops(device: torch.device, dtype: torch.dtype) -> float:
    """Best of a few large matmuls in the training dtype: the denominator of MFU."""
    n = 4096 if device.type == "cuda" else 1024
    gen = torch.Generator(device=device).manual_seed(0)  # not the global RNG: a resumed run restores that
    a, b = (torch.randn(n, n, device=device, dtype=dtype, generator=gen) for _ in range(2))
    best = float("inf")
    for _ in range(4):
        if device.type == "cuda":
            torch.cuda.synchronize()
        t = time.perf_counter()
        a @ b
        if device.type == "cuda":
            torch.cuda.synchronize()
        best = min(best, time.perf_counter() - t)
    return 2 * n**3 / best


def flops_per_token(gpt: GPT, block_size: int) -> float:
    """Forward + backward FLOPs per token: 6 per parameter (the tied head counted once) + attention."""
    c = gpt.config
    return 6 * gpt.num_params() + 12 * c.n_layer * c.n_embd * block_size


# -- model and optimizer ------------------------------------------------------------------------------------------


def build_model(cfg: TrainConfig, saved: dict | None) -> GPT:
    if saved is not None:
        gpt = GPT(GPTConfig.from_dict(saved["model_config"]))
        gpt.load_state_dict(saved["model"])
    elif cfg.init == "scratch":
        torch.manual_seed(cfg.seed)
        gpt = GPT(GPTConfig(block_size=cfg.block_size, n_layer=cfg.n_layer, n_head=cfg.n_head,
                            n_embd=cfg.n_embd, dropout=cfg.dropout))
    else:
        gpt = GPT.from_pretrained(cfg.init)
        c = gpt.config
        cfg.n_layer, cfg.n_head, cfg.n_embd, cfg.dropout = c.n_layer, c.n_head, c.n_embd, c.dropout
    if cfg.block_size > gpt.config.block_size:
        raise TrainError(f"--block-size {cfg.block_size} is longer than the model's context "
                         f"({gpt.config.block_size}); pass --block-size {gpt.config.block_size} or less")
    return gpt.float().train()


def make_optimizer(gpt: GPT, cfg: TrainConfig, device: torch.device) -> torch.optim.AdamW:
    """AdamW; weight decay on matrices and embeddings (>= 2-D) only, never on biases and layer norms."""
    params = [p for p in gpt.parameters() if p.requires_grad]
    groups = [{"params": [p for p in params if p.dim() >= 2], "weight_decay": cfg.weight_decay},
              {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=cfg.lr, betas=(cfg.beta1, cfg.beta2), fused=device.type in ("cpu", "cuda"))


# -- training -----------------------------------------------------------------------------------------------------


def local_micro_batches(windows, cfg: TrainConfig, d: Dist, device) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """This process's share of the next global batch: every process draws the same starts, takes its slice."""
    per_rank = cfg.grad_accum // d.world
    starts = windows.next_starts(cfg.batch_size * cfg.grad_accum)
    mine = starts[d.rank * per_rank * cfg.batch_size:(d.rank + 1) * per_rank * cfg.batch_size]
    batches = []
    for i in range(per_rank):
        tokens = torch.from_numpy(windows.batch(mine[i * cfg.batch_size:(i + 1) * cfg.batch_size]))  # (B, T+1)
        tokens = tokens.to(device, non_blocking=True)
        batches.append((tokens[:, :-1], tokens[:, 1:]))
    return batches


def train_step(model, optimizer, micro_batches, lr: float, cfg: TrainConfig, amp, d: Dist) -> torch.Tensor:
    """One optimizer step over this process's micro-batches; returns the mean loss over all processes."""
    for group in optimizer.param_groups:
        group["lr"] = lr
    total = torch.zeros((), device=micro_batches[0][0].device)
    for i, (x, y) in enumerate(micro_batches):
        if d.world > 1:  # all-reduce the gradients once, after the last micro-step
            model.require_backward_grad_sync = i == len(micro_batches) - 1
        with amp:
            loss = model(x, y) / len(micro_batches)
        loss.backward()
        total += loss.detach()
    if cfg.grad_clip > 0:
        torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return all_reduce_sum(total, d) / d.world


@torch.no_grad()
def evaluate(loss_model: LossModel, corpus, cfg: TrainConfig, amp, d: Dist, device) -> float:
    """Mean loss over a fixed set of val windows (the same every time), shared out among the processes."""
    starts = datalib.eval_starts(corpus.val, cfg.block_size, cfg.eval_iters * cfg.batch_size)
    batches = [starts[i:i + cfg.batch_size] for i in range(0, len(starts), cfg.batch_size)]
    windows = datalib.Windows(corpus.val, cfg.block_size, seed=0)
    sums = torch.zeros(2, dtype=torch.float64, device=device)  # (loss * rows, rows)
    loss_model.eval()
    for rows in batches[d.rank::d.world]:
        tokens = torch.from_numpy(windows.batch(rows)).to(device)
        with amp:
            loss = loss_model(tokens[:, :-1], tokens[:, 1:])
        sums += torch.tensor([loss.item() * len(rows), len(rows)], dtype=torch.float64, device=device)
    loss_model.train()
    sums = all_reduce_sum(sums, d)
    return (sums[0] / sums[1]).item()


class StopFlag:
    """Ctrl-C asks the loop to stop after the current step and save; a second Ctrl-C interrupts at once."""

    def __init__(self, enabled: bool):
        self.requested = False
        if enabled:
            self.previous = signal.signal(signal.SIGINT, self._handle)

    def _handle(self, signum, frame):
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True
        print("\nstopping after this step (Ctrl-C again to abort without saving)", file=sys.stderr)


@torch.no_grad()
def sample(gpt: GPT, prompt: str | None, n: int, max_new: int, temperature: float, top_k: int, seed: int) -> list[str]:
    """n continuations of prompt, drawn with temperature and top-k through the KV cache."""
    enc = get_tokenizer()
    ids = [EOT_TOKEN] + (enc.encode_ordinary(prompt) if prompt else [])
    ids = ids[-(gpt.config.block_size - 1):]
    max_new = min(max_new, gpt.config.block_size - len(ids))
    gen = torch.Generator(device=gpt.device).manual_seed(seed)
    cache = gpt.new_cache(n, len(ids) + max_new)
    logits = gpt(torch.tensor([ids] * n, device=gpt.device), cache, last_only=True)[:, -1]  # (n, V)
    out = []
    for _ in range(max_new):
        if temperature == 0:
            nxt = logits.argmax(-1)
        else:
            logits = logits.float() / temperature
            if top_k:
                kth = torch.topk(logits, min(top_k, logits.shape[-1])).values[:, -1:]
                logits = logits.masked_fill(logits < kth, float("-inf"))
            nxt = torch.multinomial(torch.softmax(logits, -1), 1, generator=gen).squeeze(1)  # (n,)
        out.append(nxt)
        if len(out) < max_new:
            logits = gpt(nxt[:, None], cache, last_only=True)[:, -1]
    rows = torch.stack(out, 1).tolist()  # (n, max_new)
    texts = []
    for row in rows:
        row = row[:row.index(EOT_TOKEN)] if EOT_TOKEN in row else row
        texts.append((prompt or "") + enc.decode(row))
    return texts


def main(argv=None) -> dict:
    """Train as the command line `argv` says; returns a summary (final step, val loss, tokens/s, samples...)."""
    args = parse_args(argv)
    d, device = setup(args)
    try:
        run = prepare(args, d, device)
        train_loop(run)
        return finish(run)
    finally:
        if d.world > 1 and dist.is_initialized():
            dist.destroy_process_group()


@dataclass
class Run:
    """Everything one training run holds."""

    cfg: TrainConfig
    d: Dist
    device: torch.device
    out: Path
    corpus: datalib.Corpus
    gpt: GPT
    loss_model: LossModel  # gpt + loss, unwrapped: evaluation
    model: torch.nn.Module  # what training calls: loss_model, maybe compiled, maybe in DDP
    optimizer: torch.optim.Optimizer
    windows: datalib.Windows
    amp: contextlib.AbstractContextManager
    peak: float  # FLOP/s of one process, measured
    step: int = 0
    elapsed: float = 0.0  # seconds of training steps, over all sessions of the run
    val_loss: float | None = None
    session_steps: int = 0  # steps and seconds of this invocation, for tokens/s
    session_time: float = 0.0
    stopped: bool = False

    @property
    def tokens_per_step(self) -> int:
        return self.cfg.batch_size * self.cfg.grad_accum * self.cfg.block_size

    def say(self, *a):
        if self.d.master:
            print(*a)

    def evaluate(self) -> float:
        self.val_loss = evaluate(self.loss_model, self.corpus, self.cfg, self.amp, self.d, self.device)
        return self.val_loss

    def checkpoint(self) -> None:
        rngs = [runlib.rng_state()]
        if self.d.world > 1:
            rngs = [None] * self.d.world
            dist.all_gather_object(rngs, runlib.rng_state())
        if self.d.master:
            state = {"step": self.step, "config": asdict(self.cfg), "model_config": self.gpt.config.to_dict(),
                     "model": self.gpt.state_dict(), "optimizer": self.optimizer.state_dict(),
                     "data": self.windows.state_dict(), "rng": rngs, "elapsed": self.elapsed,
                     "data_cache": self.corpus.directory.name}
            runlib.save_checkpoint(self.out, self.gpt, state)


def load_corpus(cfg: TrainConfig, cache_dir, d: Dist) -> datalib.Corpus:
    datalib.find_files(cfg.data)  # a bad --data fails here, on every process
    if d.master:
        directory = datalib.prepare(cfg.data, cfg.val_fraction, cache_dir, tabs=cfg.tabs)
    if d.world > 1:
        dist.barrier()  # rank 0 tokenises first; the others then read its cache
    if not d.master:
        directory = datalib.prepare(cfg.data, cfg.val_fraction, cache_dir, progress=False, tabs=cfg.tabs)
    corpus = datalib.load(directory)
    datalib.check_fits(corpus, cfg.block_size, cfg.data)
    return corpus


def prepare(args, d: Dist, device: torch.device) -> Run:
    """Check the request, then build the data, model and optimizer, restored from out/ on --resume."""
    out = args.out
    runlib.check_out_dir(out, args.resume, args.overwrite)
    saved = runlib.load_state(out) if args.resume else None
    cfg = resolve_config(args, saved["config"] if saved else None, out)
    if cfg.grad_accum % d.world:
        raise TrainError(f"--grad-accum {cfg.grad_accum} must be a multiple of the number of processes ({d.world}): "
                         "the global batch is batch_size x grad_accum rows")
    cfg.dtype = resolve_dtype(cfg, device)  # saved resolved: a resumed run keeps the same arithmetic
    if d.world > 1:  # a timed choice could differ between processes: rank 0's holds
        choice = [cfg.dtype]
        dist.broadcast_object_list(choice, src=0)
        cfg.dtype = choice[0]
    gpt = build_model(cfg, saved)
    corpus = load_corpus(cfg, args.cache_dir, d)
    if d.master and not args.resume:
        runlib.clear_run(out)

    gpt.to(device)
    loss_model = model = LossModel(gpt)
    if cfg.compile:
        model = torch.compile(model)
    if d.world > 1:
        model = torch.nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None)
    amp_dtype = getattr(torch, cfg.dtype)
    amp = torch.autocast(device.type, dtype=amp_dtype) if amp_dtype != torch.float32 else contextlib.nullcontext()
    run = Run(cfg, d, device, out, corpus, gpt, loss_model, model, make_optimizer(gpt, cfg, device),
              datalib.Windows(corpus.train, cfg.block_size, cfg.seed), amp, measure_peak_flops(device, amp_dtype))
    if saved is not None:
        run.optimizer.load_state_dict(saved["optimizer"])
        run.windows.load_state_dict(saved["data"])
        run.step, run.elapsed = saved["step"], saved["elapsed"]
        if len(saved["rng"]) == d.world:
            runlib.set_rng_state(saved["rng"][d.rank])
        if saved["data_cache"] != corpus.directory.name:
            run.say(f"warning: the data changed since step {run.step} was saved; resuming on the new data")
        if d.master:
            runlib.truncate_log(out, run.step)
    describe(run, resumed=saved is not None)
    return run


def describe(run: Run, resumed: bool) -> None:
    cfg, c, meta = run.cfg, run.gpt.config, run.corpus.meta
    run.say(f"data: {meta['root']} -> {len(run.corpus.train):,} train / {len(run.corpus.val):,} val tokens "
            f"({meta['files']['train']} / {meta['files']['val']} files), cache {run.corpus.directory}")
    run.say(f"unigram entropy of the train tokens: {meta['unigram_entropy']:.3f} nats/token "
            "(the loss of a model that ignores context)")
    run.say(f"model: {run.gpt.num_params() / 1e6:.2f}M parameters, {c.n_layer} layers, width {c.n_embd}, "
            f"context {cfg.block_size}; " + (f"resumed at step {run.step}" if resumed else f"init {cfg.init}"))
    run.say(f"training: {cfg.max_steps} steps of {run.tokens_per_step:,} tokens ({cfg.batch_size} x "
            f"{cfg.grad_accum} x {cfg.block_size}) on {run.d.world} x {run.device}, {cfg.dtype}; "
            f"peak {run.peak / 1e9:.0f} GFLOP/s per process (measured)")


def train_loop(run: Run) -> None:
    """Steps until max_steps (or Ctrl-C): log each, evaluate and checkpoint at their intervals."""
    from tqdm import tqdm

    cfg, d = run.cfg, run.d
    fpt = flops_per_token(run.gpt, cfg.block_size)
    log = runlib.Log(run.out) if d.master else None
    stop = StopFlag(enabled=d.world == 1)
    if run.step == 0:
        run.evaluate()
        if log:
            log.write({"step": 0, "val_loss": run.val_loss})
    bar = tqdm(total=cfg.max_steps, initial=run.step, disable=not d.master, desc="training", dynamic_ncols=True)
    try:
        while run.step < cfg.max_steps and not stop.requested:
            t0 = time.perf_counter()
            lr = learning_rate(run.step, cfg)
            batches = local_micro_batches(run.windows, cfg, d, run.device)
            loss = train_step(run.model, run.optimizer, batches, lr, cfg, run.amp, d).item()
            dt = time.perf_counter() - t0
            run.step += 1
            run.elapsed += dt
            run.session_steps += 1
            run.session_time += dt
            tps = run.tokens_per_step / dt
            mfu = fpt * tps / (run.peak * d.world)
            record = {"step": run.step, "loss": loss, "lr": lr, "tokens": run.step * run.tokens_per_step,
                      "tokens_per_s": tps, "mfu": mfu, "time": run.elapsed}
            if run.step % cfg.eval_interval == 0 or run.step == cfg.max_steps:
                record["val_loss"] = run.evaluate()
            if log:
                log.write(record)
            bar.update(1)
            bar.set_postfix(loss=f"{loss:.3f}", val=f"{run.val_loss:.3f}" if run.val_loss else "-",
                            tok_s=f"{tps:,.0f}", mfu=f"{mfu:.1%}")
            if run.step % cfg.ckpt_interval == 0 or run.step == cfg.max_steps or stop.requested:
                run.checkpoint()
    finally:
        bar.close()
        if log:
            log.close()
    run.stopped = stop.requested


def finish(run: Run) -> dict:
    """The loss plot, the summary line (val loss vs the unigram entropy), and a few samples."""
    cfg, out = run.cfg, run.out
    entropy = run.corpus.meta["unigram_entropy"]
    if run.val_loss is None:  # resumed a finished run: nothing trained, but report where it stands
        run.evaluate()
    if run.d.master:
        runlib.plot_losses(out, entropy)
    fpt = flops_per_token(run.gpt, cfg.block_size)
    tps = run.session_steps * run.tokens_per_step / run.session_time if run.session_steps else None
    summary = {"step": run.step, "val_loss": run.val_loss, "unigram_entropy": entropy, "time": run.elapsed,
               "tokens_per_s": tps, "mfu": fpt * tps / (run.peak * run.d.world) if tps else None,
               "peak_flops": run.peak, "flops_per_token": fpt, "out": str(out), "samples": []}
    if run.stopped:
        run.say(f"stopped at step {run.step}; saved to {out}. Continue with: python train.py --resume --out {out}")
    run.say(f"done: step {run.step}, val loss {run.val_loss:.3f} vs unigram entropy {entropy:.3f} nats/token; "
            f"{run.elapsed / 60:.1f} min of training steps, {tps or 0:,.0f} tokens/s, MFU {summary['mfu'] or 0:.1%}; "
            f"model in {out}/ (loss curve: {out}/loss.png)")
    if run.d.master and cfg.samples and not run.stopped:
        run.gpt.eval()
        prompt = datalib.tabify(cfg.prompt) if cfg.prompt and cfg.tabs else cfg.prompt
        texts = sample(run.gpt, prompt, cfg.samples, cfg.sample_tokens, cfg.temperature, cfg.top_k, cfg.seed)
        summary["samples"] = [t.expandtabs(4) for t in texts] if cfg.tabs else texts
        for i, text in enumerate(summary["samples"]):
            run.say(f"--- sample {i + 1} " + "-" * 60 + f"\n{text}")
    return summary


if __name__ == "__main__":
    try:
        main()
    except (TrainError, DataError, CheckpointError) as e:
        sys.exit(f"error: {e}")
