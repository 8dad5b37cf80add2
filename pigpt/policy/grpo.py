"""GRPO's two pure pieces: group-relative advantages and the clipped policy loss.

Both follow TRL 1.16.0's GRPOTrainer to the operation (tests/test_policy.py runs TRL's own code on the same
tensors): `group_advantages` is the "sum_then_normalize" block of `_generate_and_score_completions`, and
`grpo_loss` is `_compute_loss` with importance_sampling_level="token", use_bias_correction_kl=True and none
of TRL's optional extras (delta clipping, entropy masks or bonus, off-policy masks, vLLM importance sampling).

What a training loop keeps from TRL, since these functions don't do it for it:
  - rollouts are prompt-major: prompt p's G completions are rows p*G .. p*G+G-1 of rewards, logps and mask;
  - advantages are computed once per generation batch (all B*G rows together, so "batch" scaling sees them
    all), then sliced to the micro-batch they belong to;
  - TRL divides the "grpo", "bnpo" and "dr_grpo" losses by the number of gradient-accumulation steps; for
    "dapo" it passes the token count of the whole generation batch (`num_items_in_batch` here) instead.
"""

from __future__ import annotations

import torch

from pigpt.policy.errors import PolicyError

SCALES = ("group", "batch", "none")
LOSS_TYPES = ("grpo", "bnpo", "dr_grpo", "dapo")
STD_EPS = 1e-4  # TRL's: keeps a zero-variance group's advantages at 0 / 1e-4 = 0, not 0 / 0


# -- advantages -------------------------------------------------------------------------------------------------

def nanstd(x: torch.Tensor, dim: int | None = None) -> torch.Tensor:
    """Unbiased std ignoring NaNs, NaN where fewer than two values remain (trl.trainer.utils.nanstd)."""
    mean = torch.nanmean(x, dim=dim, keepdim=True)
    variance = torch.nanmean((x - mean) ** 2, dim=dim, keepdim=True)
    count = torch.sum(~torch.isnan(x), dim=dim, keepdim=True)
    correction = count / (count - 1)
    correction = torch.where(count > 1, correction, torch.full_like(correction, float("nan")))
    std = torch.sqrt(variance * correction)
    return std.squeeze(dim) if dim is not None else std.reshape(())


def group_advantages(rewards, group_size: int, scale: str = "group") -> torch.Tensor:
    """Advantages (B*G,) of rewards (B*G,) ordered prompt-major, TRL's way.

    A = r - mean(r over the prompt's group), divided by (std + 1e-4): the group's unbiased std for
    scale="group", the whole batch's for "batch", no division for "none". A reward of NaN (a completion no
    reward function could score) is left out of the means and stds and gets advantage 0, as does every
    completion of a group whose rewards are all equal (its std is 0) or of a group with a single scored one.
    """
    rewards = torch.as_tensor(rewards, dtype=torch.float32) if not torch.is_tensor(rewards) else rewards
    _check_rewards(rewards, group_size, scale)
    G = group_size
    grouped = rewards.view(-1, G)  # (B, G)
    mean = torch.nanmean(grouped, dim=1).repeat_interleave(G)  # (B*G,)
    if scale == "batch":
        std = nanstd(rewards).expand_as(rewards) if rewards.numel() > 1 else torch.zeros_like(rewards)
    else:  # TRL computes the group std under "none" too (for its zero-std log), but never divides by it
        std = nanstd(grouped, dim=1).repeat_interleave(G) if G > 1 else torch.zeros_like(rewards)
    advantages = rewards - mean
    if scale != "none":
        advantages = advantages / (std + STD_EPS)
    # NaN here means "no signal": an unscorable completion, or a group with one scored completion (NaN std)
    return torch.nan_to_num(advantages, nan=0.0)  # (B*G,)


def _check_rewards(rewards: torch.Tensor, group_size: int, scale: str) -> None:
    if scale not in SCALES:
        raise PolicyError(f"unknown scale {scale!r}: use one of {', '.join(SCALES)}")
    if not isinstance(group_size, int) or group_size < 1:
        raise PolicyError(f"group_size must be a positive int (completions per prompt), got {group_size!r}")
    if rewards.dim() != 1 or not rewards.is_floating_point():
        raise PolicyError(f"rewards must be a 1-D float tensor [B * G], got {rewards.dtype} of shape "
                          f"{tuple(rewards.shape)}")
    if rewards.numel() == 0 or rewards.numel() % group_size:
        raise PolicyError(f"{rewards.numel()} rewards don't split into groups of {group_size}: pass B * G "
                          f"rewards, G = group_size per prompt, prompt-major")


