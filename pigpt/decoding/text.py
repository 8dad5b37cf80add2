"""The model's text, both ways: prompts (and completions to score) from text to token ids, and completions
from token ids back to text. The one place either happens: generate, stream, beam_search and score take
text through `encode_prompts`, Rollout.text and Beam.text come from `completion_text`, and the CLIs, the
training samples and the RL rollouts use the same two.

Text goes through the model's text form (model/textform.py: e.g. "tabs", each leading group of 4 spaces one
tab) and its tokenizer (GPT-2's unless one is given), special tokens such as <|endoftext|> allowed; stop
strings (SamplingParams.stop) are matched in the model's form too (`stop_strings`):

    ids = encode_prompts(gpt, ["def add(a, b):\n    return"])        # tabs in, for a "tabs" model
    completion_text(gpt, rollout.tokens, stop_ids)                    # spaces out, no stop token
"""

from __future__ import annotations

import torch

from pigpt.model import get_tokenizer
from pigpt.model.textform import for_model


def tokenizer_for(model, tokenizer=None, *, why: str = "stop strings"):
    """The tokenizer between the model's tokens and text: the one given, else GPT-2's when the model has
    GPT-2's vocabulary (else ValueError, saying `why` it was needed)."""
    if tokenizer is not None:
        return tokenizer
    enc = gpt2_tokenizer(model)
    if enc is None:
        raise ValueError(f"{why} need the model's tokenizer: its vocabulary has {model.config.vocab_size} tokens, "
                         f"GPT-2's {get_tokenizer().n_vocab}; pass tokenizer=")
    return enc


def gpt2_tokenizer(model):
    """GPT-2's tokenizer when the model has GPT-2's vocabulary, else None."""
    enc = get_tokenizer()
    return enc if model.config.vocab_size == enc.n_vocab else None


def is_text(x) -> bool:
    """A prompt or completion given as text (else token ids)."""
    return isinstance(x, str)


def encode_prompts(model, prompts, tokenizer=None, *, what: str = "prompt") -> list:
    """Each text item of `prompts` (a str, or a list of str and token-id lists) as the token ids the model
    reads: in its text form, special tokens allowed. Token-id lists pass through unchanged; a single str
    becomes a list of one. Anything else is left for check_prompts to name."""
    if is_text(prompts):
        prompts = [prompts]
    if not isinstance(prompts, (list, tuple)) or not any(is_text(p) for p in prompts):
        return prompts
    tokenizer = tokenizer_for(model, tokenizer, why=f"text {what}s")
    form = for_model(model)
    return [tokenizer.encode(form.to_model(p), allowed_special="all") if is_text(p) else p for p in prompts]


def stop_strings(model, stop) -> tuple[str, ...]:
    """Stop strings as the model writes them (its text form): "\n    return" is "\n\treturn" to a "tabs" model.
    Strings already in the model's form stay as they are (to_model leaves its own output unchanged)."""
    form = for_model(model)
    return tuple(dict.fromkeys(form.to_model(s) for s in stop))


def completion_text(model, tokens, stop_ids=(), tokenizer=None) -> str:
    """A completion as a person reads it: without the stop token that ended it (the finish reason says so),
    decoded, in plain text form (what rewards judge and the CLIs print)."""
    tokens = tokens.tolist() if isinstance(tokens, torch.Tensor) else list(tokens)
    if tokens and tokens[-1] in stop_ids:
        tokens = tokens[:-1]
    return for_model(model).from_model(tokenizer_for(model, tokenizer, why="completion texts").decode(tokens))


def completion_texts(model, completions, stop_ids=(), tokenizer=None) -> list[str] | None:
    """completion_text of each token list, or None when no tokenizer fits the model (a vocabulary other
    than GPT-2's and no tokenizer given): what Rollout.text and Beam.text hold."""
    tokenizer = tokenizer if tokenizer is not None else gpt2_tokenizer(model)
    if tokenizer is None:
        return None
    return [completion_text(model, c, stop_ids, tokenizer) for c in completions]


__all__ = ["encode_prompts", "completion_text", "completion_texts", "stop_strings", "tokenizer_for"]
