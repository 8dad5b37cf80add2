"""The next-token distribution at every time step, as the decoding engine had it, reduced for pictures.

Nothing here runs the model or a processor: the engine's steps carry each step's raw logits and the scores
after the processors (`stream(..., distributions=True)`, `generate(..., on_step=..., distributions=True)`,
`beam_search(..., on_step=...)`), and the recorders below keep, per rollout or beam and step, the few
numbers a picture shows: the top tokens under the raw model (the policy pi(.|x, y_<t)) beside what
temperature / top-k / top-p / the penalties made of them, and the drawn token.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from pigpt.decoding import SamplingParams, processors


# -- what a picture says about the processing --------------------------------------------------------------------
def label(params: SamplingParams, *, beam: bool = False) -> str:
    """A short description of the processing chain: 'T=0.7 top-k=50 rep=1.3', 'greedy (argmax)', ..."""
    if beam:
        parts = ["beam search"]
    elif params.greedy:
        parts = ["greedy (argmax)"]
    else:
        parts = [f"T={params.temperature:g}"]
        if params.top_k:
            parts.append(f"top-k={params.top_k}")
        if params.top_p < 1.0:
            parts.append(f"top-p={params.top_p:g}")
        if params.min_p > 0:
            parts.append(f"min-p={params.min_p:g}")
        if params.typical_p < 1.0:
            parts.append(f"typical={params.typical_p:g}")
        if params.epsilon_cutoff > 0:
            parts.append(f"eps={params.epsilon_cutoff:g}")
        if params.eta_cutoff > 0:
            parts.append(f"eta={params.eta_cutoff:g}")
    if params.repetition_penalty != 1.0:
        parts.append(f"rep={params.repetition_penalty:g}")
    if params.presence_penalty:
        parts.append(f"presence={params.presence_penalty:g}")
    if params.frequency_penalty:
        parts.append(f"frequency={params.frequency_penalty:g}")
    if params.min_new_tokens:
        parts.append(f"min_new={params.min_new_tokens}")
    if params.logits_processors:
        parts.append(f"+{len(params.logits_processors)} processor(s)")
    return " ".join(parts)


def is_identity(params: SamplingParams, *, beam: bool = False) -> bool:
    """True when the processed distribution is the raw one (then only one column is worth showing)."""
    untouched = not params.needs_history and params.min_new_tokens == 0
    if beam or params.greedy:  # both rank the model's own log-probs unless something processes them
        return untouched
    return params.temperature == 1.0 and not params.truncates and untouched


def processed_logprobs(scores: torch.Tensor, params: SamplingParams, *, beam: bool = False) -> torch.Tensor:
    """(B, V) log-probs of the distribution a step drew from, given the scores after the processors
    (-inf = removed). Sampling: temperature / top-k / top-p / min-p / epsilon, as the sampler applies them
    (decoding.processors.sampler_logprobs). Greedy and beam search rank the scores themselves: shown as their
    softmax."""
    if beam or params.greedy:
        return F.log_softmax(scores.float(), dim=-1)
    return processors.sampler_logprobs(scores, params)


@dataclass
class StepView:
    """One time step, reduced to what a picture needs: the top tokens under both distributions.

    `ids` are the shown token ids, sorted by raw probability (the drawn token always among them);
    `raw` / `processed` their probabilities (processed 0.0 = removed by top-k / top-p / a mask).
    """

    t: int  # 0-based index of the generated token
    token: int  # the token drawn at this step
    ids: list[int]
    raw: list[float]
    processed: list[float]
    token_raw_logprob: float  # log p(token | context) under the model
    token_logprob: float  # log p(token | context) under the processed distribution
    kept: int  # tokens with non-zero processed probability (the sampler's support)

    @property
    def token_index(self) -> int:
        return self.ids.index(self.token)


@dataclass
class _Summary:
    """One row's step before its token is known (beam search learns it at the end): the shown tokens,
    and the whole raw and processed log-prob rows (V,) for the token's own numbers."""

    t: int
    ids: list[int]
    raw: list[float]
    processed: list[float]
    raw_lp: torch.Tensor
    proc_lp: torch.Tensor
    kept: int

    def view(self, token: int) -> StepView:
        ids, raw, processed = list(self.ids), list(self.raw), list(self.processed)
        raw_lp, proc_lp = float(self.raw_lp[token]), float(self.proc_lp[token])
        if token not in ids:
            ids.append(token)
            raw.append(float(self.raw_lp[token].exp()))
            processed.append(float(self.proc_lp[token].exp()))
        return StepView(self.t, token, ids, raw, processed, raw_lp, proc_lp, self.kept)


