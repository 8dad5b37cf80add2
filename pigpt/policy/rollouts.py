"""Rollouts in the reinforcement-learning sense: completions drawn from the policy, scored by rewards.

A rollout of the decoding engine (decoding.Rollout) is a completion and its log-probs. Here it becomes an
episode: state s_t = prompt + tokens so far, action a_t = the next token, drawn with log-prob
log pi(a_t | s_t) under the processed distribution (the behaviour policy), and a reward at the end; GRPO's
advantage compares that reward with the other rollouts of the same prompt.

    batch = collect(gpt, prompts, params, reward)   # reward: policy.combine_rewards([...])
    for r in batch.rollouts: r.text, r.reward, r.advantage, r.logprobs
    batch.transitions()                              # one dict per (state, action) step, JSON-ready
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch

from pigpt.decoding import Rollout, SamplingParams, completion_text, generate
from pigpt.decoding.prompts import stop_ids_of
from pigpt.model import get_tokenizer

from .grpo import group_advantages


@dataclass
class RLRollout:
    """One episode: the prompt, the completion (text as a person reads it, tokens as the model wrote them),
    the behaviour policy's log-prob of each token (`logprobs`) and the raw model's (`model_logprobs`), its
    seed, why it ended, each reward function's value (None: not applicable), their weighted total and the
    group advantage."""

    prompt: str
    prompt_index: int
    index: int
    text: str
    tokens: list[int]
    logprobs: list[float]
    model_logprobs: list[float]
    seed: int | None
    finish_reason: str
    rewards: dict
    reward: float
    advantage: float = 0.0

    def to_dict(self) -> dict:
        d = asdict(self)
        d["reward"] = None if math.isnan(self.reward) else self.reward
        return d


@dataclass
class RLBatch:
    """Rollouts of several prompts, `group_size` each, prompt-major; per_func (N, F) and total (N,) rewards."""

    rollouts: list[RLRollout]
    group_size: int
    per_func: torch.Tensor
    total: torch.Tensor
    raw: list[Rollout]  # the engine's rollouts, in the same order

    def set_advantages(self, advantages: torch.Tensor) -> None:
        for r, a in zip(self.rollouts, advantages.tolist()):
            r.advantage = a

    def transitions(self, tokenizer=None) -> list[dict]:
        """Every step of every episode, in the RL sense: the state (prompt + completion so far, as text), the
        action (the token), its log-prob under the behaviour policy and the raw model, the reward (0 until
        the last step, where the episode's reward lands), done, and the episode's advantage."""
        tokenizer = tokenizer or get_tokenizer()
        out = []
        for k, r in enumerate(self.rollouts):
            last = len(r.tokens) - 1
            for t, (tok, lp, mlp) in enumerate(zip(r.tokens, r.logprobs, r.model_logprobs)):
                out.append({"episode": k, "prompt_index": r.prompt_index, "index": r.index, "t": t,
                            "state": r.prompt + tokenizer.decode(r.tokens[:t]), "action": tok,
                            "action_text": tokenizer.decode([tok]), "logprob": lp, "model_logprob": mlp,
                            "reward": (None if math.isnan(r.reward) else r.reward) if t == last else 0.0,
                            "done": t == last, "advantage": r.advantage, "seed": r.seed})
        return out


def score_rewards(reward, prompts: list[str], texts: list[str], group_size: int, extras: list[dict] | None = None):
    """The combined reward of N = len(prompts) * group_size completions (prompt-major): (per_func, total).
    Extra columns of each prompt (extras[p]) reach the reward functions as keyword lists, as in TRL."""
    flat_prompts = [p for p in prompts for _ in range(group_size)]
    kwargs = {}
    if extras:
        for key in extras[0]:
            kwargs[key] = [e.get(key) for e in extras for _ in range(group_size)]
    return reward(flat_prompts, texts, **kwargs)


def collect(model, prompts: list[str], params: SamplingParams, reward, *, prompt_ids=None, extras=None,
            scale: str = "group", tokenizer=None, advantages: bool = True) -> RLBatch:
    """params.n rollouts of every prompt (text, encoded by the decoding engine in the model's text form;
    prompt_ids: the same, encoded and checked once by a caller that draws from them again), scored by
    `reward` (a policy.CombinedReward) on their plain text (Rollout.text), with group advantages (set
    advantages=False when the caller computes them over a larger batch, e.g. across processes)."""
    raw = generate(model, prompt_ids if prompt_ids is not None else prompts, params, tokenizer=tokenizer)
    return score_batch(model, prompts, raw, params, reward, extras=extras, scale=scale, tokenizer=tokenizer,
                       advantages=advantages)


def score_batch(model, prompts: list[str], raw: list[list[Rollout]], params: SamplingParams, reward, *,
                extras=None, scale: str = "group", tokenizer=None, advantages: bool = True) -> RLBatch:
    """generate's rollouts (or beam_search's beams) of `prompts` (one list of params.n per prompt) as an
    RLBatch: their plain text (their .text: decoding.completion_text), each reward function's value, the
    total and (advantages=True) the group advantages."""
    stop_ids, n = stop_ids_of(model, params.stop_token_ids), params.n
    raw = [r for group in raw for r in group]
    texts = [r.text if r.text is not None else completion_text(model, r.tokens, stop_ids, tokenizer) for r in raw]
    per_func, total = score_rewards(reward, prompts, texts, n, extras)
    rollouts = [RLRollout(prompt=prompts[k // n], prompt_index=k // n, index=k % n, text=texts[k],
                          tokens=r.tokens, logprobs=r.logprobs, model_logprobs=r.model_logprobs, seed=r.seed,
                          finish_reason=r.finish_reason,
                          rewards={name: None if math.isnan(v) else v
                                   for name, v in zip(reward.names, per_func[k].tolist())},
                          reward=float(total[k]))
                for k, r in enumerate(raw)]
    batch = RLBatch(rollouts, n, per_func, total, raw)
    if advantages:
        batch.set_advantages(group_advantages(total, n, scale))
    return batch


__all__ = ["RLRollout", "RLBatch", "collect", "score_batch", "score_rewards"]
