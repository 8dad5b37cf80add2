"""beam_search(): transformers' vectorised beam search (>= 4.50), on pigpt's static KV cache.

Per step, as in transformers' `_beam_search` (generation/utils.py):
  1. log_softmax of each running beam's logits, then the processors (decoding.processors.apply_processors:
     repetition penalty, min_new_tokens, the user's) act on those log-probs; add each beam's running score.
  2. Keep the top K = max(2, 1 + n_stop) * num_beams of the flattened num_beams * vocab candidates.
  3. Candidates that end (a stop token, a stop string, or the length cap) leave the running set; those
     ranked in the top num_beams become finished hypotheses, scored sum(log-probs) / (generated length **
     length_penalty), the length counting the stop token. The best num_beams hypotheses are kept.
  4. Stop per transformers' early_stopping rules (True / False / "never").
All of it is batched tensor work: [B, num_beams] state per prompt, no Python loop over beams (stop strings
excepted: their text is matched on the host). Each hypothesis carries, per token, the processed log-prob
that beam search added up (they sum to its unnormalised score), the raw model's log-prob, and the running
beam whose distribution it was drawn from. num_beams == 1 is greedy search, as `generate(num_beams=1)` in
transformers; its score is the sum of the greedy tokens' log-probs / length ** length_penalty.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace

import torch
import torch.nn.functional as F

from pigpt.model.threads import Governor

from .engine import decode_one_token, prefill
from .params import SamplingParams
from .processors import apply_processors
from .prompts import check_prompts, stop_ids_of
from .stopping import StopStrings
from .text import completion_texts, stop_strings, tokenizer_for

NEG = -1.0e9  # transformers' "impossible" score; kept identical so that ties break the same way


@dataclass
class Beam:
    """A finished hypothesis: its generated tokens (ending with the stop token when one was hit), its score
    (sum of `logprobs` / length ** length_penalty), each token's processed log-prob (what beam search
    added up) and raw model log-prob, why it ended ("stop": a stop token or string; "length"), and for
    each token the running beam (0 .. num_beams - 1) it extended. `text`: the completion as a person
    reads it (decoding.text.completion_text: no stop token, plain text form; None when no tokenizer fits
    the model)."""

    tokens: list[int]
    score: float
    logprobs: list[float] = field(default_factory=list)
    model_logprobs: list[float] = field(default_factory=list)
    finish_reason: str = "length"
    beam_indices: list[int] = field(default_factory=list)
    text: str | None = None


@dataclass
class BeamStep:
    """What an on_step observer sees at step t: every running beam's distribution. Row r is beam
    beams[r] of prompt prompts[r] (original prompt index); logits are raw, scores the processed log-probs
    the candidates are ranked by."""

    t: int
    prompts: torch.Tensor  # (R,)
    beams: torch.Tensor  # (R,)
    logits: torch.Tensor  # (R, V) float32
    scores: torch.Tensor  # (R, V) float32
    # the running beams entering step t (beam search proper; None for num_beams=1): their t tokens so far and
    # their running scores (sum of processed log-probs; -1e9 for the placeholder beams of step 0)
    sequences: torch.Tensor | None = None  # (R, t) int64
    running_scores: torch.Tensor | None = None  # (R,) float32


@dataclass
class BeamState:
    """Running and finished beams of B prompts, num_beams each (transformers' names in comments).

    Per hypothesis and generated position, `run` and `fin` hold: tok (ids), lp (processed log-prob),
    mlp (raw model log-prob), src (running beam extended at that step): each (B, nb, T)."""

    run: dict  # running_sequences and their per-token records
    run_score: torch.Tensor  # (B, nb) running_beam_scores
    fin: dict  # sequences
    fin_score: torch.Tensor  # (B, nb) beam_scores
    fin_len: torch.Tensor  # (B, nb) generated length of each finished hypothesis
    fin_done: torch.Tensor  # (B, nb) is_sent_finished
    fin_stop: torch.Tensor  # (B, nb) ended by a stop token / string (not the length cap)
    improvable: torch.Tensor  # (B, 1) is_early_stop_heuristic_unsatisfied


_RECORDS = ("tok", "lp", "mlp", "src")


def beam_search(model, prompts, params: SamplingParams | None = None, *, num_beams: int,
                max_new_tokens: int | None = None, length_penalty: float = 1.0, early_stopping: bool | str = False,
                num_return_sequences: int = 1, min_new_tokens: int | None = None,
                repetition_penalty: float | None = None, stop_token_ids=None, stop=None, tokenizer=None,
                on_step=None) -> list[list[Beam]]:
    """The best `num_return_sequences` beams of each prompt, best first (transformers' semantics).

    prompts: a str, or a list of prompts, each a str (encoded in the model's text form with `tokenizer`,
    GPT-2's by default) or a token-id list, as for generate. Each Beam carries its `.text`.

    Lengths, stops and processors come from `params` (its max_new_tokens, min_new_tokens,
    repetition_penalty, stop_token_ids, stop strings and logits_processors) or from the keywords of the
    same names; beam search is deterministic, so params' sampling fields (temperature, top_k, top_p,
    min_p, epsilon_cutoff, n, seed) must be left at their defaults. on_step(BeamStep) sees every step's distributions.
    """
    params = _params(params, max_new_tokens=max_new_tokens, min_new_tokens=min_new_tokens,
                     repetition_penalty=repetition_penalty, stop_token_ids=stop_token_ids, stop=stop)
    _check_args(num_beams, params.max_new_tokens, length_penalty, early_stopping, num_return_sequences)
    prompts = check_prompts(model, prompts, params.max_new_tokens, tokenizer=tokenizer)
    stop_ids = stop_ids_of(model, params.stop_token_ids)
    tokenizer = tokenizer_for(model, tokenizer) if params.stop else tokenizer
    if num_beams == 1:
        beams = _greedy(model, prompts, params, length_penalty, tokenizer, on_step)
    else:
        with torch.inference_mode():
            st = _search(model, prompts, params, num_beams, length_penalty, early_stopping, stop_ids, tokenizer,
                         on_step)
        rec = {k: v.tolist() for k, v in st.fin.items()}
        lens, scores, stops = st.fin_len.tolist(), st.fin_score.tolist(), st.fin_stop.tolist()
        beams = [[Beam(tokens=rec["tok"][b][j][:lens[b][j]], score=scores[b][j],
                       logprobs=rec["lp"][b][j][:lens[b][j]], model_logprobs=rec["mlp"][b][j][:lens[b][j]],
                       finish_reason="stop" if stops[b][j] else "length", beam_indices=rec["src"][b][j][:lens[b][j]])
                  for j in range(num_return_sequences)] for b in range(len(prompts))]
    flat = [b for group in beams for b in group]
    for b, text in zip(flat, completion_texts(model, [b.tokens for b in flat], stop_ids, tokenizer) or []):
        b.text = text
    return beams


def _params(params, **kw) -> SamplingParams:
    """One SamplingParams from params and/or the keywords (None = not given); conflicts are errors."""
    given = {k: v for k, v in kw.items() if v is not None}
    try:
        if params is None:
            if "max_new_tokens" not in given:
                raise ValueError("beam_search needs max_new_tokens (a keyword, or in params)")
            return SamplingParams(**given)
        if not isinstance(params, SamplingParams):
            raise ValueError(f"params must be a SamplingParams or None, got {type(params).__name__}")
        merged = replace(params, **given)
    except ValueError as e:  # the keywords are beam_search's own: name them as such
        raise ValueError(str(e).replace("SamplingParams.", "")) from None
    for k in given:
        if getattr(merged, k) != getattr(params, k):
            raise ValueError(f"{k} is given both in params ({getattr(params, k)!r}) and as a keyword "
                             f"({getattr(merged, k)!r}); pass it once")
    defaults = {"temperature": 1.0, "top_k": 0, "top_p": 1.0, "min_p": 0.0, "typical_p": 1.0, "epsilon_cutoff": 0.0,
                "eta_cutoff": 0.0, "presence_penalty": 0.0, "frequency_penalty": 0.0, "n": 1, "seed": None}
    sampling = {k: getattr(params, k) for k in defaults}
    if sampling != defaults:
        raise ValueError(f"beam search is deterministic: params' sampling fields {sampling} would be ignored; "
                         "leave temperature, top_k, top_p, min_p, typical_p, epsilon_cutoff, eta_cutoff, the "
                         "presence / frequency "
                         "penalties (vLLM's sampling penalties), n and seed at their defaults "
                         "(num_return_sequences gives several beams)")
    return params


def _check_args(num_beams, max_new_tokens, length_penalty, early_stopping, num_return_sequences):
    def is_int(v):
        return isinstance(v, int) and not isinstance(v, bool)

    if not is_int(num_beams) or num_beams < 1:
        raise ValueError(f"num_beams must be an integer >= 1, got {num_beams!r}")
    if not is_int(num_return_sequences) or not 1 <= num_return_sequences <= num_beams:
        raise ValueError(f"num_return_sequences must be an integer in [1, num_beams={num_beams}], "
                         f"got {num_return_sequences!r}")
    if isinstance(length_penalty, bool) or not isinstance(length_penalty, (int, float)) \
            or not math.isfinite(length_penalty):
        raise ValueError(f"length_penalty must be a finite number (1.0 = average log-prob), got {length_penalty!r}")
    if not (early_stopping is True or early_stopping is False or early_stopping == "never"):
        raise ValueError(f"early_stopping must be True, False or 'never', got {early_stopping!r}")


def _greedy(model, prompts, params, length_penalty, tokenizer, on_step):
    from .engine import stream

    s = stream(model, prompts, replace(params, temperature=0.0, seed=0), tokenizer=tokenizer,
               distributions=on_step is not None)
    toks = [[] for _ in range(s.num_rows)]
    lps, mlps, reasons = [[] for _ in toks], [[] for _ in toks], ["length"] * len(toks)
    for step in s:
        if on_step is not None:
            on_step(BeamStep(step.t, step.rows, torch.zeros_like(step.rows), step.logits,
                             torch.log_softmax(step.scores, -1)))
        for r, tok, lp, mlp, stopped in zip(step.rows.tolist(), step.tokens.tolist(), step.logprobs.tolist(),
                                            step.model_logprobs.tolist(), step.stopped.tolist()):
            toks[r].append(tok)
            lps[r].append(lp)
            mlps[r].append(mlp)
            reasons[r] = "stop" if stopped else reasons[r]
    return [[Beam(tokens=toks[r], score=math.fsum(lps[r]) / len(toks[r]) ** length_penalty, logprobs=lps[r],
                  model_logprobs=mlps[r], finish_reason=reasons[r], beam_indices=[0] * len(toks[r]))]
            for r in range(len(prompts))]


def _search(model, prompts, params, nb, lp, early_stopping, stop_ids, tokenizer, on_step) -> BeamState:
    device, T = model.device, params.max_new_tokens
    B = len(prompts)
    # the prompt's prefill too: at full width beside busy processes it can cost more than the steps
    with Governor() as governor:  # fewer threads while other processes hold cores (pigpt/model/threads.py)
        idx, cache, logits = prefill(model, prompts, T)  # (B, P), cache, (B, V)
        P, V = idx.shape[1], logits.shape[-1]
        expand = torch.arange(B, device=device).repeat_interleave(nb)  # (B*nb,)
        cache, logits = cache.share(expand), logits.index_select(0, expand)  # beams share the prompt's KV
        hist = None  # prompt + generated ids per beam, for the repetition penalty and user processors
        if params.repetition_penalty != 1.0 or params.logits_processors:
            hist = torch.empty(B * nb, P + T, dtype=torch.long, device=device)
            hist[:, :P] = idx.index_select(0, expand)
        strings = (StopStrings(stop_strings(model, params.stop), B * nb, params.min_new_tokens, tokenizer)
                   if params.stop else None)

        K = max(2, 1 + len(stop_ids)) * nb  # beams_to_keep
        top_nb = torch.arange(K, device=device) < nb  # top_num_beam_mask
        stop_t = torch.tensor(stop_ids, dtype=torch.long, device=device)
        fill = stop_ids[0] if stop_ids else -1
        run_score = torch.zeros(B, nb, device=device)
        run_score[:, 1:] = NEG  # only beam 0 is live at the first step

        def records():
            return {"tok": torch.full((B, nb, T), fill, dtype=torch.long, device=device),
                    "lp": torch.zeros(B, nb, T, device=device), "mlp": torch.zeros(B, nb, T, device=device),
                    "src": torch.zeros(B, nb, T, dtype=torch.long, device=device)}

        st = BeamState(run=records(), run_score=run_score, fin=records(),
                       fin_score=torch.full((B, nb), NEG, device=device),
                       fin_len=torch.zeros(B, nb, dtype=torch.long, device=device),
                       fin_done=torch.zeros(B, nb, dtype=torch.bool, device=device),
                       fin_stop=torch.zeros(B, nb, dtype=torch.bool, device=device),
                       improvable=torch.ones(B, 1, dtype=torch.bool, device=device))
        items = torch.arange(B, device=device)  # original prompt index of each batch item
        out = _select_items(st, torch.arange(B, device=device))  # final hypotheses, filled as prompts finish
        for t in range(T):
            governor.tick()
            if t > 0:
                logits = decode_one_token(model, st.run["tok"][:, :, t - 1].reshape(-1), cache)
            raw = F.log_softmax(logits, dim=-1)  # (B*nb, V)
            history = hist[:, : P + t] if hist is not None else None
            proc = apply_processors(raw, params, history, t, stop_ids)
            if on_step is not None:
                on_step(BeamStep(t, items.repeat_interleave(nb), torch.arange(nb, device=device).repeat(len(items)),
                                 logits, proc, st.run["tok"][:, :, :t].flatten(0, 1), st.run_score.reshape(-1)))
            total = proc.view(-1, nb, V) + st.run_score[:, :, None]
            topk_lp, topk_idx = torch.topk(total.view(-1, nb * V), k=K)  # (B, K)
            src, ids = topk_idx // V, topk_idx % V  # the beam each candidate extends, its token
            cand = {k: _gather_beams(v, src) for k, v in st.run.items()}  # (B, K, T)
            cand["tok"][:, :, t] = ids
            cand["lp"][:, :, t] = proc.view(-1, nb * V).gather(1, topk_idx)
            cand["mlp"][:, :, t] = raw.view(-1, nb * V).gather(1, topk_idx)
            cand["src"][:, :, t] = src
            stops = torch.isin(ids, stop_t) if stop_ids else torch.zeros_like(ids, dtype=torch.bool)
            if strings is not None:
                stops |= _string_hits(strings, src, ids, nb, t + 1)
            ends = torch.ones_like(stops) if t + 1 >= T else stops  # the length cap ends every candidate
            run_src = _next_running(st, topk_lp, cand, src, ends, nb)
            _update_finished(st, topk_lp, cand, ends, stops, top_nb, nb, t, lp, early_stopping)
            _update_improvable(st, t + 1, T, lp, early_stopping)
            done = _items_done(st, ends, early_stopping)  # (B,)
            if t + 1 == T or bool(done.all()):
                break
            if bool(done.any()):
                # A finished prompt's hypotheses can no longer change (transformers keeps stepping it, adding
                # -1e9 to whatever it would add): store them and drop its beams from the batch.
                finished = torch.nonzero(done)[:, 0]
                _store(out, st, finished, items[finished])
                keep = torch.nonzero(~done)[:, 0]
                st = _select_items(st, keep)
                items, run_src = items[keep], run_src[keep]
                rows = (run_src + keep[:, None] * nb).view(-1)  # (B'*nb,) old flat row each new beam continues
                cache = cache.select(rows)
            else:
                rows = (run_src + torch.arange(len(items), device=device)[:, None] * nb).view(-1)
                cache.reorder_(rows)
            if hist is not None:
                hist = hist.index_select(0, rows)
                hist[:, P + t] = st.run["tok"][:, :, t].reshape(-1)
            if strings is not None:
                strings.reorder(rows.tolist(), st.run["tok"][:, :, t].reshape(-1).tolist(), t + 1)
        _store(out, st, torch.arange(len(items), device=device), items)
    return out


def _string_hits(strings: StopStrings, src, ids, nb, num_generated) -> torch.Tensor:
    """(B, K) bool: whether each candidate's token completes a stop string on the beam it extends."""
    rows = (src + torch.arange(src.shape[0], device=src.device)[:, None] * nb).tolist()
    hits = [[strings.would_stop(r, tok, num_generated) for r, tok in zip(rr, tt)] for rr, tt in zip(rows, ids.tolist())]
    return torch.tensor(hits, dtype=torch.bool, device=src.device)


def _items_done(st: BeamState, ends, early_stopping) -> torch.Tensor:
    """Per prompt, transformers' stopping test (_beam_search_has_unfinished_sequences) -> (B,) bool."""
    no_improvement = ~st.improvable[:, 0]
    full = torch.all(st.fin_done, dim=-1) & (early_stopping is True)
    no_continuation = torch.all(ends, dim=-1)
    return no_improvement | full | no_continuation


_FIN = ("fin_score", "fin_len", "fin_done", "fin_stop")


def _store(out: BeamState, st: BeamState, rows: torch.Tensor, items: torch.Tensor) -> None:
    """out's prompts `items` get the finished hypotheses of st's batch rows `rows`."""
    for k in _RECORDS:
        out.fin[k][items] = st.fin[k][rows]
    for f in _FIN:
        getattr(out, f)[items] = getattr(st, f)[rows]


def _select_items(st: BeamState, keep: torch.Tensor) -> BeamState:
    return BeamState(run={k: v[keep] for k, v in st.run.items()}, run_score=st.run_score[keep],
                     fin={k: v[keep] for k, v in st.fin.items()}, improvable=st.improvable[keep],
                     **{f: getattr(st, f)[keep] for f in _FIN})


def _gather_beams(x: torch.Tensor, beams: torch.Tensor) -> torch.Tensor:
    """x [B, nb, ...] gathered along the beam axis by beams [B, K] -> [B, K, ...]."""
    while beams.dim() < x.dim():
        beams = beams.unsqueeze(-1)
    return torch.take_along_dim(x, beams, dim=1)


def _next_running(st: BeamState, topk_lp, cand, src, ends, nb) -> torch.Tensor:
    """The best nb candidates that did not end become the running beams; returns their source beams."""
    running_lp = topk_lp + ends.to(torch.float32) * NEG  # (B, K)
    keep = torch.topk(running_lp, k=nb)[1]  # (B, nb)
    st.run = {k: _gather_beams(v, keep) for k, v in cand.items()}
    st.run_score = _gather_beams(running_lp, keep)
    return _gather_beams(src, keep)


def _update_finished(st: BeamState, topk_lp, cand, ends, stops, top_nb, nb, t, lp, early_stopping):
    """Merge newly ended top-nb candidates into the finished hypotheses; keep the best nb."""
    just_done = ends & top_nb[None, :]  # (B, K)
    score = topk_lp / ((t + 1) ** lp)  # generated length includes the stop token
    full = torch.all(st.fin_done, dim=-1, keepdim=True) & (early_stopping is True)
    score += full.to(torch.float32) * NEG
    score += (~st.improvable).to(torch.float32) * NEG
    score += (~just_done) * NEG
    B, K = just_done.shape
    merged = {k: torch.cat((st.fin[k], cand[k]), dim=1) for k in _RECORDS}
    merged_score = torch.cat((st.fin_score, score), dim=1)
    merged_len = torch.cat((st.fin_len, torch.full((B, K), t + 1, dtype=torch.long, device=ends.device)), dim=1)
    merged_done = torch.cat((st.fin_done, just_done), dim=1)
    merged_stop = torch.cat((st.fin_stop, stops), dim=1)
    best = torch.topk(merged_score, k=nb)[1]  # (B, nb)
    st.fin = {k: _gather_beams(v, best) for k, v in merged.items()}
    st.fin_score = _gather_beams(merged_score, best)
    st.fin_len = _gather_beams(merged_len, best)
    st.fin_done = _gather_beams(merged_done, best)
    st.fin_stop = _gather_beams(merged_stop, best)


def _update_improvable(st: BeamState, gen_len: int, T: int, lp: float, early_stopping):
    """transformers' _check_early_stop_heuristic, after gen_len generated tokens."""
    best_len = T if early_stopping == "never" and lp > 0.0 else gen_len
    best_running = st.run_score[:, :1] / (best_len**lp)  # (B, 1)
    worst_finished = torch.where(st.fin_done, torch.min(st.fin_score, dim=1, keepdim=True)[0], NEG)  # (B, nb)
    st.improvable = st.improvable & torch.any(best_running > worst_finished, dim=-1, keepdim=True)