def summarize(t: int, logits: torch.Tensor, scores: torch.Tensor, params: SamplingParams, *, beam: bool = False,
              top: int = 8, extra: tuple[int, ...] = ()) -> list[_Summary]:
    """Per row of one step (logits, scores (B, V)): the `top` tokens by raw probability (plus `extra`, e.g.
    the stop tokens min_new_tokens masks, shown cut however unlikely) under both distributions."""
    raw_lp = F.log_softmax(logits.float(), dim=-1).cpu()
    proc_lp = processed_logprobs(scores, params, beam=beam).float().cpu()
    top = max(1, min(top, raw_lp.shape[-1]))
    top_ids = raw_lp.topk(top, dim=-1).indices  # (B, top)
    if extra:
        top_ids = torch.cat([top_ids, torch.tensor([list(extra)] * len(top_ids))], 1)
    kept = torch.isfinite(proc_lp).sum(-1).tolist()
    out = []
    for b in range(len(raw_lp)):
        ids = list(dict.fromkeys(top_ids[b].tolist()))
        idx = torch.tensor(ids)
        out.append(_Summary(t, ids, raw_lp[b, idx].exp().tolist(), proc_lp[b, idx].exp().tolist(), raw_lp[b],
                            proc_lp[b], kept[b]))
    return out


class StepRecorder:
    """An on_step callback for generate (distributions=True): StepViews per rollout, made as each step
    happens (so only a few numbers per step are kept).

        rec = StepRecorder(params, stop_ids, rows={0, 1}, top=8)
        generate(model, prompts, params, on_step=rec, distributions=True)
        rec.views[0]  # rollout 0's StepViews, one per step
    """

    def __init__(self, params: SamplingParams, stop_ids=(), *, rows=None, top: int = 8):
        self.params, self.stop_ids, self.rows, self.top = params, tuple(stop_ids), rows, top
        self.views: dict[int, list[StepView]] = {}

    def __call__(self, step) -> None:
        want = [i for i, r in enumerate(step.rows.tolist()) if self.rows is None or r in self.rows]
        if not want:
            return
        sel = torch.tensor(want, device=step.rows.device)
        extra = self.stop_ids if step.t < self.params.min_new_tokens else ()
        summaries = summarize(step.t, step.logits[sel], step.scores[sel], self.params, top=self.top, extra=extra)
        for i, s, tok in zip(want, summaries, step.tokens[sel].tolist()):
            self.views.setdefault(int(step.rows[i]), []).append(s.view(tok))


class BeamRecorder:
    """An on_step callback for beam_search: every running beam's step, assembled into StepViews for the
    final beams at the end (a beam's token at step t came from running beam beam_indices[t]).

        rec = BeamRecorder(params, stop_ids, prompts={0})
        beams = beam_search(model, prompts, params, num_beams=4, on_step=rec)
        rec.views(0, beams[0][0])
    """

    def __init__(self, params: SamplingParams, stop_ids=(), *, prompts=None, top: int = 8):
        self.params, self.stop_ids, self.prompts, self.top = params, tuple(stop_ids), prompts, top
        self.steps: dict[tuple[int, int, int], _Summary] = {}

    def __call__(self, step) -> None:
        prompts = step.prompts.tolist()
        want = [i for i, p in enumerate(prompts) if self.prompts is None or p in self.prompts]
        if not want:
            return
        sel = torch.tensor(want, device=step.prompts.device)
        extra = self.stop_ids if step.t < self.params.min_new_tokens else ()
        summaries = summarize(step.t, step.logits[sel], step.scores[sel], self.params, beam=True, top=self.top,
                              extra=extra)
        beams = step.beams.tolist()
        for i, s in zip(want, summaries):
            self.steps[(step.t, prompts[i], beams[i])] = s

    def views(self, prompt: int, beam) -> list[StepView]:
        return [self.steps[(t, prompt, j)].view(tok) for t, (tok, j) in enumerate(zip(beam.tokens, beam.beam_indices))]


def compare_settings(model, prompt: list[int], settings: list[SamplingParams], *, backend: str = "auto"):
    """The first step after `prompt` under several settings: (raw log-probs (V,), [processed log-probs (V,)]),
    each from one step of the engine (a draw from a point mass for greedy settings)."""
    from pigpt.decoding import stream

    raw, out = None, []
    for params in settings:
        step = next(iter(stream(model, [prompt], params, backend=backend, distributions=True)))
        raw = F.log_softmax(step.logits[0].float(), -1).cpu()
        lp = processed_logprobs(step.scores, params)[0].cpu()
        if params.greedy:  # what a draw comes from: all mass on the argmax
            lp = torch.full_like(lp, float("-inf")).scatter_(0, lp.argmax()[None], 0.0)
        out.append(lp)
    return raw, out
