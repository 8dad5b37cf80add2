"""GRPO fine-tuning: the mode behind `python train.py --reward SPEC --prompts FILE`.

One step, for P prompts (each prompt's group of G rollouts on one process):
  1. rollouts: decoding.generate draws G completions of each prompt with the run's SamplingParams and a seed
     derived from (run seed, step, prompt index): a resumed run, or one with more processes, draws exactly
     what the uninterrupted single-process run drew.
  2. rewards on their plain text (policy.rewards), group advantages over the whole batch (policy.grpo).
  3. scoring: decoding.score(policy, ..., params, grad=True) recomputes each token's log-prob under the
     distribution that drew it (temperature, the sampler's own top-k / top-p kept set, the penalty): the
     trainer is exactly on-policy, and every step logs the largest gap to the sampler's log-probs
     ("mismatch"). A frozen reference model is scored on the same kept sets (beta > 0).
  4. the update: policy.grpo_loss (TRL's loss), backward through DistributedDataParallel under torchrun (as
     next-token training's: each process's loss is its share of the whole batch's), clipped, AdamW;
     num_iterations > 1 reuses the batch with importance ratios against the sampler's log-probs.
It runs on training/run.py's one skeleton (config, resume, checkpoints, the log, the loop, Ctrl-C, torchrun),
shared with next-token training: this module provides GRPO's config, prepare(), the step and the evaluation.
"""

from __future__ import annotations

import hashlib
import json
import math
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from pigpt.decoding import SamplingParams, score
from pigpt.decoding.params import check_sampling, flag
from pigpt.decoding.prompts import check_prompts
from pigpt.kernels import MAX_SEED
from pigpt.model import GPT, invariant
from pigpt.model.checkpoint import atomic_write
from pigpt.model.textform import for_model, unescape
from pigpt.model.threads import Governor
from pigpt.training import dist, optim
from pigpt.training.run import LOG_FILE, Run, TrainError, execute, given_flags, need, read_log
from pigpt.training.run import resolve_config as resolve

from .errors import PolicyError
from .grpo import LOSS_TYPES, SCALES, group_advantages, grpo_loss
from .rewards import combine_rewards, load_reward
from .rollouts import collect

DEFAULT_INIT = "default"  # the shipped model (pigpt.model.DEFAULT_MODEL)
PLOT_FILE = "reward.png"


@dataclass
class RLConfig:
    """GRPO's settings; names and defaults follow TRL's GRPOConfig where it has them (its CPU-unfriendly
    learning rate and completion length excepted)."""

    prompts: str = ""
    reward: list = field(default_factory=list)
    reward_weights: list | None = None
    init: str = DEFAULT_INIT
    num_generations: int = 8  # G, rollouts per prompt
    prompts_per_step: int = 8  # P: a step draws P * G rollouts
    max_completion_length: int = 64
    max_steps: int = 100
    lr: float = 1e-5  # TRL: 1e-6, for billion-parameter models
    beta: float = 0.0
    epsilon: float = 0.2
    epsilon_high: float | None = None
    loss_type: str = "dapo"
    scale_rewards: str = "group"
    num_iterations: int = 1
    mask_truncated_completions: bool = False
    temperature: float = 1.0
    top_k: int = 0
    top_p: float = 1.0
    min_p: float = 0.0
    typical_p: float = 1.0
    epsilon_cutoff: float = 0.0
    eta_cutoff: float = 0.0
    repetition_penalty: float = 1.0
    stop: list = field(default_factory=list)
    weight_decay: float = 0.0
    grad_clip: float = 1.0  # TRL's max_grad_norm
    seed: int = 1337
    ckpt_interval: int = 10
    eval_interval: int = 0  # 0: evaluate before the first step and after the last only
    eval_generations: int = 16
    eval_prompts: str | None = None  # None: the training prompts, with held-out seeds
    save_dtype: str = "float32"
    batch_invariant: bool | None = None  # None: on where the mode runs (float32 on the CPU)

    def sampling(self, n: int, seeds=None) -> SamplingParams:
        """The rollouts' SamplingParams (stop strings as typed: the engine matches them in the model's text form)."""
        return SamplingParams(temperature=self.temperature, top_k=self.top_k, top_p=self.top_p, min_p=self.min_p,
                              typical_p=self.typical_p, epsilon_cutoff=self.epsilon_cutoff, eta_cutoff=self.eta_cutoff,
                              repetition_penalty=self.repetition_penalty, max_new_tokens=self.max_completion_length,
                              stop=tuple(self.stop), n=n, seed=seeds)


