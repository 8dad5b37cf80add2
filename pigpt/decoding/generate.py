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
    ("stop", "length", or "interrupted": cut short by a Ctrl-C, see Interrupted), its seed (None for greedy
    decoding, which draws no noise), and each token's log-probability under the raw model
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
    processed scores. A Ctrl-C (KeyboardInterrupt) raises Interrupted, which carries the rollouts so far.
    """
    s = stream(model, prompts, params, backend=backend, tokenizer=tokenizer, distributions=distributions)
    N, T, device = s.num_rows, s.params.max_new_tokens, model.device
    tok = torch.zeros(N, T, dtype=torch.long, device=device)
    lp = torch.zeros(N, T, dtype=torch.float32, device=device)
    mlp = torch.zeros(N, T, dtype=torch.float32, device=device)
    length = torch.zeros(N, dtype=torch.long, device=device)  # 0 until the row finishes (every row does)
    stopped = torch.zeros(N, dtype=torch.bool, device=device)
    done = 0  # steps whose every write is complete: what a Ctrl-C keeps
    bar = tqdm(total=T, disable=not progress, desc="generate", unit="tok")
    try:
        for step in s:
            r, t = step.rows, step.t
            tok[r, t], lp[r, t], mlp[r, t] = step.tokens, step.logprobs, step.model_logprobs
            # no boolean indexing: it would cost a host sync every step
            length[r] = torch.where(step.finished, t + 1, length[r])
            stopped[r] |= step.stopped
            if on_step is not None:
                on_step(step)
            done = t + 1
            bar.update(1)
    except KeyboardInterrupt:
        raise Interrupted(_rollouts(s, tok, lp, mlp, length, stopped, done), done, T) from None
    finally:
        bar.close()
    return _rollouts(s, tok, lp, mlp, length, stopped, T)


def _rollouts(s, tok, lp, mlp, length, stopped, done: int) -> list[list[Rollout]]:
    """The collected steps as Rollouts. A row that had not finished within the first `done` steps (an
    interrupted run) keeps those steps' tokens, with finish_reason "interrupted"."""
    tok, lp, mlp, length, stopped = tok.tolist(), lp.tolist(), mlp.tolist(), length.tolist(), stopped.tolist()
    ends = [length[r] if 0 < length[r] <= done else done for r in range(s.num_rows)]
    texts = completion_texts(s.model, [tok[r][:k] for r, k in enumerate(ends)], s.stop_ids, s.tokenizer)
    rollouts = []
    for r, k in enumerate(ends):
        reason = ("stop" if stopped[r] else "length") if 0 < length[r] <= done else "interrupted"
        rollouts.append(Rollout(tokens=tok[r][:k], logprobs=lp[r][:k], finish_reason=reason, seed=s.seeds[r],
                                model_logprobs=mlp[r][:k], text=texts[r] if texts is not None else None))
    n = s.params.n
    return [rollouts[p * n:(p + 1) * n] for p in range(len(s.prompts))]


class Interrupted(KeyboardInterrupt):
    """A Ctrl-C during generate: `rollouts` holds what was drawn in the `steps` whole steps before it (of
    `max_new_tokens`), in generate's shape; rows still running then have finish_reason "interrupted"."""

    def __init__(self, rollouts: list[list[Rollout]], steps: int, max_new_tokens: int):
        super().__init__(f"interrupted after {steps} of {max_new_tokens} steps")
        self.rollouts, self.steps, self.max_new_tokens = rollouts, steps, max_new_tokens
