"""generate(): batched rollouts, collected from the step engine (decoding/engine.py).

Every step's tokens and log-probs are written into preallocated [N, max_new_tokens] tensors on the
model's device; they come back to the host once, at the end.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from tqdm.auto import tqdm

from .engine import stream
from .params import SamplingParams
from .prompts import draw_seed  # noqa: F401  (re-exported: decoding.generate.draw_seed)
from .text import completion_texts


@dataclass
class Rollout:
    """One completion: its token ids (ending with the stop token when one was hit), the log-probability of
    each under the processed distribution that drew it (`logprobs`, the behaviour policy's), why it ended
    ("stop" or "length"), its seed (None for greedy decoding, which draws no noise), and each token's
    log-probability under the raw model
    (`model_logprobs`: log pi(y_t | x, y_<t) at temperature 1, nothing processed). `text`: the completion
    as a person reads it (decoding.text.completion_text: without the stop token, in plain text form; None
    when no tokenizer fits the model: a vocabulary other than GPT-2's and no tokenizer= given)."""

    tokens: list[int]
    logprobs: list[float]
    finish_reason: str
    seed: int | None
    model_logprobs: list[float] = field(default_factory=list)
    text: str | None = None


def generate(model, prompts, params: SamplingParams | None = None, *, backend: str = "auto",
             progress: bool = False, tokenizer=None, on_step=None, distributions: bool = False
             ) -> list[list[Rollout]]:
    """Sample `params.n` completions for every prompt.

    prompts: a str (one prompt), or a list of prompts of any lengths, each a str or a token-id list. Text
    is encoded in the model's text form (model/textform.py: e.g. tabs for indents) with `tokenizer`
    (default: GPT-2's, for a model with its vocabulary), special tokens such as <|endoftext|> allowed;
    decoding/text.py. A bare list of ints is refused as ambiguous: wrap one prompt's ids, [ids].

    Returns one list of `n` Rollouts per prompt, in order, each with its `.text`. Seeds: see
    SamplingParams.seed (an int s gives rollout i of prompt p the seed s + p * n + i); each Rollout reports
    its own. `tokenizer` also turns tokens into text for stop strings and Rollout.text. on_step(Step) is called
    as each step happens (streaming); distributions=True gives those Steps the step's raw logits and
    processed scores.
    """
    s = stream(model, prompts, params, backend=backend, tokenizer=tokenizer, distributions=distributions)
    N, T, device = s.num_rows, s.params.max_new_tokens, model.device
    tok = torch.zeros(N, T, dtype=torch.long, device=device)
    lp = torch.zeros(N, T, dtype=torch.float32, device=device)
    mlp = torch.zeros(N, T, dtype=torch.float32, device=device)
    length = torch.full((N,), T, dtype=torch.long, device=device)
    stopped = torch.zeros(N, dtype=torch.bool, device=device)
    for step in tqdm(s, total=T, disable=not progress, desc="generate", unit="tok"):
        r, t = step.rows, step.t
        tok[r, t], lp[r, t], mlp[r, t] = step.tokens, step.logprobs, step.model_logprobs
        # no boolean indexing: it would cost a host sync every step
        length[r] = torch.where(step.finished, t + 1, length[r])
        stopped[r] |= step.stopped
        if on_step is not None:
            on_step(step)
    tok, lp, mlp, length, stopped = tok.tolist(), lp.tolist(), mlp.tolist(), length.tolist(), stopped.tolist()
    n = s.params.n
    texts = completion_texts(model, [tok[r][:length[r]] for r in range(N)], s.stop_ids, tokenizer) or [None] * N
    return [[Rollout(tokens=tok[r][:length[r]], logprobs=lp[r][:length[r]],
                     finish_reason="stop" if stopped[r] else "length", seed=s.seeds[r],
                     model_logprobs=mlp[r][:length[r]], text=texts[r])
             for r in range(p * n, p * n + n)] for p in range(len(s.prompts))]
