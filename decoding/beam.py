"""beam_search(): transformers' vectorised beam search (>= 4.50), on pigpt's static KV cache.

Per step, as in transformers' `_beam_search` (generation/utils.py):
  1. log_softmax of each running beam's logits, then the processors (repetition penalty, min_new_tokens)
     act on those log-probs; add each beam's running score.
  2. Keep the top K = max(2, 1 + n_stop) * num_beams of the flattened num_beams * vocab candidates.
  3. Candidates that end (a stop token, or the length cap) leave the running set; those ranked in the top
     num_beams become finished hypotheses, scored sum(log-probs) / (generated length ** length_penalty),
     the length counting the stop token. The best num_beams hypotheses are kept.
  4. Stop per transformers' early_stopping rules (True / False / "never").
All of it is batched tensor work: [B, num_beams] state per prompt, no Python loop over beams.
num_beams == 1 is greedy search, as `generate(num_beams=1)` in transformers; its score is the sum of the
greedy tokens' log-probs / length ** length_penalty.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from model import EOT_TOKEN

from .processors import apply_min_new_tokens, apply_repetition_penalty
from .prompts import check_prompts, check_stop_ids, prefill

NEG = -1.0e9  # transformers' "impossible" score; kept identical so that ties break the same way


@dataclass
class Beam:
    """A finished hypothesis: its generated tokens (ending with the stop token when one was hit) and score."""

    tokens: list[int]
    score: float


@dataclass
class BeamState:
    """Running and finished beams of B prompts, num_beams each (transformers' names in comments)."""

    run_tok: torch.Tensor  # (B, nb, T) running_sequences, generated part only
    run_score: torch.Tensor  # (B, nb) running_beam_scores
    fin_tok: torch.Tensor  # (B, nb, T) sequences
    fin_score: torch.Tensor  # (B, nb) beam_scores
    fin_len: torch.Tensor  # (B, nb) generated length of each finished hypothesis
    fin_done: torch.Tensor  # (B, nb) is_sent_finished
    improvable: torch.Tensor  # (B, 1) is_early_stop_heuristic_unsatisfied


def beam_search(model, prompts, *, num_beams: int, max_new_tokens: int, length_penalty: float = 1.0,
                early_stopping: bool | str = False, num_return_sequences: int = 1, min_new_tokens: int = 0,
                repetition_penalty: float = 1.0, stop_token_ids=(EOT_TOKEN,)) -> list[list[Beam]]:
    """The best `num_return_sequences` beams of each prompt, best first (transformers' semantics)."""
    _check_args(num_beams, max_new_tokens, length_penalty, early_stopping, num_return_sequences,
                min_new_tokens, repetition_penalty)
    prompts = check_prompts(model, prompts, max_new_tokens)
    if isinstance(stop_token_ids, int):
        stop_token_ids = (stop_token_ids,)
    stop_ids = check_stop_ids(model, stop_token_ids)
    if num_beams == 1:
        return _greedy(model, prompts, max_new_tokens, length_penalty, min_new_tokens, repetition_penalty,
                       stop_ids)
    with torch.inference_mode():
        st = _search(model, prompts, num_beams, max_new_tokens, length_penalty, early_stopping,
                     min_new_tokens, repetition_penalty, stop_ids)
    toks, lens, scores = st.fin_tok.tolist(), st.fin_len.tolist(), st.fin_score.tolist()
    return [[Beam(tokens=toks[b][j][: lens[b][j]], score=scores[b][j]) for j in range(num_return_sequences)]
            for b in range(len(prompts))]


def _check_args(num_beams, max_new_tokens, length_penalty, early_stopping, num_return_sequences, min_new_tokens,
                repetition_penalty):
    def is_int(v):
        return isinstance(v, int) and not isinstance(v, bool)

    if not is_int(num_beams) or num_beams < 1:
        raise ValueError(f"num_beams must be an integer >= 1, got {num_beams!r}")
    if not is_int(max_new_tokens) or max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be an integer >= 1, got {max_new_tokens!r}")
    if not is_int(min_new_tokens) or not 0 <= min_new_tokens <= max_new_tokens:
        raise ValueError(f"min_new_tokens must be an integer in [0, max_new_tokens={max_new_tokens}], "
                         f"got {min_new_tokens!r}")
    if not is_int(num_return_sequences) or not 1 <= num_return_sequences <= num_beams:
        raise ValueError(f"num_return_sequences must be an integer in [1, num_beams={num_beams}], "
                         f"got {num_return_sequences!r}")
    if isinstance(length_penalty, bool) or not isinstance(length_penalty, (int, float)) \
            or not math.isfinite(length_penalty):
        raise ValueError(f"length_penalty must be a finite number (1.0 = average log-prob), got {length_penalty!r}")
    if early_stopping not in (True, False, "never") or (early_stopping is not True and early_stopping is not False
                                                         and early_stopping != "never"):
        raise ValueError(f"early_stopping must be True, False or 'never', got {early_stopping!r}")
    if isinstance(repetition_penalty, bool) or not isinstance(repetition_penalty, (int, float)) \
            or not repetition_penalty > 0 or not math.isfinite(repetition_penalty):
        raise ValueError(f"repetition_penalty must be a number > 0 (1.0 disables it), got {repetition_penalty!r}")


def _greedy(model, prompts, max_new_tokens, length_penalty, min_new_tokens, repetition_penalty, stop_ids):
    from .generate import generate
    from .params import SamplingParams

    params = SamplingParams(temperature=0.0, max_new_tokens=max_new_tokens, min_new_tokens=min_new_tokens,
                            repetition_penalty=float(repetition_penalty), stop_token_ids=tuple(stop_ids), seed=0)
    out = generate(model, prompts, params)
    return [[Beam(tokens=r.tokens, score=math.fsum(r.logprobs) / len(r.tokens) ** length_penalty)]
            for (r,) in out]


def _search(model, prompts, nb, T, lp, early_stopping, min_new, penalty, stop_ids) -> BeamState:
    device = model.device
    B = len(prompts)
    idx, cache, logits = prefill(model, prompts, T)  # (B, P), cache, (B, V)
    P, V = idx.shape[1], logits.shape[-1]
    expand = torch.arange(B, device=device).repeat_interleave(nb)  # (B*nb,)
    cache, logits = cache.share(expand), logits.index_select(0, expand)  # beams share the prompt's KV
    hist = None  # prompt + generated ids per beam, kept only for the repetition penalty
    if penalty != 1.0:
        hist = torch.empty(B * nb, P + T, dtype=torch.long, device=device)
        hist[:, :P] = idx.index_select(0, expand)

    K = max(2, 1 + len(stop_ids)) * nb  # beams_to_keep
    top_nb = torch.arange(K, device=device) < nb  # top_num_beam_mask
    stop_t = torch.tensor(stop_ids, dtype=torch.long, device=device)
    fill = stop_ids[0] if stop_ids else -1
    run_score = torch.zeros(B, nb, device=device)
    run_score[:, 1:] = NEG  # only beam 0 is live at the first step
    st = BeamState(
        run_tok=torch.full((B, nb, T), fill, dtype=torch.long, device=device),
        run_score=run_score,
        fin_tok=torch.full((B, nb, T), fill, dtype=torch.long, device=device),
        fin_score=torch.full((B, nb), NEG, device=device),
        fin_len=torch.zeros(B, nb, dtype=torch.long, device=device),
        fin_done=torch.zeros(B, nb, dtype=torch.bool, device=device),
        improvable=torch.ones(B, 1, dtype=torch.bool, device=device),
    )
    items = torch.arange(B, device=device)  # original prompt index of each batch item
    out = _select_items(st, torch.arange(B, device=device))  # final hypotheses, filled as prompts finish
    for t in range(T):
        if t > 0:
            logits = model(st.run_tok[:, :, t - 1].reshape(-1, 1), cache, last_only=True)[:, -1].float()
        logp = F.log_softmax(logits, dim=-1)  # (B*nb, V)
        if hist is not None:
            logp = apply_repetition_penalty(logp, hist[:, : P + t], penalty, inplace=True)
        logp = apply_min_new_tokens(logp, t, min_new, stop_ids, inplace=True)
        logp = logp.view(-1, nb, V) + st.run_score[:, :, None]
        topk_lp, topk_idx = torch.topk(logp.view(-1, nb * V), k=K)  # (B, K)
        src = topk_idx // V  # beam each candidate extends
        ids = topk_idx % V
        topk_tok = _gather_beams(st.run_tok, src)  # (B, K, T)
        topk_tok[:, :, t] = ids
        ends = torch.isin(ids, stop_t) if stop_ids else torch.zeros_like(ids, dtype=torch.bool)
        if t + 1 >= T:  # the length cap ends every candidate
            ends = torch.ones_like(ends)
        run_src = _next_running(st, topk_lp, topk_tok, src, ends, nb)
        _update_finished(st, topk_lp, topk_tok, ends, top_nb, nb, t, lp, early_stopping)
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
            hist[:, P + t] = st.run_tok[:, :, t].reshape(-1)
    _store(out, st, torch.arange(len(items), device=device), items)
    return out


def _items_done(st: BeamState, ends, early_stopping) -> torch.Tensor:
    """Per prompt, transformers' stopping test (_beam_search_has_unfinished_sequences) -> (B,) bool."""
    no_improvement = ~st.improvable[:, 0]
    full = torch.all(st.fin_done, dim=-1) & (early_stopping is True)
    no_continuation = torch.all(ends, dim=-1)
    return no_improvement | full | no_continuation


def _store(out: BeamState, st: BeamState, rows: torch.Tensor, items: torch.Tensor) -> None:
    """out's prompts `items` get the finished hypotheses of st's batch rows `rows`."""
    for f in ("fin_tok", "fin_score", "fin_len", "fin_done"):
        getattr(out, f)[items] = getattr(st, f)[rows]


def _select_items(st: BeamState, keep: torch.Tensor) -> BeamState:
    return BeamState(**{f: getattr(st, f)[keep] for f in ("run_tok", "run_score", "fin_tok", "fin_score",
                                                           "fin_len", "fin_done", "improvable")})


def _gather_beams(x: torch.Tensor, beams: torch.Tensor) -> torch.Tensor:
    """x [B, nb, ...] gathered along the beam axis by beams [B, K] -> [B, K, ...]."""
    while beams.dim() < x.dim():
        beams = beams.unsqueeze(-1)
    return torch.take_along_dim(x, beams, dim=1)


def _next_running(st: BeamState, topk_lp, topk_tok, src, ends, nb) -> torch.Tensor:
    """The best nb candidates that did not end become the running beams; returns their source beams."""
    running_lp = topk_lp + ends.to(torch.float32) * NEG  # (B, K)
    keep = torch.topk(running_lp, k=nb)[1]  # (B, nb)
    st.run_tok = _gather_beams(topk_tok, keep)
    st.run_score = _gather_beams(running_lp, keep)
    return _gather_beams(src, keep)


def _update_finished(st: BeamState, topk_lp, topk_tok, ends, top_nb, nb, t, lp, early_stopping):
    """Merge newly ended top-nb candidates into the finished hypotheses; keep the best nb."""
    just_done = ends & top_nb[None, :]  # (B, K)
    score = topk_lp / ((t + 1) ** lp)  # generated length includes the stop token
    full = torch.all(st.fin_done, dim=-1, keepdim=True) & (early_stopping is True)
    score += full.to(torch.float32) * NEG
    score += (~st.improvable).to(torch.float32) * NEG
    score += (~just_done) * NEG
    B, K = just_done.shape
    merged_tok = torch.cat((st.fin_tok, topk_tok), dim=1)
    merged_score = torch.cat((st.fin_score, score), dim=1)
    merged_len = torch.cat((st.fin_len, torch.full((B, K), t + 1, dtype=torch.long, device=ends.device)), dim=1)
    merged_done = torch.cat((st.fin_done, just_done), dim=1)
    best = torch.topk(merged_score, k=nb)[1]  # (B, nb)
    st.fin_tok = _gather_beams(merged_tok, best)
    st.fin_score = _gather_beams(merged_score, best)
    st.fin_len = _gather_beams(merged_len, best)
    st.fin_done = _gather_beams(merged_done, best)


def _update_improvable(st: BeamState, gen_len: int, T: int, lp: float, early_stopping):
    """transformers' _check_early_stop_heuristic, after gen_len generated tokens."""
    best_len = T if early_stopping == "never" and lp > 0.0 else gen_len
    best_running = st.run_score[:, :1] / (best_len**lp)  # (B, 1)
    worst_finished = torch.where(st.fin_done, torch.min(st.fin_score, dim=1, keepdim=True)[0], NEG)  # (B, nb)
    st.improvable = st.improvable & torch.any(best_running > worst_finished, dim=-1, keepdim=True)