# -- the loss ---------------------------------------------------------------------------------------------------

def grpo_loss(logps, old_logps, ref_logps, advantages, mask, *, loss_type: str = "grpo", beta: float = 0.0,
              epsilon: float = 0.2, epsilon_high: float | None = None, max_completion_length: int | None = None,
              num_items_in_batch=None) -> tuple[torch.Tensor, dict[str, float]]:
    """GRPO's clipped surrogate (+ beta * KL to a reference) over per-token log-probs, and its metrics.

    logps (B, T) are the policy's log-probs of the completion tokens, with gradients; old_logps (B, T) the
    sampling policy's (None: on-policy, logps.detach()); ref_logps (B, T) the frozen reference's (needed when
    beta > 0); advantages (B,); mask (B, T) 1 on completion tokens, 0 on padding. loss_type chooses how the
    per-token losses are averaged: "grpo" each sequence's token mean, then the mean over sequences; "bnpo"
    all tokens' mean; "dr_grpo" the sum over B * max_completion_length (default T); "dapo" the sum over
    num_items_in_batch (default: this batch's completion tokens; pass the generation batch's count when it is
    split into micro-batches, as TRL does).

    Returns (loss, metrics): a scalar tensor, and TRL's logged values as floats: "kl" (beta > 0 only), the
    fractions of tokens whose ratio was clipped below / above / either ("clip_ratio/low_mean",
    "clip_ratio/high_mean", "clip_ratio/region_mean", also as "clip_ratio"), and the per-sequence extremes
    "clip_ratio/low_min", "clip_ratio/high_max".
    """
    epsilon_high = epsilon if epsilon_high is None else epsilon_high
    _check_loss_args(logps, old_logps, ref_logps, advantages, mask, loss_type, beta, epsilon, epsilon_high,
                     max_completion_length)
    mask = mask.to(logps.dtype)  # (B, T)
    # old and ref log-probs are constants of the objective: no gradient flows into them
    old_logps = logps.detach() if old_logps is None else old_logps.detach()
    advantages = advantages.detach().to(logps.dtype).unsqueeze(1)  # (B, 1)

    ratio = torch.exp(logps - old_logps)  # (B, T): pi / pi_old, per token
    clipped = torch.clamp(ratio, 1 - epsilon, 1 + epsilon_high)  # (B, T)
    # the pessimistic bound: clipping may only take away the incentive to move the ratio further
    per_token_loss = -torch.min(ratio * advantages, clipped * advantages)  # (B, T)
    if beta != 0.0:
        kl = k3_kl(logps, ref_logps.detach()) * ratio  # (B, T); the ratio makes it unbiased off-policy
        per_token_loss = per_token_loss + beta * kl

    loss = aggregate(per_token_loss, mask, loss_type, max_completion_length, num_items_in_batch)
    metrics = {}
    if beta != 0.0:
        metrics["kl"] = masked_mean(kl, mask)
    metrics.update(clip_metrics(ratio.detach(), advantages, mask, epsilon, epsilon_high))
    return loss, metrics


def k3_kl(logps: torch.Tensor, ref_logps: torch.Tensor) -> torch.Tensor:
    """Per-token KL(pi || pi_ref) by the k3 estimator (Schulman): >= 0, unbiased for tokens drawn from pi."""
    d = ref_logps - logps  # (B, T)
    return torch.exp(d) - d - 1


def aggregate(per_token_loss: torch.Tensor, mask: torch.Tensor, loss_type: str,
              max_completion_length: int | None = None, num_items_in_batch=None) -> torch.Tensor:
    """The scalar loss from per-token losses (B, T) and mask (B, T), as TRL normalises each loss_type."""
    masked = per_token_loss * mask  # (B, T)
    if loss_type == "grpo":
        # clamp: a fully masked row contributes 0 (not NaN) and still counts in the mean over B
        return (masked.sum(-1) / mask.sum(-1).clamp(min=1.0)).mean()
    if loss_type == "bnpo":
        return masked.sum() / mask.sum().clamp(min=1.0)
    if loss_type == "dr_grpo":
        L = per_token_loss.size(1) if max_completion_length is None else max_completion_length
        return masked.sum() / (per_token_loss.size(0) * L)
    n = mask.sum() if num_items_in_batch is None else torch.as_tensor(num_items_in_batch, dtype=mask.dtype)
    return masked.sum() / n.clamp(min=1.0)  # "dapo"