RESUME_MUTABLE = {"max_steps", "ckpt_interval", "eval_interval", "save_dtype", "batch_invariant"}


def resolve_config(args, saved: dict | None, out: Path) -> RLConfig:
    """TRL's defaults < saved run (on --resume) < flags given; a flag that would change a resumed run is an error."""
    return resolve(RLConfig, given_flags(args, RLConfig), saved, out, mutable=RESUME_MUTABLE,
                   new=lambda given: RLConfig(**given), validate=validate)


SAMPLING_FLAGS = {"max_new_tokens": "max_completion_length"}  # SamplingParams' field -> this command's setting


def validate(cfg: RLConfig) -> None:
    need(bool(cfg.prompts), "--reward needs --prompts FILE: the prompts to improve the policy on, one per line "
                            "(or JSON lines with a \"prompt\" key)")
    for k in ("num_generations", "prompts_per_step", "max_completion_length", "max_steps", "num_iterations",
              "ckpt_interval", "eval_generations"):
        need(getattr(cfg, k) >= 1, f"--{k.replace('_', '-')} must be a positive integer, got {getattr(cfg, k)}")
    need(cfg.eval_interval >= 0, f"--eval-interval must be >= 0 (0: before and after only), got {cfg.eval_interval}")
    need(cfg.num_generations >= 2 or cfg.scale_rewards == "none",
         f"--num-generations {cfg.num_generations}: GRPO compares a prompt's rollouts with each other, and one "
         "rollout's group has no spread (its std is 0); use --num-generations 2 or more")
    need(cfg.loss_type in LOSS_TYPES, f"--loss-type {cfg.loss_type!r}: use one of {', '.join(LOSS_TYPES)}")
    need(cfg.scale_rewards in SCALES, f"--scale-rewards {cfg.scale_rewards!r}: use one of {', '.join(SCALES)}")
    need(cfg.lr > 0, f"--lr must be > 0, got {cfg.lr}")
    need(cfg.beta >= 0, f"--beta must be >= 0 (0: no KL term), got {cfg.beta}")
    need(cfg.epsilon > 0 and (cfg.epsilon_high is None or cfg.epsilon_high > 0),
         f"--epsilon and --epsilon-high must be > 0, got {cfg.epsilon}, {cfg.epsilon_high}")
    need(cfg.temperature > 0, f"--temperature must be > 0 for GRPO (a greedy policy draws one rollout per prompt, "
                              f"with no spread to learn from), got {cfg.temperature}")
    try:  # the one check of sampling settings, naming them by this command's flags
        check_sampling(dict(temperature=cfg.temperature, top_k=cfg.top_k, top_p=cfg.top_p, min_p=cfg.min_p,
                            typical_p=cfg.typical_p, epsilon_cutoff=cfg.epsilon_cutoff, eta_cutoff=cfg.eta_cutoff,
                            repetition_penalty=cfg.repetition_penalty, max_new_tokens=cfg.max_completion_length,
                            stop=cfg.stop), name=lambda f: flag(SAMPLING_FLAGS.get(f, f)))
    except ValueError as e:
        raise TrainError(str(e)) from None



