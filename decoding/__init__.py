"""pigpt's decoding engine: batched rollouts with log-probs, beam search, and scoring.

    from decoding import SamplingParams, generate, beam_search, score

`decoding.processors` exposes the logits processors (repetition penalty, min_new_tokens) used before
`kernels.sample_from_logits`, so that a caller can recompute any step's distribution.
"""

from . import processors
from .beam import Beam, beam_search
from .generate import Rollout, generate
from .params import SamplingParams
from .score import score

__all__ = ["SamplingParams", "generate", "beam_search", "score", "Rollout", "Beam", "processors"]
