"""The text form a model was trained on: how text is rewritten before tokenising, and undone after decoding.

GPT-2's BPE has no token for a run of spaces, so every space of a Python indentation costs a token of its
own: a third of the tokens of typical code, and a trap for a small model, whose samples fall into endless
spaces. The "tabs" form writes each leading group of 4 spaces as one tab (one token per level, still valid
Python); "plain" leaves text alone.

Training rewrites its corpus with `form.to_model`, and records the form's name in the checkpoint's
config.json (key "pigpt_text_form", which transformers ignores). Whatever feeds the model text goes through
pigpt.decoding.text (`encode_prompts`: `for_model(model).to_model(prompt)`, then the tokenizer) and reads
completions back through it (`completion_text`: `.from_model(text)`, as Rollout.text and Beam.text hold
them), so a user types and reads ordinary text and the model sees what it was trained on.

    form = textform.for_model(gpt)          # or for_model("default"), or TextForm("tabs")
    ids = enc.encode(form.to_model(prompt))
    print(form.from_model(enc.decode(completion_ids)))

Round trips: from_model(to_model(s)) == s for any s without a tab at the start of a line (to_model makes
tabs only there, and from_model undoes only those).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

CONFIG_KEY = "pigpt_text_form"  # in config.json; absent means "plain" (any checkpoint not made by train.py)
FORMS = ("plain", "tabs")

_LEADING_SPACES = re.compile(r"^(?: {4})+", flags=re.MULTILINE)  # whole groups of 4 at a line start
_LEADING_TABS = re.compile(r"^\t+", flags=re.MULTILINE)


@dataclass(frozen=True)
class TextForm:
    """One of FORMS. `to_model`: what the model reads and writes; `from_model`: what a person reads and types."""

    name: str = "plain"

    def __post_init__(self):
        if self.name not in FORMS:
            raise ValueError(f"unknown text form {self.name!r}; known forms: {', '.join(FORMS)}")

    def to_model(self, text: str) -> str:
        if self.name == "tabs":  # '        x' -> '\t\tx'; a remainder of 1-3 spaces stays
            return _LEADING_SPACES.sub(lambda m: "\t" * (len(m.group(0)) // 4), text)
        return text

    def from_model(self, text: str) -> str:
        if self.name == "tabs":
            return _LEADING_TABS.sub(lambda m: "    " * len(m.group(0)), text)
        return text


PLAIN = TextForm("plain")


def for_model(model_or_dir) -> TextForm:
    """The form a model was trained on: a GPT's `text_form` (GPT.from_pretrained sets it from config.json),
    or a checkpoint directory's config.json. A model that records none (GPT-2 itself, anything not made by
    train.py) is plain."""
    name = getattr(model_or_dir, "text_form", None)  # set by GPT.from_pretrained and by train.py
    if isinstance(model_or_dir, (str, Path)):
        config = Path(model_or_dir) / "config.json"
        if config.is_file():
            name = json.loads(config.read_text()).get(CONFIG_KEY)
    return TextForm(name or "plain")


_ESCAPE = re.compile(r"\\([nt\\])")
_ESCAPED = {"n": "\n", "t": "\t", "\\": "\\"}


def unescape(text: str) -> str:
    """Text typed on one line (a shell argument, a line of a prompts file) with the escapes \\n, \\t and \\\\
    read as newline, tab and backslash; any other backslash stays as typed. A shell passes `--stop "\\n\\n"`
    as backslash, n, backslash, n: this is how a newline reaches a stop string or a one-line prompt."""
    return _ESCAPE.sub(lambda m: _ESCAPED[m.group(1)], text)


__all__ = ["TextForm", "PLAIN", "FORMS", "CONFIG_KEY", "for_model", "unescape"]