# -- prompts ----------------------------------------------------------------------------------------------------
def load_prompts(path: str) -> tuple[list[str], list[dict]]:
    """Prompts from a file: one per line (blank lines skipped), or JSON lines {"prompt": ..., other columns},
    whose other columns reach the reward functions as keyword arguments. Returns (prompts, extras)."""
    try:
        lines = Path(path).read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as e:
        raise TrainError(f"--prompts {path}: cannot read it ({getattr(e, 'strerror', None) or e})") from None
    lines = [ln for ln in lines if ln.strip()]
    if not lines:
        raise TrainError(f"--prompts {path} holds no prompts; write one per line (or JSON lines with a \"prompt\" key)")
    if not lines[0].lstrip().startswith("{"):
        return [unescape(ln) for ln in lines], []
    prompts, extras = [], []
    for i, ln in enumerate(lines):
        try:
            rec = json.loads(ln)
        except json.JSONDecodeError as e:
            raise TrainError(f"--prompts {path}: line {i + 1} is not JSON ({e.msg}); use JSON lines throughout, "
                             "or plain text lines") from None
        if not isinstance(rec, dict) or not isinstance(rec.get("prompt"), str) or not rec["prompt"]:
            raise TrainError(f"--prompts {path}: line {i + 1} needs a non-empty string \"prompt\"")
        prompts.append(rec.pop("prompt"))
        extras.append(rec)
    keys = set(extras[0])
    if any(set(e) != keys for e in extras):
        raise TrainError(f"--prompts {path}: every line needs the same columns (the first has {sorted(keys)})")
    return prompts, extras


