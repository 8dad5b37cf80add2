"""generate(): batched rollouts from a static KV cache.

The loop: one prefill for all prompts (left-padded), its cache shared by the n rows of each prompt (the
prompt's keys and values are stored and read once, model/cache.py SharedPrefixKVCache); then every
live row decodes together, one token per step. Rows that finish are dropped from the batch (and the cache)
so they stop costing work. The only host sync per step is the "did any row stop?" check, and only when
stop tokens or stop strings are set.

Reproducibility: row r draws its t-th token from `sample_from_logits(..., seed=seed_r, position=t)`, whose
draw depends only on (seed, position, logits): a rollout does not depend on the rest of the batch (up to
floating-point differences of batched matmuls, which can flip a draw only at exact near-ties).
"""

from __future__ import annotations

import random
from dataclasses import dataclass

import torch
from tqdm.auto import tqdm

from .params import MAX_SEED, SamplingParams
from .processors import apply_min_new_tokens, apply_repetition_penalty
from .prompts import check_prompts, check_stop_ids, prefill
from .stopping import StopStrings


@dataclass
class Rollout:
    """One completion: its token ids (ending with the stop token when one was hit), the log-probability of
    each under the processed distribution that drew it, why it ended ("stop" or "length"), and its seed."""

    tokens: list[int]
    logprobs: list[float]
    finish_reason: str
    seed: int


def draw_seed() -> int:
    """A fresh seed from the OS, leaving torch's global RNG alone."""
    return random.SystemRandom().randrange(MAX_SEED)


@torch.inference_mode()
def generate(model, prompts, params: SamplingParams | None = None, *, backend: str = "auto",
             progress: bool = False) -> list[list[Rollout]]:
    """Sample `params.n` completions for every prompt (a list of token-id lists, of any lengths).

    Returns one list of `n` Rollouts per prompt, in order. Rollout i of a prompt uses seed `params.seed + i`
    (a fresh seed per prompt when params.seed is None; it is reported in `Rollout.seed`).
    """
    params = SamplingParams() if params is None else params
    if not isinstance(params, SamplingParams):
        raise ValueError(f"params must be a SamplingParams, got {type(params).__name__}")
    prompts = check_prompts(model, prompts, params.max_new_tokens)
    stop_ids = check_stop_ids(model, params.stop_token_ids)
    n = params.n
    base = [params.seed if params.seed is not None else draw_seed() for _ in prompts]
    seeds = [s + i for s in base for i in range(n)]  # row r = prompt r // n, rollout r % n

    rows, lengths, reasons = _decode(model, prompts, params, stop_ids, seeds, backend, progress)
    toks, lps = rows
    out = []
    for p in range(len(prompts)):
        group = []
        for i in range(n):
            r = p * n + i
            L = lengths[r]
            group.append(Rollout(tokens=toks[r][:L], logprobs=lps[r][:L], finish_reason=reasons[r], seed=seeds[r]))
        out.append(group)
    return out


class _Live:
    """The rows still decoding: their cache, last tokens, seeds, rollout indices and token history."""

    def __init__(self, cache, seeds: torch.Tensor, hist: torch.Tensor | None):
        self.cache, self.seeds, self.hist = cache, seeds, hist  # hist: (B, P + T) ids, for the penalty
        self.rows = torch.arange(len(seeds), device=seeds.device)  # rollout index of each batch row
        self.rows_host = list(range(len(seeds)))
        self.tok = None  # (B,) the tokens drawn last step

    def push(self, tok: torch.Tensor, slot: int) -> None:
        self.tok = tok
        if self.hist is not None:
            self.hist[:, slot] = tok

    def keep(self, keep_host: list[int]) -> None:
        """Drop every row not in keep_host, so that finished rows stop costing work."""
        keep = torch.tensor(keep_host, dtype=torch.long, device=self.rows.device)
        self.cache = self.cache.select(keep)
        self.tok, self.seeds, self.rows = self.tok[keep], self.seeds[keep], self.rows[keep]
        self.rows_host = [self.rows_host[i] for i in keep_host]
        if self.hist is not None:
            self.hist = self.hist[keep]


