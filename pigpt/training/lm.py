"""Next-token training (pretraining or fine-tuning a GPT on text): the mode behind `python train.py`.

    summary = lm.main(args)    # args: train.py's parsed command line; returns step, val loss, samples, ...

On training/run.py's one skeleton (config, resume, checkpoints, log, loop, Ctrl-C, torchrun), shared with
GRPO (policy/trainer.py), this module provides what is next-token training's own: its config and presets,
prepare() (data, model, optimizer), the step (LMRun.train_step: micro-batches, the fused loss, one AdamW
step), the evaluation (the val loss) and finish() (the loss plot, the val loss against the unigram entropy,
and samples drawn with decoding.generate, exactly as sample.py draws them).
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path

import torch

from pigpt.decoding.params import check_sampling, flag
from pigpt.decoding.prompts import check_prompts
from pigpt.model import EOT_TOKEN, GPT, GPTConfig
from pigpt.model.textform import FORMS

from . import data as datalib
from . import dist, optim, perf, wordnet
from .loss import LossModel
from .run import Run, TrainError, execute, given_flags, need
from .run import resolve_config as resolve

# -- configuration ------------------------------------------------------------------------------------------------


@dataclass
class TrainConfig:
    preset: str = "default"
    data: str | None = None  # None: the running interpreter's standard library (training/corpus.py)
    val_fraction: float = 0.05
    text_form: str | None = None  # model/textform.py: "tabs" or "plain"; None: tabs for the stdlib corpus only
    init: str = "scratch"  # scratch | gpt2 | any directory GPT.from_pretrained accepts
    n_layer: int = 6
    n_head: int = 4
    n_embd: int = 256
    block_size: int = 256  # training context (<= the model's context when fine-tuning)
    dropout: float = 0.0
    batch_size: int = 8  # rows per micro-step per process
    grad_accum: int = 1  # micro-steps per optimizer step, over all processes together
    max_steps: int = 500
    lr: float = 2e-3
    min_lr: float | None = None  # None: lr / 10
    warmup_steps: int = 30
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
    top_p: float = 1.0
    prompt: str | None = None  # None: unconditional (the prompt "<|endoftext|>")
    wordnet: bool = True  # the default corpus (no --data) takes in WordNet's text where WordNet is installed
    wordnet_repeats: str = "3,3,3"  # copies per epoch of its sentences, kind questions, superlative questions
    code_repeats: int = 1  # copies per epoch of the standard library's code-on-request documents
    save_dtype: str = "float32"  # the HF model files' weights (train_state.pt keeps float32)


STAGE1 = "out-stdlib"  # where the default recipe's first stage (--preset stdlib) is trained
STAGE2 = "out-wordnet"  # and its second (--preset wordnet)
PRESETS = {
    # For tests: seconds on a CPU.
    "tiny": dict(n_layer=2, n_head=2, n_embd=32, block_size=32, batch_size=4, max_steps=20, lr=3e-3,
                 warmup_steps=2, eval_interval=10, eval_iters=2, samples=1, sample_tokens=16),
    # The old default: ~5 CPU-minutes on 2 quiet cores, code-shaped samples, no more.
    "small": dict(n_layer=4, n_head=4, n_embd=128, block_size=128, max_steps=600, lr=4e-3, warmup_steps=20),
    # The shipped pigpt/model/default is made in two stages (docs/training.md). Stage 1, `--preset stdlib
    # --out out-stdlib`: Python's standard library alone (prose and short functions), ~6.5M tokens, 5 passes,
    # ~40 min on 2 cores: the previous shipped model. bfloat16 autocast pinned (1.9x float32's tokens/s on an
    # avx512_bf16 CPU), since a timed choice would make the recipe irreproducible; saved in float16 (35 MB).
    "stdlib": dict(batch_size=16, max_steps=1600, warmup_steps=50, eval_interval=200, dtype="bfloat16",
                   save_dtype="float16", wordnet=False),
    # Stage 2, `--preset wordnet --out out-wordnet`: stage 1 continued on the standard library and WordNet's
    # English sentences and questions (training/wordnet.py), each three times, ~1.3M tokens; lr 1e-3 (not the
    # fine-tuning 1e-4: new text to learn).
    "wordnet": dict(init=STAGE1, batch_size=16, max_steps=320, lr=1e-3, warmup_steps=20, eval_interval=50,
                    dtype="bfloat16", save_dtype="float16"),
    # Stage 3, the default: stage 2 continued with the questions read more often: WordNet's sentences once, its
    # kind questions 4 and its 207 superlative questions 256 times an epoch (at 16 they were not remembered:
    # docs/training.md), and the standard library's code answers 4 times (with the questions alone, code
    # answers fell from 62% to 44%); 450 steps of cosine decay, then 300 at the floor lr (oceans named in 6% of
    # rollouts after 100 of them, 16% after 300: docs/training.md).
    "default": dict(init=STAGE2, batch_size=16, max_steps=750, lr_decay_steps=450, lr=1e-3, warmup_steps=20,
                    eval_interval=50, dtype="bfloat16", save_dtype="float16", wordnet_repeats="1,4,256",
                    code_repeats=4),
    # GPT-2 small's shape (124M), for a GPU.
    "gpt2": dict(n_layer=12, n_head=12, n_embd=768, block_size=1024, batch_size=8, grad_accum=8,
                 max_steps=5000, lr=6e-4, warmup_steps=200, eval_interval=250, eval_iters=20),
}
ARCH_KEYS = ("n_layer", "n_head", "n_embd", "dropout")
FINETUNE_LR = 1e-4  # --init from a checkpoint, unless --lr: a scratch lr would wreck pretrained weights
# What a resumed run may change: nothing that alters the losses up to the old last step.
RESUME_MUTABLE = {"max_steps", "eval_interval", "eval_iters", "ckpt_interval", "compile", "samples",
                  "sample_tokens", "temperature", "top_k", "top_p", "prompt", "save_dtype"}


def resolve_config(args, saved: dict | None, out: Path) -> TrainConfig:
    """Preset < saved run (on --resume) < flags given; a flag that would change a resumed run is an error."""
    given = given_flags(args, TrainConfig)
    if getattr(args, "tabs", None) is not None:  # --tabs / --no-tabs
        given["text_form"] = "tabs" if args.tabs else "plain"
    if saved is not None and "text_form" not in saved:  # a run from before text forms: its bool
        saved = {**saved, "text_form": "tabs" if saved.get("tabs") else "plain"}
    return resolve(TrainConfig, given, saved, out, mutable=RESUME_MUTABLE, new=new_config, validate=validate,
                   same=lambda k, v, old: v == old or (k == "dtype" and v == "auto"))


def new_config(given: dict) -> TrainConfig:
    """A new run's config: the preset's values, the flags given on top, then what follows from them."""
    cfg = TrainConfig(**{**PRESETS[given.get("preset", "default")], **given})
    if cfg.init in (STAGE1, STAGE2) and "init" not in given and cfg.data is not None:
        cfg.init = "scratch"  # stages 1 and 2 are models of the default corpus; on the user's text, start afresh
    if cfg.init != "scratch":
        clash = [k for k in ARCH_KEYS if k in given]
        if clash:
            raise TrainError(f"--{clash[0].replace('_', '-')} can't be set with --init {cfg.init}: "
                             "the architecture comes from the checkpoint")
        if "lr" not in given and "init" not in PRESETS[cfg.preset]:  # a preset that continues a model has its lr
            cfg.lr = FINETUNE_LR
    if cfg.text_form is None:
        cfg.text_form = "tabs" if cfg.data is None else "plain"
    cfg.min_lr = cfg.lr / 10 if cfg.min_lr is None else cfg.min_lr
    cfg.lr_decay_steps = cfg.lr_decay_steps or cfg.max_steps
    if "lr_decay_steps" not in given:  # a preset's decay ends by the run's end (`--max-steps 10`: over 10 steps)
        cfg.lr_decay_steps = min(cfg.lr_decay_steps, cfg.max_steps)
    if "warmup_steps" not in given and cfg.warmup_steps > cfg.lr_decay_steps:
        # a short run (`--max-steps 20`) under a preset made for a long one: a tenth of it, not an error
        cfg.warmup_steps = cfg.lr_decay_steps // 10
    cfg.ckpt_interval = cfg.ckpt_interval or cfg.eval_interval
    return cfg


def validate(cfg: TrainConfig) -> None:
    """Every check that needs no data and no model: bad values fail before any work."""
    for k in ("block_size", "batch_size", "grad_accum", "max_steps", "lr_decay_steps", "eval_interval",
              "eval_iters", "ckpt_interval", "n_layer", "n_head", "n_embd"):
        need(getattr(cfg, k) >= 1, f"--{k.replace('_', '-')} must be a positive integer, got {getattr(cfg, k)}")
    need(cfg.n_embd % cfg.n_head == 0, f"--n-embd {cfg.n_embd} must be a multiple of --n-head {cfg.n_head} "
         f"(each head gets n_embd / n_head dimensions); try --n-embd {cfg.n_head * max(1, cfg.n_embd // cfg.n_head)}")
    need(0 <= cfg.dropout < 1, f"--dropout must be in [0, 1), got {cfg.dropout}")
    need(0 < cfg.val_fraction <= 0.5, f"--val-fraction must be in (0, 0.5], got {cfg.val_fraction}")
    need(cfg.lr > 0 and 0 <= cfg.min_lr <= cfg.lr,
         f"need 0 <= --min-lr <= --lr and --lr > 0, got lr={cfg.lr}, min_lr={cfg.min_lr}")
    need(0 <= cfg.warmup_steps <= cfg.lr_decay_steps,
         f"--warmup-steps {cfg.warmup_steps} must be within [0, lr_decay_steps={cfg.lr_decay_steps}]")
    need(cfg.samples >= 0, f"--samples must be >= 0, got {cfg.samples}")
    try:  # the samples' settings: the one check of sampling settings, naming them by this command's flags
        check_sampling(dict(temperature=cfg.temperature, top_k=cfg.top_k, top_p=cfg.top_p,
                            max_new_tokens=cfg.sample_tokens, seed=cfg.seed),
                       name=lambda f: flag("sample_tokens" if f == "max_new_tokens" else f))
    except ValueError as e:
        raise TrainError(str(e)) from None
    need(cfg.prompt is None or cfg.prompt != "",
         "--prompt is empty; give some text, or drop it for unconditional samples")
    need(cfg.code_repeats >= 1, f"--code-repeats must be a positive integer, got {cfg.code_repeats}")
    try:
        wordnet.parse_repeats(cfg.wordnet_repeats)
    except ValueError as e:
        raise TrainError(str(e)) from None
    need(cfg.text_form in FORMS, f"unknown text form {cfg.text_form!r}; use one of {', '.join(FORMS)}")


def learning_rate(step: int, cfg: TrainConfig) -> float:
    return optim.learning_rate(step, cfg.lr, cfg.min_lr, cfg.warmup_steps, cfg.lr_decay_steps)


# -- model and data -----------------------------------------------------------------------------------------------
def build_model(cfg: TrainConfig, saved: dict | None) -> GPT:
    if saved is not None:
        gpt = GPT(GPTConfig.from_dict(saved["model_config"]))
        gpt.load_state_dict(saved["model"])
    elif cfg.init == "scratch":
        torch.manual_seed(cfg.seed)
        gpt = GPT(GPTConfig(block_size=cfg.block_size, n_layer=cfg.n_layer, n_head=cfg.n_head,
                            n_embd=cfg.n_embd, dropout=cfg.dropout))
    else:
        earlier = {STAGE1: ("first", "stdlib"), STAGE2: ("second", "wordnet")}
        if cfg.init in earlier and not Path(cfg.init).is_dir():
            nth, preset = earlier[cfg.init]
            raise TrainError(f"the default recipe continues its {nth} stage, {cfg.init}/, which is not there: run "
                             f"`python train.py --preset {preset} --out {cfg.init}` first, or pass --init scratch "
                             "(or another model)")
        gpt = GPT.from_pretrained(cfg.init)
        c = gpt.config
        cfg.n_layer, cfg.n_head, cfg.n_embd, cfg.dropout = c.n_layer, c.n_head, c.n_embd, c.dropout
    if cfg.block_size > gpt.config.block_size:
        raise TrainError(f"--block-size {cfg.block_size} is longer than the model's context "
                         f"({gpt.config.block_size}); pass --block-size {gpt.config.block_size} or less")
    gpt.text_form = cfg.text_form  # recorded in config.json by every save
    return gpt.float().train()


def load_corpus(cfg: TrainConfig, cache_dir, d: dist.Dist) -> datalib.Corpus:
    repeats = wordnet.parse_repeats(cfg.wordnet_repeats)
    datalib.find_source(cfg.data, cfg.wordnet, repeats, cfg.code_repeats)  # a bad --data fails here, on every process
    if d.master:
        directory = datalib.prepare(cfg.data, cfg.val_fraction, cache_dir, text_form=cfg.text_form,
                                    wordnet=cfg.wordnet, wordnet_repeats=repeats,
                                    code_repeats=cfg.code_repeats)
    d.barrier()  # rank 0 tokenises first; the others then read its cache
    if not d.master:
        directory = datalib.prepare(cfg.data, cfg.val_fraction, cache_dir, progress=False, text_form=cfg.text_form,
                                    wordnet=cfg.wordnet, wordnet_repeats=repeats,
                                    code_repeats=cfg.code_repeats)
    corpus = datalib.load(directory)
    datalib.check_fits(corpus, cfg.block_size, cfg.data)
    return corpus


def sample_prompt(cfg: TrainConfig, gpt: GPT) -> list[int]:
    """The samples' prompt as sample.py takes it (decoding.prompts.check_prompts: the text in the model's
    text form, checked against its context); unconditional samples follow "<|endoftext|>"."""
    try:
        return check_prompts(gpt, [cfg.prompt or "<|endoftext|>"], cfg.sample_tokens, name=lambda i: "--prompt",
                             length="--sample-tokens")[0]
    except ValueError as e:
        raise TrainError(str(e)) from None


def sampling_params(cfg: TrainConfig):
    from pigpt.decoding import SamplingParams

    return SamplingParams(n=cfg.samples, temperature=cfg.temperature, top_k=cfg.top_k, top_p=cfg.top_p,
                          max_new_tokens=cfg.sample_tokens, seed=cfg.seed, stop_token_ids=(EOT_TOKEN,))


def draw_samples(gpt: GPT, cfg: TrainConfig) -> list[str]:
    """cfg.samples completions of the prompt (rollout i with seed cfg.seed + i), as a person reads them."""
    from pigpt.decoding import generate

    rollouts = generate(gpt, [sample_prompt(cfg, gpt)], sampling_params(cfg))[0]
    return [r.text for r in rollouts]  # as sample.py prints a completion: without the stop token that ended it


# -- the step -----------------------------------------------------------------------------------------------------
def local_micro_batches(windows, cfg: TrainConfig, d: dist.Dist, device) -> list[tuple[torch.Tensor, torch.Tensor]]:
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


def train_step(model, optimizer, micro_batches, lr: float, cfg: TrainConfig, amp, d: dist.Dist) -> torch.Tensor:
    """One optimizer step over this process's micro-batches; returns the mean loss over all processes."""
    optim.set_lr(optimizer, lr)
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
    return d.all_reduce_sum(total) / d.world


