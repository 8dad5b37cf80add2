"""The step engine: the one loop that draws text from the policy, a step at a time.

    for step in stream(model, prompts, params):   # one Step per decode step
        step.rows, step.tokens, step.logprobs, step.model_logprobs, step.finished

A ladder of small functions, as in gpt-fast: `prefill` (one forward over every prompt, left-padded, into a
static KV cache whose prompt part the n rollouts of a prompt share), `decode_one_token` (one forward of
the live rows), `sample_one_token` (processors -> kernels.sample_from_logits -> log-probs), and the loop
`steps`, which also keeps the stop bookkeeping and drops finished rows from the batch (and the cache), so
they stop costing work. generate collects the steps; sample.py streams them; train.py's samples and the
pictures read them (with distributions=True a Step also carries the step's whole raw and processed
distributions, so nothing has to run the model again to show them).

The only host sync per step is the "did any row stop?" check, and only when stop tokens or stop strings
are set. Row r draws its t-th token from `sample_from_logits(..., seed=seed_r, position=t)`, whose draw
depends only on (seed, position, logits): a rollout does not depend on the rest of the batch (up to
floating-point differences of batched matmuls, which can flip a draw only at exact near-ties).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import torch

from pigpt.kernels import sample_from_logits
from pigpt.kernels.reference import logprob_at
from pigpt.model import heap
from pigpt.model.threads import Governor

from .params import SamplingParams
from .processors import apply_processors
from .prompts import check_prompts, left_pad, rollout_seeds, stop_ids_of
from .stopping import StopStrings
from .text import stop_strings, tokenizer_for


@dataclass
class Step:
    """One decode step of every live row. Row i of the tensors is global rollout rows[i] (prompt-major:
    prompt p's rollout j is p * n + j); tokens drawn at position t of the completion (0 = first)."""

    t: int
    rows: torch.Tensor  # (B,) int64
    tokens: torch.Tensor  # (B,) int64
    logprobs: torch.Tensor  # (B,) float32: log-prob under the processed distribution that drew the token
    model_logprobs: torch.Tensor  # (B,) float32: log pi(token | x, y_<t), the raw model (T = 1, no processing)
    finished: torch.Tensor  # (B,) bool: this was the row's last token
    stopped: torch.Tensor  # (B,) bool: finished by a stop token or stop string, not by the length cap
    logits: torch.Tensor | None = None  # (B, V) float32 raw logits, with distributions=True
    scores: torch.Tensor | None = None  # (B, V) float32 after the processors, before temperature/top-k/top-p


class Stream:
    """An iterable of Steps for a batch of prompts. `seeds` gives every rollout's seed (prompt-major),
    known before the first step; iterating again runs the whole decode again (the same tokens)."""

    def __init__(self, model, prompts, params: SamplingParams | None = None, *, backend: str = "auto",
                 tokenizer=None, distributions: bool = False):
        params = SamplingParams() if params is None else params
        if not isinstance(params, SamplingParams):
            raise ValueError(f"params must be a SamplingParams, got {type(params).__name__}")
        self.model, self.params, self.backend, self.distributions = model, params, backend, distributions
        self.prompts = check_prompts(model, prompts, params.max_new_tokens, tokenizer=tokenizer)  # token-id lists
        self.stop_ids = stop_ids_of(model, params.stop_token_ids)
        self.tokenizer = tokenizer_for(model, tokenizer) if params.stop else tokenizer
        self.seeds = rollout_seeds(params.seed, len(self.prompts), params.n, params.greedy)

    @property
    def num_rows(self) -> int:
        return len(self.seeds)

    def __iter__(self) -> Iterator[Step]:
        with torch.inference_mode():
            yield from steps(self.model, self.prompts, self.params, self.seeds, self.stop_ids, self.tokenizer,
                             backend=self.backend, distributions=self.distributions)


def stream(model, prompts, params: SamplingParams | None = None, *, backend: str = "auto", tokenizer=None,
           distributions: bool = False) -> Stream:
    """The decode steps of `params.n` rollouts of every prompt, as they happen: iterate it for one `Step` per
    step. prompts: a str, or a list of prompts of any lengths, each a str (encoded in the model's text form
    with `tokenizer`, GPT-2's by default: decoding/text.py) or a token-id list. Concatenating a rollout's tokens over the steps gives
    exactly `generate`'s Rollout.tokens for the same inputs. distributions=True adds each step's raw
    logits and processed scores to its Step (for pictures; costs nothing when off)."""
    return Stream(model, prompts, params, backend=backend, tokenizer=tokenizer, distributions=distributions)


# -- the ladder -------------------------------------------------------------------------------------------------
def prefill(model, prompts: list[list[int]], max_new_tokens: int):
    """One forward over all prompts. Returns (idx [B, P], cache with room for max_new_tokens, logits [B, V])."""
    idx, pad = left_pad(prompts, model.device)  # (B, P)
    cache = model.new_cache(idx.shape[0], idx.shape[1] + max_new_tokens, pad=pad)
    logits = model(idx, cache, last_only=True)[:, -1].float()  # (B, V)
    return idx, cache, logits


def decode_one_token(model, tokens: torch.Tensor, cache) -> torch.Tensor:
    """Logits (B, V) float32 for the next position of every row, given the tokens (B,) drawn last step."""
    return model(tokens[:, None], cache, last_only=True)[:, -1].float()


def model_logprobs(logits: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
    """log_softmax(logits)[token] per row (B,): the raw model's log-prob (kernels.reference.logprob_at)."""
    return logprob_at(logits, tokens)


def sample_one_token(logits, params: SamplingParams, history, t: int, stop_ids, seeds, backend="auto"):
    """Processors, then the sampler: (tokens, logprobs, model_logprobs, scores), each row's draw keyed by
    (its seed, position t). history [B, L]: prompt + tokens so far (for the penalty and user processors)."""
    scores = apply_processors(logits, params, history, t, stop_ids)  # a new tensor only if one acts
    tokens, logprobs = sample_from_logits(scores, **params.sampler, seed=seeds, position=t, backend=backend)
    if scores is logits and (params.temperature == 0 or (params.temperature == 1 and not params.truncates)):
        return tokens, logprobs, logprobs, scores  # greedy's log-probs, or a draw from the model's own distribution
    return tokens, logprobs, model_logprobs(logits, tokens), scores


class _Live:
    """The rows still decoding: their cache, last tokens, seeds, rollout indices and token history."""

    def __init__(self, cache, seeds: torch.Tensor, hist: torch.Tensor | None):
        self.cache, self.seeds, self.hist = cache, seeds, hist  # hist: (B, P + T) ids, for the processors
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


def _start(model, prompts, params: SamplingParams, seeds):
    """Prefill every prompt once, n rows each: (live rows, first logits (N, V), P)."""
    device, n, T = model.device, params.n, params.max_new_tokens
    idx, cache, logits = prefill(model, prompts, T)  # (Bp, P), cache, (Bp, V)
    if n > 1:
        expand = torch.arange(len(prompts), device=device).repeat_interleave(n)  # (N,)
        # the rollouts share their prompt's KV (read once a step for all n), rather than n copies of it
        cache, logits, idx = cache.share(expand), logits.index_select(0, expand), idx.index_select(0, expand)
    N, P = idx.shape
    hist = None
    if params.needs_history:
        hist = torch.empty(N, P + T, dtype=torch.long, device=device)
        hist[:, :P] = idx  # left padding repeats the row's first token: a no-op for the penalty
    live = _Live(cache, torch.tensor([s or 0 for s in seeds], dtype=torch.long, device=device), hist)  # greedy: None
    return live, logits, P


def steps(model, prompts, params: SamplingParams, seeds, stop_ids, tokenizer=None, *, backend="auto",
          distributions=False) -> Iterator[Step]:
    """The decode loop over checked inputs (Stream checks them): yields a Step per step."""
    device, T = model.device, params.max_new_tokens
    # the prompt's prefill too: at full width beside busy processes it can cost more than the steps
    with Governor() as governor:  # fewer threads while other processes hold cores (pigpt/model/threads.py)
        live, logits, P = _start(model, prompts, params, seeds)
        stop_t = torch.tensor(stop_ids, dtype=torch.long, device=device) if stop_ids else None
        strings = (StopStrings(stop_strings(model, params.stop), len(seeds), params.min_new_tokens, tokenizer)
                   if params.stop else None)
        for t in range(T):
                governor.tick()
                if t > 0:
                    logits = decode_one_token(model, live.tok, live.cache)  # (B, V)
                    if heap.due(t, logits):  # many rows: their freed temporaries back to the OS (model/heap.py)
                        heap.release()
                history = live.hist[:, : P + t] if live.hist is not None else None
                tok, lp, mlp, scores = sample_one_token(logits, params, history, t, stop_ids, live.seeds, backend)
                live.push(tok, P + t)
                stopped = _stopped(tok, stop_t, strings, live.rows_host, t)  # (B,) bool on device
                finished = torch.ones_like(stopped) if t == T - 1 else stopped
                yield Step(t, live.rows, tok, lp, mlp, finished, stopped,
                           logits if distributions else None, scores if distributions else None)
                if t == T - 1 or (stop_t is None and strings is None):
                    continue
                done = stopped.tolist() if strings is not None or bool(stopped.any()) else None  # the one host sync
                if done is None or not any(done):
                    continue
                keep_host = [i for i, d in enumerate(done) if not d]
                if not keep_host:
                    return
                live.keep(keep_host)


def _stopped(tok, stop_t, strings, alive_host, t) -> torch.Tensor:
    """Which rows stopped at step t, by a stop token or a stop string: (B,) bool."""
    hit = torch.isin(tok, stop_t) if stop_t is not None else torch.zeros_like(tok, dtype=torch.bool)
    if strings is not None:
        found = strings.update(alive_host, tok.tolist(), t + 1)
        if found:
            hit[torch.tensor(found, dtype=torch.long, device=tok.device)] = True
    return hit