def _start(model, prompts, params, seeds):
    """Prefill every prompt once and expand to n rows each: (live rows, first logits (N, V), P)."""
    device, n, T = model.device, params.n, params.max_new_tokens
    idx, cache, logits = prefill(model, prompts, T)  # (Bp, P), cache, (Bp, V)
    if n > 1:
        expand = torch.arange(len(prompts), device=device).repeat_interleave(n)  # (N,)
        # the rollouts share their prompt's KV (read once a step for all n), rather than n copies of it
        cache, logits, idx = cache.share(expand), logits.index_select(0, expand), idx.index_select(0, expand)
    N, P = idx.shape
    hist = None
    if params.repetition_penalty != 1.0:
        hist = torch.empty(N, P + T, dtype=torch.long, device=device)
        hist[:, :P] = idx  # left padding repeats the row's first token: a no-op for the penalty
    live = _Live(cache, torch.tensor(seeds, dtype=torch.long, device=device), hist)
    return live, logits, P


def _process(logits, live: _Live, params, stop_ids, P: int, t: int):
    """transformers' order before the sampler: repetition penalty, then the min_new_tokens mask."""
    if live.hist is not None:
        logits = apply_repetition_penalty(logits, live.hist[:, : P + t], params.repetition_penalty, inplace=True)
    return apply_min_new_tokens(logits, t, params.min_new_tokens, stop_ids, inplace=True)


def _decode(model, prompts, params, stop_ids, seeds, backend, progress):
    """The decode loop. Returns ((tokens, logprobs) as lists of lists, lengths, finish reasons) per row."""
    from kernels import sample_from_logits

    device, T, N = model.device, params.max_new_tokens, len(seeds)
    live, logits, P = _start(model, prompts, params, seeds)
    stop_t = torch.tensor(stop_ids, dtype=torch.long, device=device) if stop_ids else None
    strings = None
    if params.stop:
        from model import get_tokenizer

        strings = StopStrings(params.stop, N, params.min_new_tokens, get_tokenizer())
    out_tok = torch.zeros(N, T, dtype=torch.long, device=device)
    out_lp = torch.zeros(N, T, dtype=torch.float32, device=device)
    lengths, reasons = [T] * N, ["length"] * N
    sample_kw = dict(temperature=params.temperature, top_k=params.top_k, top_p=params.top_p, backend=backend)

    for t in tqdm(range(T), disable=not progress, desc="generate", unit="tok"):
        if t > 0:
            logits = model(live.tok[:, None], live.cache, last_only=True)[:, -1].float()  # (B, V)
        logits = _process(logits, live, params, stop_ids, P, t)
        tok, lp = sample_from_logits(logits, seed=live.seeds, position=t, **sample_kw)  # (B,), (B,)
        out_tok[live.rows, t], out_lp[live.rows, t] = tok, lp
        live.push(tok, P + t)
        done = _finished(tok, stop_t, strings, live.rows_host, t)  # host bool list, or None
        if done is None:
            continue
        for i in (i for i, d in enumerate(done) if d):
            lengths[live.rows_host[i]], reasons[live.rows_host[i]] = t + 1, "stop"
        keep_host = [i for i, d in enumerate(done) if not d]
        if not keep_host or t == T - 1:
            break
        live.keep(keep_host)
    return (out_tok.tolist(), out_lp.tolist()), lengths, reasons


def _finished(tok, stop_t, strings, alive_host, t):
    """Which rows stopped at step t (a list of bools over the batch), or None when none did."""
    hit = None
    if stop_t is not None:
        hit = torch.isin(tok, stop_t)  # (B,)
        if strings is None:
            if not bool(hit.any()):  # the one host sync a step needs
                return None
            return hit.tolist()
    if strings is None:
        return None
    done = hit.tolist() if hit is not None else [False] * len(alive_host)
    for i in strings.update(alive_host, tok.tolist(), t + 1):
        done[i] = True
    return done if any(done) else None
