"""What the explorer computes, without the web: one loaded model and the engine's own pieces, behind checked inputs.

Every number the page shows comes from pigpt's decoding engine, not from a second copy of it:
  - the step view is one `engine.sample_one_token` (the processors, then the sampler, keyed by (seed, t)) on the
    raw logits of the prefix, reduced for bars by `viz.steps.summarize`;
  - "draw N times" is the same call over N seeds at once;
  - rollouts are `generate`, beams `beam_search`, rewards `policy.rollouts.score_batch` (TRL's group advantages;
    the reward functions themselves run in a child process, rewards.py).
The raw logits of a prefix are kept in a small LRU, so moving a slider re-processes them without a forward.
Bad input raises ExploreError (the server answers HTTP 400 with its message); a request that runs past its
deadline stops between decode steps with ExploreTimeout.
"""

from __future__ import annotations

import atexit
import math
import threading
import time
from collections import OrderedDict
from collections.abc import Sequence

import torch
import torch.nn.functional as F

from pigpt.decoding import SamplingParams, beam_search, generate
from pigpt.decoding.engine import sample_one_token
from pigpt.decoding.prompts import stop_ids_of
from pigpt.viz import steps as viz_steps

from .rewards import BoundedReward, RewardProcess

# limits on one request: the page's sliders stop at these, the API refuses anything beyond them
MAX_PROMPT_TOKENS = 512
MAX_N = 64
MAX_NEW_TOKENS = 256
MAX_BEAMS = 8
MAX_DRAWS = 1000
MAX_BARS = 50
MAX_TREE_NODES = 512
MAX_REGEX_CHARS = 200
REWARD_TIMEOUT_S = 30.0  # rewards of <= 64 short completions take milliseconds; the child's first start, seconds
BUILTIN_REWARDS = "python_compiles, contains:WORD or regex:PATTERN"


class ExploreError(ValueError):
    """Bad input: the message says what is wrong and how to fix it (HTTP 400)."""


class ExploreTimeout(RuntimeError):
    """The request ran past its time bound (HTTP 503)."""


def check_deadline(deadline: float | None) -> None:
    if deadline is not None and time.monotonic() > deadline:
        raise ExploreTimeout("the request ran past its time bound; lower n, max_new_tokens or beams and try again")


def _int(name: str, v, lo: int, hi: int) -> int:
    if isinstance(v, bool) or not isinstance(v, int) or not lo <= v <= hi:
        raise ExploreError(f"{name} must be an integer in [{lo}, {hi}], got {v!r}")
    return v


# the page's settings; RULES go to SamplingParams as they are (its check is the one check), the rest are limited here
RULES = ("temperature", "top_k", "top_p", "min_p", "typical_p", "epsilon_cutoff", "eta_cutoff", "repetition_penalty")
SETTINGS = (*RULES, "min_new_tokens", "max_new_tokens", "seed", "n", "num_beams")


def sampling_params(settings: dict, *, n: int = 1, max_new_tokens: int | None = None) -> SamplingParams:
    """The one settings object (SamplingParams) from the page's settings, with the explorer's limits."""
    s = dict(settings or {})
    unknown = set(s) - set(SETTINGS)
    if unknown:
        raise ExploreError(f"unknown setting(s) {sorted(unknown)}; known: {', '.join(SETTINGS)}")
    max_new = _int("max_new_tokens", s.get("max_new_tokens", 32) if max_new_tokens is None else max_new_tokens,
                   1, MAX_NEW_TOKENS)
    min_new = _int("min_new_tokens", s.get("min_new_tokens", 0), 0, MAX_NEW_TOKENS)
    seed = _int("seed", s.get("seed", 0), 0, 2**62 - 1 - MAX_DRAWS)
    try:
        rules = {k: s[k] for k in RULES if k in s}  # the sampler's knobs and the penalty: SamplingParams' defaults
        return SamplingParams(**rules, min_new_tokens=min_new, max_new_tokens=max_new, n=n, seed=seed)
    except ValueError as e:
        raise ExploreError(str(e).replace("SamplingParams.", "")) from None


