"""pigpt's decoding engine: the one place where text is drawn from the policy.

    from pigpt.decoding import SamplingParams, generate, stream, beam_search, score

`stream` yields the decode steps as they happen (decoding/engine.py, the one decode loop); `generate`
collects them into Rollouts with log-probs under the processed and the raw distribution; `beam_search`
is transformers' beam search; `score` recomputes log-probs of given completions, batched and optionally
with gradients. `decoding.processors.apply_processors` is the one place the logits processors' order lives.
"""

from . import processors
from .beam import Beam, BeamStep, beam_search
from .engine import Step, Stream, stream
from .generate import Rollout, generate
from .params import SamplingParams
from .score import score

__all__ = ["SamplingParams", "generate", "stream", "beam_search", "score", "Rollout", "Beam", "BeamStep", "Step",
           "Stream", "processors"]
