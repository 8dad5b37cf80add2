"""pigpt's decoding engine: the one place where text is drawn from the policy.

    from pigpt.decoding import SamplingParams, generate, stream, beam_search, score

Prompts (and score's completions) are text or token ids: a str, or a list of prompts each a str or a
token-id list; text is encoded in the model's text form (decoding/text.py: `encode_prompts`), and every
Rollout and Beam carries its completion back as `.text` (`completion_text`).

`stream` yields the decode steps as they happen (decoding/engine.py, the one decode loop); `generate`
collects them into Rollouts with log-probs under the processed and the raw distribution; `beam_search`
is transformers' beam search; `score` recomputes log-probs of given completions, batched and optionally
with gradients. One place each: `decoding.processors.apply_processors` for the logits processors' order,
`decoding.params.check_sampling` for which sampling settings are allowed, `decoding.prompts.check_prompts`
for taking prompts in (text encoded, vocabulary and context checked), `decoding.text` for text both ways.
"""

from . import processors
from .beam import Beam, BeamStep, beam_search
from .engine import Step, Stream, stream
from .generate import Rollout, generate
from .params import SamplingParams
from .score import score
from .text import completion_text, encode_prompts

__all__ = ["SamplingParams", "generate", "stream", "beam_search", "score", "Rollout", "Beam", "BeamStep", "Step",
           "Stream", "processors", "encode_prompts", "completion_text"]