@torch.no_grad()
def evaluate(loss_model: LossModel, corpus, cfg: TrainConfig, amp, d: dist.Dist, device) -> float:
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
    sums = d.all_reduce_sum(sums)
    return (sums[0] / sums[1]).item()


# -- the run ------------------------------------------------------------------------------------------------------
@dataclass(kw_only=True)
class LMRun(Run):
    """A next-token training run on training/run.py's skeleton: its data, loss model and step."""

    mode, desc = "lm", "training"

    corpus: datalib.Corpus
    loss_model: LossModel  # gpt + loss, unwrapped: evaluation
    model: torch.nn.Module  # what training calls: loss_model, maybe compiled, maybe in DDP
    windows: datalib.Windows
    amp: object  # autocast context (or a null one)
    peak: perf.Peak
    val_loss: float | None = None

    @property
    def tokens_per_step(self) -> int:
        return self.cfg.batch_size * self.cfg.grad_accum * self.cfg.block_size

    @property
    def flops_per_token(self) -> float:
        return perf.flops_per_token(self.gpt, self.cfg.block_size)

    def train_step(self) -> dict:
        lr = learning_rate(self.step, self.cfg)
        batches = local_micro_batches(self.windows, self.cfg, self.d, self.device)
        loss = train_step(self.model, self.optimizer, batches, lr, self.cfg, self.amp, self.d).item()
        return {"loss": loss, "lr": lr}

    def rates(self, seconds: float) -> dict:
        tps = self.tokens_per_step / seconds
        return {"tokens": self.step * self.tokens_per_step, "tokens_per_s": tps,
                "mfu": self.peak.mfu(self.flops_per_token * tps, self.d.world)}

    def evaluate(self) -> dict:
        self.val_loss = evaluate(self.loss_model, self.corpus, self.cfg, self.amp, self.d, self.device)
        return {"val_loss": self.val_loss}

    def postfix(self, record: dict) -> dict:
        return dict(loss=f"{record['loss']:.3f}", val=f"{self.val_loss:.3f}" if self.val_loss else "-",
                    tok_s=f"{record['tokens_per_s']:,.0f}", mfu=f"{record['mfu']:.1%}")

    def state(self) -> dict:
        return {"data": self.windows.state_dict(), "data_cache": self.corpus.directory.name}

    def restore(self, saved: dict) -> None:
        super().restore(saved)
        self.windows.load_state_dict(saved["data"])
        if saved["data_cache"] != self.corpus.directory.name:
            self.say(f"warning: the data changed since step {self.step} was saved; resuming on the new data")

    def describe(self, resumed: bool) -> None:
        cfg, c, meta = self.cfg, self.gpt.config, self.corpus.meta
        self.say(f"data: {meta['root']} -> {len(self.corpus.train):,} train / {len(self.corpus.val):,} val tokens "
                 f"({meta['files']['train']} / {meta['files']['val']} files), text form {cfg.text_form}, "
                 f"cache {self.corpus.directory}")
        for note in datalib.describe_files(meta):
            self.say(f"note: {note}")
        if cfg.data is None and cfg.wordnet and "wordnet" not in meta["recipe"]:
            self.say(f"note: WordNet is not installed, so the corpus is the standard library alone (the shipped "
                     f"model's recipe needs both): {wordnet.INSTALL_HINT}")
        self.say(f"unigram entropy of the train tokens: {meta['unigram_entropy']:.3f} nats/token "
                 "(the loss of a model that ignores context)")
        self.say(f"model: {self.gpt.num_params() / 1e6:.2f}M parameters, {c.n_layer} layers, width {c.n_embd}, "
                 f"context {cfg.block_size}; " + (f"resumed at step {self.step}" if resumed else f"init {cfg.init}"))
        self.say(f"training: {cfg.max_steps} steps of {self.tokens_per_step:,} tokens ({cfg.batch_size} x "
                 f"{cfg.grad_accum} x {cfg.block_size}) on {self.d.world} x {self.device}, {cfg.dtype}; MFU against a "
                 f"measured matmul peak of {self.peak.flops / 1e9:.0f} GFLOP/s per process (an estimate)")

    def finish(self) -> dict:
        """The loss plot, the summary line (val loss vs the unigram entropy), and a few samples."""
        cfg, out = self.cfg, self.rd.path
        entropy = self.corpus.meta["unigram_entropy"]
        if self.val_loss is None:  # resumed a finished run: nothing trained, but report where it stands
            self.evaluate()
        self.rd.plot(baselines={"unigram entropy": entropy})
        fpt = self.flops_per_token
        tps = self.session_steps * self.tokens_per_step / self.session_time if self.session_steps else None
        self.peak.remeasure()
        mfu = self.peak.mfu(fpt * tps, self.d.world) if tps else None
        summary = {"step": self.step, "val_loss": self.val_loss, "unigram_entropy": entropy, "time": self.elapsed,
                   "tokens_per_s": tps, "mfu": mfu, "peak_flops": self.peak.flops, "flops_per_token": fpt,
                   "out": str(out), "samples": [], "stopped": self.stopped}
        self.say(f"done: step {self.step}, val loss {self.val_loss:.3f} vs unigram entropy {entropy:.3f} nats/token; "
                 f"{self.elapsed / 60:.1f} min of training steps, {tps or 0:,.0f} tokens/s, MFU ~{mfu or 0:.1%} of a "
                 f"measured {self.peak.flops / 1e9:.0f} GFLOP/s; model in {out}/ (loss curve: {out}/loss.png)")
        if self.d.master and cfg.samples and not self.stopped:
            self.gpt.eval()
            summary["samples"] = draw_samples(self.gpt, cfg)
            shown = cfg.prompt or ""  # unconditional samples start after <|endoftext|>, which shows as nothing
            for i, text in enumerate(summary["samples"]):
                self.say(f"--- sample {i + 1} (seed {cfg.seed + i}) " + "-" * 50 + f"\n{shown}{text}")
        return summary