def masked_mean(x: torch.Tensor, mask: torch.Tensor) -> float:
    return ((x * mask).sum() / mask.sum().clamp(min=1.0)).item()


def clip_metrics(ratio, advantages, mask, epsilon: float, epsilon_high: float) -> dict[str, float]:
    """How much of the batch the clip bound, under TRL's names: a token counts as clipped below when its
    ratio is under 1 - epsilon with A < 0, above when it is over 1 + epsilon_high with A > 0 (only there does
    the clip change the gradient)."""
    low = ((ratio < 1 - epsilon) & (advantages < 0)).to(mask.dtype)  # (B, T)
    high = ((ratio > 1 + epsilon_high) & (advantages > 0)).to(mask.dtype)  # (B, T)
    region = ((low > 0) | (high > 0)).to(mask.dtype)  # (B, T)
    # per-sequence fractions; a fully masked row is 0 / 0 = NaN and left out, as TRL's nanmin / nanmax do
    low_seq = (low * mask).sum(-1) / mask.sum(-1)  # (B,)
    high_seq = (high * mask).sum(-1) / mask.sum(-1)  # (B,)
    return {
        "clip_ratio": masked_mean(region, mask),
        "clip_ratio/low_mean": masked_mean(low, mask),
        "clip_ratio/high_mean": masked_mean(high, mask),
        "clip_ratio/region_mean": masked_mean(region, mask),
        "clip_ratio/low_min": _nan_extreme(low_seq, torch.min),
        "clip_ratio/high_max": _nan_extreme(high_seq, torch.max),
    }


def _nan_extreme(x: torch.Tensor, fn) -> float:
    kept = x[~torch.isnan(x)]
    return fn(kept).item() if kept.numel() else float("nan")


def _check_loss_args(logps, old_logps, ref_logps, advantages, mask, loss_type, beta, epsilon, epsilon_high,
                     max_completion_length) -> None:
    if loss_type not in LOSS_TYPES:
        raise PolicyError(f"unknown loss_type {loss_type!r}: use one of {', '.join(LOSS_TYPES)}")
    if not torch.is_tensor(logps) or logps.dim() != 2 or not logps.is_floating_point():
        shape = tuple(logps.shape) if torch.is_tensor(logps) else type(logps).__name__
        raise PolicyError(f"logps must be a float tensor [B, T] of per-token log-probs, got {shape}")
    shape = tuple(logps.shape)
    for name, t in (("old_logps", old_logps), ("ref_logps", ref_logps), ("mask", mask)):
        if t is not None and (not torch.is_tensor(t) or tuple(t.shape) != shape):
            got = tuple(t.shape) if torch.is_tensor(t) else type(t).__name__
            raise PolicyError(f"{name} has shape {got} but logps has {shape}: every per-token input is [B, T]")
    if mask is None:
        raise PolicyError("mask is required: a [B, T] tensor, 1 on completion tokens and 0 on padding")
    if not bool(((mask == 0) | (mask == 1)).all()):
        raise PolicyError("mask must hold only 0 and 1 (1 on completion tokens, 0 on padding)")
    if not torch.is_tensor(advantages) or tuple(advantages.shape) != shape[:1]:
        got = tuple(advantages.shape) if torch.is_tensor(advantages) else type(advantages).__name__
        raise PolicyError(f"advantages must be [B] = [{shape[0]}], one per completion, got {got}")
    if not beta >= 0.0:
        raise PolicyError(f"beta must be >= 0 (the KL penalty's weight), got {beta}")
    if beta != 0.0 and ref_logps is None:
        raise PolicyError(f"beta={beta} needs ref_logps, the reference model's per-token log-probs; "
                          f"pass them or set beta=0")
    for name, eps in (("epsilon", epsilon), ("epsilon_high", epsilon_high)):
        if not eps > 0:
            raise PolicyError(f"{name} must be > 0 (ratios are clipped to [1 - epsilon, 1 + epsilon_high]), "
                              f"got {eps}")
    if max_completion_length is not None and (not isinstance(max_completion_length, int)
                                              or max_completion_length < 1):
        raise PolicyError(f"max_completion_length must be a positive int, got {max_completion_length!r}")