def rollout_seed(*key) -> int:
    """A seed for the G rollouts of one prompt at one step, hashed from `key` (run seed, step, prompt index):
    independent of the process count and of where a run was resumed."""
    digest = hashlib.blake2b(json.dumps(key).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") % (MAX_SEED // 2)  # room for + G


def batch_prompts(n_prompts: int, per_step: int, step: int, seed: int) -> list[int]:
    """Prompt indices of step `step`: epochs of seeded permutations, laid end to end."""
    out, start = [], step * per_step
    for pos in range(start, start + per_step):
        epoch, i = divmod(pos, n_prompts)
        perm = torch.randperm(n_prompts, generator=torch.Generator().manual_seed(seed + epoch))
        out.append(int(perm[i]))
    return out


# -- the run ----------------------------------------------------------------------------------------------------
class Scorer(torch.nn.Module):
    """The policy as a module whose forward is score(..., grad=True): what DistributedDataParallel wraps under
    torchrun, so that the backward of the loss averages the gradients over the processes (dist.Dist.parallel)."""

    def __init__(self, gpt: GPT):
        super().__init__()
        self.gpt = gpt

    def forward(self, prompts, completions, params, keep=None, return_keep: bool = False):
        return score(self.gpt, prompts, completions, params, grad=True, keep=keep, return_keep=return_keep)


@dataclass(kw_only=True)
class GRPORun(Run):
    """A GRPO run on training/run.py's skeleton: the policy, its reference, the rewards and the prompts."""

    mode, desc = "grpo", "GRPO"

    policy: torch.nn.Module  # Scorer(gpt), in DistributedDataParallel under torchrun
    ref: GPT | None
    reward: object
    prompts: list[str]
    extras: list[dict]
    prompt_ids: list[list[int]]
    eval_prompts: list[str]
    eval_extras: list[dict]
    eval_ids: list[list[int]]
    last: dict = field(default_factory=dict)

    def train_step(self) -> dict:
        return rl_step(self)

    def evaluate(self) -> dict:
        out = evaluate(self)
        if self.d.master and 0 < self.step < self.cfg.max_steps:  # before: started(); the last: finish()'s line
            from tqdm import tqdm

            tqdm.write(f"step {self.step}: eval reward {_fmt(out['eval_reward'])}" + _per_function(out))
        return out

    def started(self, first: dict) -> None:
        self.last = first
        self.say(f"before: eval reward {_fmt(first['eval_reward'])} "
                 f"({self.cfg.eval_generations} rollouts x {len(self.eval_prompts)} prompts, held-out seeds)")

    def postfix(self, record: dict) -> dict:
        return dict(reward=_fmt(record["reward"]), kl=_fmt(record.get("kl")), mismatch=f"{record['mismatch']:.1e}")

    def state(self) -> dict:
        return {} if self.ref is None else {"ref_model": self.ref.state_dict()}

    def describe(self, resumed: bool) -> None:
        cfg = self.cfg
        self.say(f"policy: {cfg.init} ({self.gpt.num_params() / 1e6:.2f}M parameters), text form "
                 f"{for_model(self.gpt).name}; " + (f"resumed at step {self.step}" if resumed else "new run"))
        self.say(f"GRPO: {len(self.prompts)} prompts, {cfg.prompts_per_step} x {cfg.num_generations} rollouts of <= "
                 f"{cfg.max_completion_length} tokens a step, reward {' + '.join(self.reward.names)}, loss "
                 f"{cfg.loss_type}, beta {cfg.beta:g}, lr {cfg.lr:g}, {self.d.world} process(es)")

    def plot(self) -> None:
        plot_rewards(self.rd.path)

    def finish(self) -> dict:
        return finish(self)


def main(args) -> dict:
    return execute(args, prepare, mode=GRPORun.mode)


def _rewards(cfg: RLConfig):
    try:
        return combine_rewards([load_reward(s) for s in cfg.reward], cfg.reward_weights)
    except PolicyError as e:
        raise TrainError(f"--reward: {e}") from None


def _encode(gpt: GPT, prompts: list[str], cfg: RLConfig, path: str) -> list[list[int]]:
    """The prompts as the policy reads them, encoded and checked once (decoding.prompts.check_prompts)."""
    try:
        return check_prompts(gpt, prompts, cfg.max_completion_length, name=lambda i: f"prompt {i + 1}",
                             length="--max-completion-length")
    except ValueError as e:
        raise TrainError(f"--prompts {path}: {e}") from None


def _batch_invariant(cfg: RLConfig, gpt, ref) -> None:
    """The policy and its reference run batch-invariant (model/invariant.py): the trainer's log-probs are then the
    sampler's bit for bit (mismatch 0.0). Default: wherever the mode runs (float32 on the CPU)."""
    if cfg.batch_invariant is None:
        try:
            invariant.check(gpt)
        except invariant.InvariantError:
            return
    elif not cfg.batch_invariant:
        return
    for model in (gpt, ref):
        if model is not None:
            try:
                model.batch_invariant = True
            except invariant.InvariantError as e:
                raise TrainError(f"--batch-invariant: {e}; or pass --no-batch-invariant") from None


def prepare(args, saved: dict | None, rd, d: dist.Dist, device: torch.device) -> GRPORun:
    """Check the request, then load the rewards, the prompts, the policy (restored from `saved` on --resume), its
    frozen reference (beta > 0) and the optimizer."""
    cfg = resolve_config(args, saved["config"] if saved else None, rd.path)
    if cfg.prompts_per_step % d.world:
        raise TrainError(f"--prompts-per-step {cfg.prompts_per_step} must be a multiple of the number of processes "
                         f"({d.world}): each process draws whole groups")
    reward = _rewards(cfg)
    prompts, extras = load_prompts(cfg.prompts)
    eval_prompts, eval_extras = load_prompts(cfg.eval_prompts) if cfg.eval_prompts else (prompts, extras)
    try:
        gpt = GPT.from_pretrained(cfg.init)
    except ValueError as e:
        raise TrainError(f"--init {cfg.init}: {e}") from None
    prompt_ids = _encode(gpt, prompts, cfg, cfg.prompts)
    eval_ids = _encode(gpt, eval_prompts, cfg, cfg.eval_prompts or cfg.prompts)
    ref = None
    if cfg.beta > 0:
        ref = GPT(gpt.config)
        ref.load_state_dict(saved["ref_model"] if saved else gpt.state_dict())
        ref.text_form = gpt.text_form
        ref.to(device).eval().requires_grad_(False)
    if saved is not None:
        gpt.load_state_dict(saved["model"])
    gpt.to(device).float().eval()  # eval: no dropout; gradients flow all the same
    _batch_invariant(cfg, gpt, ref)
    optimizer = optim.make_optimizer(gpt, cfg.lr, cfg.weight_decay, (0.9, 0.999), device)
    return GRPORun(cfg=cfg, d=d, device=device, rd=rd, gpt=gpt, optimizer=optimizer,
                   policy=d.parallel(Scorer(gpt), device), ref=ref, reward=reward, prompts=prompts, extras=extras,
                   prompt_ids=prompt_ids, eval_prompts=eval_prompts, eval_extras=eval_extras, eval_ids=eval_ids)


# -- one step ---------------------------------------------------------------------------------------------------
def _pad(rows: list, T: int, value=0.0) -> torch.Tensor:
    out = torch.full((len(rows), T), value, dtype=torch.float32)
    for i, r in enumerate(rows):
        out[i, :len(r)] = torch.as_tensor(r, dtype=torch.float32) if not torch.is_tensor(r) else r.float()
    return out


def _stack_grad(rows: list[torch.Tensor], T: int) -> torch.Tensor:
    """(N, T) from per-completion 1-D tensors with gradients, zero-padded (padding is masked out)."""
    return torch.stack([torch.nn.functional.pad(r, (0, T - r.numel())) for r in rows])


def _rollouts(run: GRPORun, rows, params, prompts, ids, extras, where: str):
    """The rollouts and rewards of prompts[rows] (a training step's or an evaluation's; advantages are the
    caller's), a reward's failure as one line that says where."""
    try:
        return collect(run.gpt, [prompts[i] for i in rows], params, run.reward, prompt_ids=[ids[i] for i in rows],
                       extras=[extras[i] for i in rows] if extras else None, advantages=False)
    except PolicyError as e:
        raise TrainError(f"{where}: {e}") from None


def rl_step(run: GRPORun) -> dict:
    with Governor() as governor:  # fewer threads while other processes hold cores (pigpt/model/threads.py)
        return _rl_step(run, governor)


def _rl_step(run: GRPORun, governor: Governor) -> dict:
    cfg, d, gpt = run.cfg, run.d, run.gpt
    G = cfg.num_generations
    batch = batch_prompts(len(run.prompts), cfg.prompts_per_step, run.step, cfg.seed)
    per_rank = cfg.prompts_per_step // d.world
    mine = batch[d.rank * per_rank:(d.rank + 1) * per_rank]  # whole groups on each process
    params = cfg.sampling(G, [rollout_seed(cfg.seed, run.step, i) for i in mine])

    t0 = time.perf_counter()
    rb = _rollouts(run, mine, params, run.prompts, run.prompt_ids, run.extras, f"step {run.step + 1}")
    t_gen = time.perf_counter() - t0
    # advantages over the whole batch (every process's groups), then this process's rows
    totals = torch.cat(d.all_gather(rb.total))
    per_funcs = torch.cat(d.all_gather(rb.per_func))
    adv_all = group_advantages(totals, G, cfg.scale_rewards)
    N = len(rb.raw)
    adv = adv_all[d.rank * N:(d.rank + 1) * N]
    rb.set_advantages(adv)

    t1 = time.perf_counter()
    governor.tick()
    prompts = [run.prompt_ids[i] for i in mine for _ in range(G)]
    completions = [r.tokens for r in rb.raw]
    T = max(len(c) for c in completions)
    behaviour = _pad([r.logprobs for r in rb.raw], T)
    mask = _pad([[1.0] * len(c) for c in completions], T)
    if cfg.mask_truncated_completions:
        mask[torch.tensor([r.finish_reason == "length" for r in rb.raw])] = 0.0
    logps, keep = run.policy(prompts, completions, params, return_keep=True)
    logps = _stack_grad(logps, T)
    mismatch = float(((logps.detach() - behaviour).abs() * (mask > 0)).max()) if mask.any() else 0.0
    ref_logps = None
    if run.ref is not None:
        ref_logps = _pad(score(run.ref, prompts, completions, params, keep=keep), T)
    t_score = time.perf_counter() - t1

    t2 = time.perf_counter()
    share, n_items = _shares(cfg, d, mask)
    metrics_all = []
    for it in range(cfg.num_iterations):
        governor.tick()
        if it > 0:
            logps = _stack_grad(run.policy(prompts, completions, params, keep=keep), T)
        loss, metrics = grpo_loss(logps, behaviour if cfg.num_iterations > 1 else None, ref_logps, adv, mask,
                                  loss_type=cfg.loss_type, beta=cfg.beta, epsilon=cfg.epsilon,
                                  epsilon_high=cfg.epsilon_high, max_completion_length=cfg.max_completion_length,
                                  num_items_in_batch=n_items)
        # the gradient of the whole batch's loss, the sum of every process's share: DDP's backward averages
        (loss * share * d.world).backward()
        if cfg.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(gpt.parameters(), cfg.grad_clip)
        optim.set_lr(run.optimizer, cfg.lr)
        run.optimizer.step()
        run.optimizer.zero_grad(set_to_none=True)
        metrics_all.append({**metrics, "loss": float(d.all_reduce_sum((loss * share).detach().clone()))})
    t_update = time.perf_counter() - t2

    lens = torch.tensor([len(c) for c in completions], dtype=torch.float32)
    tokens = mask.sum()
    record = {"reward": _nanmean(totals), "reward_std": _nanstd(totals), "advantage_std": float(adv_all.std()),
              "loss": metrics_all[0]["loss"], "clip_ratio": metrics_all[-1].get("clip_ratio", 0.0),
              "clip_ratio_low": metrics_all[-1].get("clip_ratio/low_mean", 0.0),
              "clip_ratio_high": metrics_all[-1].get("clip_ratio/high_mean", 0.0),
              # the sampled tokens' mean -log p: a Monte-Carlo estimate of the policy's entropy (nats/token)
              "entropy": float(-(behaviour * mask).sum() / tokens.clamp(min=1)),
              "mismatch": max(d.all_gather(mismatch)),
              "completion_length": float(lens.mean()), "completion_length_max": float(lens.max()),
              "truncated": float(sum(r.finish_reason == "length" for r in rb.raw) / N),
              "time_generate": t_gen, "time_score": t_score, "time_update": t_update}
    if cfg.beta > 0:
        record["kl"] = metrics_all[0]["kl"]
    for name, col in zip(run.reward.names, per_funcs.T):
        record[f"rewards/{name}/mean"] = _nanmean(col)
        record[f"rewards/{name}/std"] = _nanstd(col)
    return record


def _shares(cfg: RLConfig, d: dist.Dist, mask: torch.Tensor) -> tuple[float, float | None]:
    """How this process's loss adds up to the whole batch's (the one a single process would compute): its
    share of the normaliser, and for "dapo" the batch's token count."""
    counts = d.all_reduce_sum(torch.tensor([float(mask.shape[0]), float(mask.sum())]))
    if cfg.loss_type == "dapo":
        return 1.0, float(counts[1])
    if cfg.loss_type == "bnpo":
        return float(mask.sum() / counts[1].clamp(min=1)), None
    return mask.shape[0] / float(counts[0]), None  # grpo, dr_grpo: means over sequences


def _nanmean(x: torch.Tensor) -> float | None:
    v = float(torch.nanmean(x))
    return None if math.isnan(v) else v


def _nanstd(x: torch.Tensor) -> float | None:
    x = x[~torch.isnan(x)]
    return float(x.std()) if x.numel() > 1 else None


# -- evaluation -------------------------------------------------------------------------------------------------
def evaluate(run: GRPORun) -> dict:
    """Mean rewards of eval_generations rollouts of every eval prompt, drawn with held-out seeds (never used
    by a training step): the same seeds at every evaluation, so before and after compare like with like."""
    cfg, d, gpt = run.cfg, run.d, run.gpt
    idx = list(range(len(run.eval_prompts)))[d.rank::d.world]
    params = cfg.sampling(cfg.eval_generations, [rollout_seed(cfg.seed, "eval", i) for i in idx])
    if idx:
        rb = _rollouts(run, idx, params, run.eval_prompts, run.eval_ids, run.eval_extras, "evaluation")
        per_func, total = rb.per_func, rb.total
    else:
        per_func, total = torch.empty(0, len(run.reward.names)), torch.empty(0)
    per_func, total = torch.cat(d.all_gather(per_func)), torch.cat(d.all_gather(total))
    out = {"eval_reward": _nanmean(total)}
    for name, col in zip(run.reward.names, per_func.T):
        out[f"eval/{name}"] = _nanmean(col)
    return out


def _per_function(record: dict) -> str:
    """ (name a, name b ...) of an evaluation with more than one reward function."""
    parts = [f"{k.removeprefix('eval/')} {_fmt(v)}" for k, v in record.items() if k.startswith("eval/")]
    return f" ({', '.join(parts)})" if len(parts) > 1 else ""


def _fmt(x) -> str:
    return "-" if x is None else f"{x:.3f}"


def plot_rewards(out: Path) -> None:
    """reward.png: the batch reward per step (and held-out evaluations), and the KL to the reference."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    records = read_log(out)
    steps = [r for r in records if "reward" in r]
    evals = [r for r in records if r.get("eval_reward") is not None]
    kl = [r for r in steps if "kl" in r]
    fig, axes = plt.subplots(2 if kl else 1, 1, figsize=(7, 5.5 if kl else 3.6), dpi=110, sharex=True,
                             squeeze=False)
    ax = axes[0][0]
    if steps:
        ax.plot([r["step"] for r in steps], [r["reward"] for r in steps], lw=1, alpha=0.6, label="batch reward")
    if evals:
        ax.plot([r["step"] for r in evals], [r["eval_reward"] for r in evals], "o-", ms=4, label="held-out reward")
    ax.set_ylabel("reward")
    ax.grid(alpha=0.3)
    ax.legend(loc="best")
    if kl:
        axes[1][0].plot([r["step"] for r in kl], [r["kl"] for r in kl], color="C3", lw=1)
        axes[1][0].set_ylabel("KL to the reference")
        axes[1][0].grid(alpha=0.3)
    axes[-1][0].set_xlabel("step")
    fig.tight_layout()
    atomic_write(Path(out) / PLOT_FILE, lambda f: fig.savefig(f, format="png"))
    plt.close(fig)


def finish(run: GRPORun) -> dict:
    """The reward plot, the closing line (held-out reward before -> after), the summary."""
    out = run.rd.path
    if run.d.master:
        plot_rewards(out)
    records = read_log(out)
    first = next((r for r in records if r.get("step") == 0 and "eval_reward" in r), {})
    final = next((r for r in reversed(records) if "eval_reward" in r and r.get("step", 0) > 0), {})
    summary = {"step": run.step, "out": str(out), "stopped": run.stopped, "before": first, "after": final,
               "time": run.elapsed, "log": str(out / LOG_FILE)}
    if not run.stopped:
        kl = next((r["kl"] for r in reversed(records) if "kl" in r), None)
        run.say(f"done: step {run.step}, held-out reward {_fmt(first.get('eval_reward'))} -> "
                f"{_fmt(final.get('eval_reward'))}" + (f", KL to the reference {kl:.3f}" if kl is not None else "")
                + f"; {run.elapsed / 60:.1f} min; model in {out}/ (curves: {out}/{PLOT_FILE})")
    return summary


__all__ = ["RLConfig", "GRPORun", "Scorer", "main", "prepare", "rl_step", "evaluate", "finish", "load_prompts",
           "rollout_seed", "batch_prompts", "plot_rewards"]