class Explorer:
    """One model, its tokenizer and text form, shared by every request; `lock` serializes model use."""

    def __init__(self, model, *, name: str = "", cache_size: int = 256):
        from pigpt.model import get_tokenizer
        from pigpt.model.textform import for_model

        self.model, self.name = model.eval(), name
        self.tok, self.form = get_tokenizer(), for_model(model)
        self.stop_ids = stop_ids_of(model, None)
        self.block_size = model.config.block_size
        self.lock = threading.Lock()
        self._logits: OrderedDict[tuple[int, ...], torch.Tensor] = OrderedDict()
        self.cache_size = cache_size
        self.forwards = 0  # how many forwards the step view has run (tests check the cache with it)
        self.rewards_process = RewardProcess()  # rewards run in a child that a time bound can kill (rewards.py)
        atexit.register(self.rewards_process.close)

    # -- inputs ---------------------------------------------------------------------------------------------------
    def encode(self, prompt) -> list[int]:
        from pigpt.decoding import encode_prompts

        if not isinstance(prompt, str) or not prompt:
            raise ExploreError("the prompt is empty: type some text to continue")
        ids = encode_prompts(self.model, [prompt], self.tok)[0]
        limit = min(MAX_PROMPT_TOKENS, self.block_size - 1)
        if len(ids) > limit:
            raise ExploreError(f"the prompt is {len(ids)} tokens; the limit is {limit} (the model's context is "
                               f"{self.block_size}): shorten it")
        return ids

    def check_path(self, prompt_ids: list[int], path, *, room: int = 1) -> list[int]:
        if not isinstance(path, (list, tuple)):
            raise ExploreError(f"path must be a list of token ids, got {type(path).__name__}")
        V = self.model.config.vocab_size
        for tok in path:
            if isinstance(tok, bool) or not isinstance(tok, int) or not 0 <= tok < V:
                raise ExploreError(f"path holds {tok!r}, not a token id in [0, {V})")
        if len(prompt_ids) + len(path) + room > self.block_size:
            raise ExploreError(f"prompt ({len(prompt_ids)} tokens) + path ({len(path)}) leaves no room in the model's "
                               f"context of {self.block_size} tokens: go back a few steps or shorten the prompt")
        return list(path)

    def text(self, ids: Sequence[int]) -> str:
        return self.form.from_model(self.tok.decode(list(ids)))

    def token_texts(self, ids: Sequence[int]) -> list[str]:
        return [self.text([i]) for i in ids]

    # -- the raw logits of a prefix, kept -------------------------------------------------------------------------
    def logits(self, ids: list[int]) -> tuple[torch.Tensor, bool]:
        """Raw logits (1, V) float32 of the token after `ids`, and whether they came from the cache."""
        key = tuple(ids)
        hit = self._logits.get(key)
        if hit is not None:
            self._logits.move_to_end(key)
            return hit, True
        with torch.inference_mode():
            idx = torch.tensor([ids], dtype=torch.long, device=self.model.device)
            out = self.model(idx, last_only=True)[:, -1].float().cpu()  # (1, V)
        self.forwards += 1
        self._logits[key] = out
        if len(self._logits) > self.cache_size:
            self._logits.popitem(last=False)
        return out, False

    def _process(self, ids: list[int], t: int, params: SamplingParams, seeds: torch.Tensor):
        """The engine's step on the prefix: (logits (1, V), cached, tokens (B,), scores (1, V))."""
        logits, cached = self.logits(ids)
        history = torch.tensor([ids], dtype=torch.long)
        B = len(seeds)
        tokens, _, _, scores = sample_one_token(logits.expand(B, -1), params, history.expand(B, -1), t, self.stop_ids,
                                                seeds, backend="torch")
        return logits, cached, tokens, scores[:1]

    # -- endpoints ------------------------------------------------------------------------------------------------
    def step(self, prompt: str, path, settings: dict, *, top: int = 12, tree=None, deadline=None) -> dict:
        """The next-token distribution after prompt + path: the top tokens' raw and processed probabilities, the
        kept set, and the token seed ω draws at this position t = len(path) (rollout 0's draw, had it come
        this way). `tree` (paths taken so far) gets each edge's processed probability under these settings."""
        top = _int("top", top, 1, MAX_BARS)
        params = sampling_params(settings, max_new_tokens=MAX_NEW_TOKENS)
        cap = sampling_params(settings).max_new_tokens  # a rollout's length cap: the page says when t is past it
        with self.lock:
            prompt_ids = self.encode(prompt)
            path = self.check_path(prompt_ids, path)
            edges = self._edges(prompt_ids, tree, params, deadline) if tree is not None else None
            t = len(path)
            ids = prompt_ids + path
            seed = torch.tensor([params.seed], dtype=torch.long)
            logits, cached, token, scores = self._process(ids, t, params, seed)
            token = int(token[0])
            masked = self.stop_ids if t < params.min_new_tokens else ()
            raw_lp, proc_lp = self._distributions(logits, scores, params, token)
            # the bars: the top tokens of either distribution, the drawn one and the stop tokens min_new masks
            shown = dict.fromkeys(raw_lp.topk(top).indices.tolist() + proc_lp.topk(top).indices.tolist()
                                  + [token] + list(masked))
            ids = torch.tensor(list(shown))
            p_raw, p_proc = raw_lp[ids].exp().tolist(), proc_lp[ids].exp().tolist()
            kept = int(torch.isfinite(proc_lp).sum())
        bars = [{"id": i, "text": s, "p_raw": r, "p": p, "kept": p > 0, "masked": i in masked}
                for i, s, r, p in zip(shown, self.token_texts(shown), p_raw, p_proc)]
        bars.sort(key=lambda b: (-b["p_raw"], -b["p"]))
        return {"t": t, "seed": params.seed, "prompt_tokens": len(prompt_ids),
                "context": [{"id": i, "text": s} for i, s in zip(path, self.token_texts(path))],
                "bars": bars, "kept": kept, "vocab": int(logits.shape[-1]), "cached": cached,
                "drawn": {"id": token, "text": self.text([token]), "p_raw": float(raw_lp[token].exp()),
                          "p": float(proc_lp[token].exp())},
                "label": viz_steps.label(params), "edges": edges, "past_max_new_tokens": t >= cap,
                "stop": token in self.stop_ids}

    @staticmethod
    def _distributions(logits, scores, params: SamplingParams, token: int):
        """(raw log-probs (V,), processed log-probs (V,)): the model's own, and the one the step draws from
        (a greedy step: a point mass on its token)."""
        raw_lp = F.log_softmax(logits[0], -1)
        if params.greedy:
            return raw_lp, torch.full_like(raw_lp, float("-inf")).scatter_(0, torch.tensor([token]), 0.0)
        return raw_lp, viz_steps.processed_logprobs(scores, params)[0]

    def _edges(self, prompt_ids, tree, params: SamplingParams, deadline) -> list[dict]:
        """Every edge of the tree of paths (a list of token-id lists): its processed and raw probability."""
        if not isinstance(tree, (list, tuple)):
            raise ExploreError("tree must be a list of paths (token-id lists)")
        nodes: dict[tuple[int, ...], None] = {}
        for path in tree:
            path = self.check_path(prompt_ids, path, room=0)
            for k in range(1, len(path) + 1):
                nodes[tuple(path[:k])] = None
        if len(nodes) > MAX_TREE_NODES:
            raise ExploreError(f"the tree has {len(nodes)} edges; the limit is {MAX_TREE_NODES}: start a new tree")
        seed = torch.tensor([params.seed], dtype=torch.long)
        out = []
        for node in nodes:
            check_deadline(deadline)
            prefix, tok = list(node[:-1]), node[-1]
            logits, _, drawn, scores = self._process(prompt_ids + prefix, len(prefix), params, seed)
            raw_lp, proc_lp = self._distributions(logits, scores, params, int(drawn[0]))
            out.append({"path": list(node), "p": float(proc_lp[tok].exp()), "p_raw": float(raw_lp[tok].exp())})
        return out

    def draw(self, prompt: str, path, settings: dict, *, times: int = 100, deadline=None) -> dict:
        """The step's token drawn with seeds ω, ω+1, ..., ω+times-1 at position t: how often each token came up
        (rollout i of /api/rollouts uses seed ω+i, so these are the first tokens of `times` rollouts when
        the path is empty)."""
        times = _int("times", times, 1, MAX_DRAWS)
        params = sampling_params(settings, max_new_tokens=MAX_NEW_TOKENS)
        counts: dict[int, int] = {}
        with self.lock:
            prompt_ids = self.encode(prompt)
            path = self.check_path(prompt_ids, path)
            for lo in range(0, times, 250):  # chunks: 250 rows of the vocabulary at a time
                check_deadline(deadline)
                seeds = torch.arange(params.seed + lo, params.seed + min(times, lo + 250), dtype=torch.long)
                _, _, tokens, _ = self._process(prompt_ids + path, len(path), params, seeds)
                for tok in tokens.tolist():
                    counts[tok] = counts.get(tok, 0) + 1
        ranked = sorted(counts.items(), key=lambda kv: -kv[1])
        return {"t": len(path), "times": times, "seeds": [params.seed, params.seed + times - 1],
                "counts": [{"id": i, "text": self.text([i]), "count": c, "freq": c / times} for i, c in ranked]}

    def rollouts(self, prompt: str, settings: dict, *, deadline=None) -> dict:
        """`generate`'s n rollouts of the prompt with seeds ω, ω+1, ...: tokens, per-token log-probs under the
        processed (behaviour) and the raw model, log π(y|x), text."""
        n = _int("n", (settings or {}).get("n", 4), 1, MAX_N)
        params = sampling_params(settings, n=n)
        with self.lock:
            prompt_ids = self.encode(prompt)
            if len(prompt_ids) + params.max_new_tokens > self.block_size:
                raise ExploreError(f"prompt ({len(prompt_ids)} tokens) + max_new_tokens ({params.max_new_tokens}) "
                                   f"exceeds the model's context of {self.block_size}: lower max_new_tokens to "
                                   f"{self.block_size - len(prompt_ids)} or shorten the prompt")
            out = generate(self.model, [prompt_ids], params, on_step=lambda step: check_deadline(deadline))[0]
        return {"prompt_tokens": len(prompt_ids), "label": viz_steps.label(params), "rollouts": [
            {"index": i, "seed": r.seed, "tokens": r.tokens, "texts": self.token_texts(r.tokens),
             "logprobs": r.logprobs, "model_logprobs": r.model_logprobs, "finish_reason": r.finish_reason,
             "logprob": math.fsum(r.logprobs), "model_logprob": math.fsum(r.model_logprobs),
             "text": r.text}
            for i, r in enumerate(out)]}

    def beams(self, prompt: str, settings: dict, *, deadline=None) -> dict:
        """`beam_search`'s beams: the final hypotheses (best first) and, at every step, the running beams
        entering it with their running scores (sum of processed log-probs)."""
        nb = _int("num_beams", (settings or {}).get("num_beams", 4), 1, MAX_BEAMS)
        p = sampling_params(settings)
        running: list[list[dict]] = []

        def on_step(step):
            check_deadline(deadline)
            if step.sequences is None or step.t == 0:
                return
            rows = [(seq, sc) for seq, sc, pr in zip(step.sequences.tolist(), step.running_scores.tolist(),
                                                     step.prompts.tolist()) if pr == 0 and sc > -1e8]
            running.append([{"tokens": seq, "score": sc} for seq, sc in rows])

        with self.lock:
            prompt_ids = self.encode(prompt)
            if len(prompt_ids) + p.max_new_tokens > self.block_size:
                raise ExploreError(f"prompt ({len(prompt_ids)} tokens) + max_new_tokens ({p.max_new_tokens}) "
                                   f"exceeds the model's context of {self.block_size}: lower max_new_tokens")
            beams = beam_search(self.model, [prompt_ids], num_beams=nb, num_return_sequences=nb,
                                max_new_tokens=p.max_new_tokens, min_new_tokens=p.min_new_tokens,
                                repetition_penalty=p.repetition_penalty, on_step=on_step)[0]
        if nb == 1:  # greedy search: the one beam's prefixes are the running beam
            b = beams[0]
            running = [[{"tokens": b.tokens[:t], "score": math.fsum(b.logprobs[:t])}] for t in range(1, len(b.tokens))]
        for row in running:
            for r in row:
                r["text"] = self.text(r["tokens"])
        return {"num_beams": nb, "steps": running, "beams": [
            {"tokens": b.tokens, "texts": self.token_texts(b.tokens), "score": b.score, "logprobs": b.logprobs,
             "model_logprobs": b.model_logprobs, "finish_reason": b.finish_reason, "beam_indices": b.beam_indices,
             "text": self.text(b.tokens)} for b in beams]}

    def rewards(self, prompt: str, reward: str, rollouts, *, episode: int = 0, deadline=None) -> dict:
        """A built-in reward on given rollouts (one group): each one's reward and group advantage (TRL's), and
        the RL view of one episode: (state, action, log-prob, reward) per step."""
        from pigpt.decoding import Rollout
        from pigpt.policy import PolicyError
        from pigpt.policy.rollouts import RLBatch, score_batch

        spec = check_reward_spec(reward)
        if not isinstance(rollouts, (list, tuple)) or not 1 <= len(rollouts) <= MAX_N:
            raise ExploreError(f"rollouts must be a list of 1 to {MAX_N} rollouts (ask for rollouts first)")
        raw = []
        for k, r in enumerate(rollouts):
            if not isinstance(r, dict) or not isinstance(r.get("tokens"), list):
                raise ExploreError(f"rollout {k} must be an object with its tokens (a list of token ids)")
            toks = r["tokens"]
            if len(toks) > MAX_NEW_TOKENS:
                raise ExploreError(f"rollout {k} has {len(toks)} tokens; the limit is {MAX_NEW_TOKENS}")
            V = self.model.config.vocab_size
            if any(isinstance(x, bool) or not isinstance(x, int) or not 0 <= x < V for x in toks):
                raise ExploreError(f"rollout {k} holds something that is not a token id in [0, {V})")
            lps, mlps = r.get("logprobs") or [math.nan] * len(toks), r.get("model_logprobs") or [math.nan] * len(toks)
            if len(lps) != len(toks) or len(mlps) != len(toks):
                raise ExploreError(f"rollout {k}: logprobs and model_logprobs need one number per token")
            raw.append(Rollout(tokens=toks, logprobs=[float(x) for x in lps], model_logprobs=[float(x) for x in mlps],
                               finish_reason=str(r.get("finish_reason", "length")), seed=r.get("seed")))
        episode = _int("episode", episode, 0, len(raw) - 1)
        self.encode(prompt)  # the same checks as everywhere
        left = REWARD_TIMEOUT_S if deadline is None else min(REWARD_TIMEOUT_S, deadline - time.monotonic())
        try:
            fn = BoundedReward(spec, self.rewards_process, timeout=max(left, 0.0))
            batch = score_batch(self.model, [prompt], [raw], SamplingParams(n=len(raw)), fn, tokenizer=self.tok)
        except (PolicyError, ValueError) as e:
            raise ExploreError(str(e)) from None
        except TimeoutError as e:
            raise ExploreTimeout(str(e)) from None
        one = RLBatch([batch.rollouts[episode]], 1, batch.per_func[episode:episode + 1], batch.total[episode:episode + 1],
                      [raw[episode]])
        return {"reward": spec, "rollouts": [{"index": r.index, "seed": r.seed, "text": r.text,
                                              "reward": None if math.isnan(r.reward) else r.reward,
                                              "advantage": r.advantage} for r in batch.rollouts],
                "episode": episode, "transitions": [_finite(t) for t in one.transitions(self.tok)]}


def _finite(d: dict) -> dict:
    """JSON has no NaN: unknown log-probs become null."""
    return {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in d.items()}


def check_reward_spec(spec) -> str:
    """Only built-in rewards from the page: a file or module spec would run code a request names."""
    if not isinstance(spec, str) or not spec:
        raise ExploreError(f"reward must be one of {BUILTIN_REWARDS}")
    if spec == "python_compiles" or spec.startswith("contains:"):
        return spec
    if spec.startswith("regex:"):
        if len(spec) - len("regex:") > MAX_REGEX_CHARS:
            raise ExploreError(f"the regex is longer than {MAX_REGEX_CHARS} characters: shorten it")
        return spec
    raise ExploreError(f"reward {spec!r} is refused: the explorer runs built-in rewards only ({BUILTIN_REWARDS}); "
                       "file and module rewards (path.py:function) run code, so use them with pigpt-sample --reward")
