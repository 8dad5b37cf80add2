"""The next-token distribution at every time step of a finished rollout, recomputed after the fact.

Generation keeps only the drawn tokens and their log-probs. To *show* a step we need the whole
distribution there, twice: as the model gave it (raw) and as the sampler saw it after the processors
(repetition penalty, min_new_tokens, temperature, top-k, top-p — transformers' order). One forward pass over
prompt + completion gives the raw logits of every step at once (causal attention: position t only sees
tokens <= t), and the processors are applied to all steps together. Nothing in the decoding loop is
instrumented, so looking costs nothing when nobody looks.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F


@dataclass(frozen=True)
class Processing:
    """The processing chain of one decoding run (what turned the model's logits into the sampled distribution).

    `mode` is "sample" (temperature > 0), "greedy" (temperature 0: the argmax of the penalised logits, whose
    log-softmax is the distribution shown) or "beam" (processors act on log-probs, as transformers' beam search
    does). Greedy and beam search have no temperature / top-k / top-p.
    """

    temperature: float = 1.0
    top_k: int = 0
    top_p: float = 1.0
    repetition_penalty: float = 1.0
    min_new_tokens: int = 0
    stop_token_ids: tuple[int, ...] = (50256,)
    mode: str = "sample"

    @property
    def is_identity(self) -> bool:
        """True when the processed distribution is the raw one (then only one column is worth showing)."""
        untouched = self.repetition_penalty == 1.0 and self.min_new_tokens == 0
        if self.mode in ("beam", "greedy"):  # both rank the model's own log-probs unless a penalty applies
            return untouched
        return (self.mode == "sample" and self.temperature == 1.0 and self.top_k == 0 and self.top_p == 1.0
                and untouched)

    def label(self) -> str:
        if self.mode == "greedy":
            parts = ["greedy (argmax)"]
        elif self.mode == "beam":
            parts = ["beam search"]
        else:
            parts = [f"T={self.temperature:g}"]
            if self.top_k:
                parts.append(f"top-k={self.top_k}")
            if self.top_p < 1.0:
                parts.append(f"top-p={self.top_p:g}")
        if self.repetition_penalty != 1.0:
            parts.append(f"rep={self.repetition_penalty:g}")
        if self.min_new_tokens:
            parts.append(f"min_new={self.min_new_tokens}")
        return " ".join(parts)


@dataclass
class StepView:
    """One time step, reduced to what a picture needs: the top tokens under both distributions.

    `ids` are the shown token ids, sorted by raw probability (the drawn token always among them);
    `raw` / `processed` their probabilities (processed 0.0 = removed by top-k / top-p / greedy).
    """

    t: int  # 0-based index of the generated token
    token: int  # the token drawn at this step
    ids: list[int]
    raw: list[float]
    processed: list[float]
    token_raw_logprob: float  # log p(token | context) under the model
    token_logprob: float  # log p(token | context) under the processed distribution
    kept: int  # tokens with non-zero processed probability (the sampler's support)
    raw_entropy: float  # nats
    processed_entropy: float

    @property
    def token_index(self) -> int:
        return self.ids.index(self.token)


# -- the forward pass ------------------------------------------------------------------------------------------
@torch.no_grad()
def raw_logits(model, prompt: list[int], completion: list[int]) -> torch.Tensor:
    """float32 logits (T_c, V): row t is the model's prediction of completion[t] given prompt + completion[:t]."""
    if not prompt:
        raise ValueError("the prompt must have at least one token")
    if not completion:
        return torch.empty(0, model.config.vocab_size)
    seq = list(prompt) + list(completion[:-1])  # the last token predicts nothing we show
    idx = torch.tensor([seq], dtype=torch.long, device=model.device)  # (1, T)
    logits = model(idx)[0, len(prompt) - 1:]  # (T_c, V)
    return logits.float().cpu()


@torch.no_grad()
def batch_raw_logits(model, prompt: list[int], completions: list[list[int]]) -> list[torch.Tensor]:
    """raw_logits for many completions of one prompt in one forward pass.

    Right padding is harmless here: with causal attention a pad token only affects positions after it, and
    we never read those.
    """
    if not completions:
        return []
    lengths = [len(c) for c in completions]
    width = len(prompt) + max(max(lengths) - 1, 0)
    rows = [list(prompt) + list(c[:-1]) for c in completions]
    idx = torch.zeros(len(rows), width, dtype=torch.long)
    for b, row in enumerate(rows):
        idx[b, :len(row)] = torch.tensor(row, dtype=torch.long)
    logits = model(idx.to(model.device))  # (B, T, V)
    start = len(prompt) - 1
    return [logits[b, start:start + n].float().cpu() for b, n in enumerate(lengths)]


# -- the processors, for all steps at once ----------------------------------------------------------------------
def seen_mask(prompt: list[int], completion: list[int], vocab_size: int) -> torch.Tensor:
    """(T_c, V) bool: seen[t, v] is True when v occurs in prompt + completion[:t] (what step t penalises)."""
    T = len(completion)
    seen = torch.zeros(T, vocab_size, dtype=torch.bool)
    if T == 0:
        return seen
    seen[:, torch.tensor(sorted(set(prompt)), dtype=torch.long)] = True
    if T > 1:
        onehot = F.one_hot(torch.tensor(completion[:-1]), vocab_size).cumsum(0) > 0  # (T_c - 1, V)
        seen[1:] |= onehot
    return seen


def apply_repetition_penalty(scores: torch.Tensor, seen: torch.Tensor, penalty: float) -> torch.Tensor:
    """transformers' rule: a seen token's score s becomes s * penalty if s < 0, else s / penalty."""
    if penalty == 1.0:
        return scores
    penalised = torch.where(scores < 0, scores * penalty, scores / penalty)
    return torch.where(seen, penalised, scores)


def apply_min_new_tokens(scores: torch.Tensor, min_new_tokens: int, stop_token_ids) -> torch.Tensor:
    """Stop tokens are impossible while fewer than min_new_tokens tokens were generated (rows t < min)."""
    if min_new_tokens <= 0 or not stop_token_ids:
        return scores
    scores = scores.clone()
    rows = slice(0, min(min_new_tokens, scores.shape[0]))
    scores[rows, torch.tensor(list(stop_token_ids), dtype=torch.long)] = float("-inf")
    return scores


def processed_logprobs(logits: torch.Tensor, prompt: list[int], completion: list[int],
                       proc: Processing) -> torch.Tensor:
    """(T_c, V) float32 log-probs of the distribution each step was drawn from (-inf = removed)."""
    scores = logits.float()
    if proc.mode == "beam":  # transformers' beam search processes log-probs, not logits
        scores = F.log_softmax(scores, dim=-1)
    scores = apply_repetition_penalty(scores, seen_mask(prompt, completion, scores.shape[-1]),
                                      proc.repetition_penalty)
    scores = apply_min_new_tokens(scores, proc.min_new_tokens, proc.stop_token_ids)
    if proc.mode == "beam":
        return scores  # beam search ranks these scores directly
    if proc.mode == "greedy":
        # greedy takes the argmax of these; its log-probs are theirs (transformers' compute_transition_scores)
        return F.log_softmax(scores, dim=-1)
    from kernels import process_logits

    return process_logits(scores, temperature=proc.temperature, top_k=proc.top_k, top_p=proc.top_p).float()


# -- reducing a step to its top tokens ----------------------------------------------------------------------
def _entropy(logp: torch.Tensor) -> torch.Tensor:
    p = logp.exp()
    return -(p * torch.where(p > 0, logp, torch.zeros_like(logp))).sum(-1)  # (T,)


def summarize(raw_lp: torch.Tensor, proc_lp: torch.Tensor, completion: list[int], top: int = 8,
              extra: dict[int, list[int]] | None = None) -> list[StepView]:
    """StepViews for every step: the `top` tokens by raw probability, plus the drawn token if it is not one,
    plus extra[t] (tokens worth showing at step t, e.g. the stop tokens that min_new_tokens masked)."""
    views = []
    top = max(1, min(top, raw_lp.shape[-1]))
    top_ids = raw_lp.topk(top, dim=-1).indices  # (T, top)
    kept = torch.isfinite(proc_lp).sum(-1)  # (T,)
    h_raw, h_proc = _entropy(raw_lp), _entropy(proc_lp)
    for t, token in enumerate(completion):
        ids = top_ids[t].tolist()
        for tid in [token] + list((extra or {}).get(t, ())):
            if tid not in ids:
                ids.append(tid)
        ids_t = torch.tensor(ids)
        views.append(StepView(
            t=t, token=token, ids=ids,
            raw=raw_lp[t, ids_t].exp().tolist(),
            processed=proc_lp[t, ids_t].exp().tolist(),
            token_raw_logprob=float(raw_lp[t, token]),
            token_logprob=float(proc_lp[t, token]),
            kept=int(kept[t]),
            raw_entropy=float(h_raw[t]),
            processed_entropy=float(h_proc[t]),
        ))
    return views


def step_views(model, prompt: list[int], completions: list[list[int]], proc: Processing,
               top: int = 8, chunk: int = 8) -> list[list[StepView]]:
    """Per completion, the StepView of each of its steps (one batched forward pass for all of them)."""
    out = []
    for i in range(0, len(completions), chunk):  # chunks bound the (B, T, V) logits in memory
        group = completions[i:i + chunk]
        for logits, completion in zip(batch_raw_logits(model, prompt, group), group):
            raw_lp = F.log_softmax(logits, dim=-1)
            proc_lp = processed_logprobs(logits, prompt, completion, proc)
            if proc.mode == "beam":
                proc_lp = F.log_softmax(proc_lp, dim=-1)  # show the penalised scores as a distribution
            # while min_new_tokens masks the stop tokens, show them (cut), however unlikely
            masked = {t: list(proc.stop_token_ids) for t in range(min(proc.min_new_tokens, len(completion)))}
            out.append(summarize(raw_lp, proc_lp, completion, top, masked))
    return out


@torch.no_grad()
def next_token_logits(model, prompt: list[int]) -> torch.Tensor:
    """float32 logits (V,) of the first token after `prompt`."""
    idx = torch.tensor([list(prompt)], dtype=torch.long, device=model.device)
    return model(idx)[0, -1].float().cpu()


def distributions_under(logits: torch.Tensor, prompt: list[int], settings: list[Processing]) -> list[torch.Tensor]:
    """The first step after `prompt` (its logits (V,)) under several processing chains: (V,) log-probs each."""
    # completion [0] is a placeholder: step 0's repetition penalty only sees the prompt
    out = []
    for p in settings:
        lp = processed_logprobs(logits[None], prompt, [0], p)[0]  # (V,)
        if p.mode == "greedy":  # what a draw comes from: all mass on the argmax
            lp = torch.full_like(lp, float("-inf")).scatter_(0, lp.argmax()[None], 0.0)
        out.append(lp)
    return out