def main(args) -> dict:
    """Train as train.py's parsed `args` say; returns a summary (final step, val loss, tokens/s, samples, and
    "stopped": True when Ctrl-C ended the run early, after saving)."""
    return execute(args, prepare, mode=LMRun.mode)


def prepare(args, saved: dict | None, rd, d: dist.Dist, device: torch.device) -> LMRun:
    """Check the request, then build the data, model (restored from `saved` on --resume) and optimizer."""
    cfg = resolve_config(args, saved["config"] if saved else None, rd.path)
    if cfg.grad_accum % d.world:
        raise TrainError(f"--grad-accum {cfg.grad_accum} must be a multiple of the number of processes ({d.world}): "
                         "the global batch is batch_size x grad_accum rows")
    fallback = (saved is None and cfg.dtype == "bfloat16" and "dtype" not in given_flags(args, TrainConfig)
                and not perf.bf16_supported(device))
    if fallback:  # a preset pins bfloat16 (reproducible where it is fast); a CPU without it still runs the recipe
        cfg.dtype = "float32"
    # Saved resolved, so a resumed run keeps the same arithmetic; a timed choice could differ between
    # processes, so rank 0's holds.
    cfg.dtype = d.broadcast(perf.resolve_dtype(cfg.dtype, device))
    gpt = build_model(cfg, saved)
    if cfg.samples:
        sample_prompt(cfg, gpt)  # a prompt too long for the context fails now, not after the training
        sampling_params(cfg)
    corpus = load_corpus(cfg, args.cache_dir, d)
    if fallback and d.master:  # said once the request is known to be good: an error stays the first line
        print(f"note: the {cfg.preset} preset trains in bfloat16, which this {device.type} does not support; "
              "training in float32 (the same recipe, other rounding)", file=sys.stderr)

    gpt.to(device)
    loss_model = model = LossModel(gpt)
    if cfg.compile:
        model = torch.compile(model)
    optimizer = optim.make_optimizer(gpt, cfg.lr, cfg.weight_decay, (cfg.beta1, cfg.beta2), device)
    return LMRun(cfg=cfg, d=d, device=device, rd=rd, gpt=gpt, optimizer=optimizer, corpus=corpus,
                 loss_model=loss_model, model=d.parallel(model, device), amp=perf.autocast(device, cfg.dtype),
                 windows=datalib.Windows(corpus.train, cfg.block_size, cfg.seed),
                 peak=perf.Peak(device, getattr(torch, cfg.dtype)))


__all__ = ["TrainConfig", "PRESETS", "LMRun", "main", "prepare", "resolve_config", "learning_rate", "draw_samples"]
