"""Rewards for the seed's own example: "Which is the largest ocean?" answered with "Pacific".

`names_pacific` is the unshaped reward of docs/policy.md's demo (b): 1 when the completion names the
Pacific. It works because the shipped model has read WordNet (docs/training.md) and sometimes answers with
an ocean; GRPO reinforces the rollouts that name the right one. The previous default model, trained on
Python's documentation only, never sampled the word (log π(" Pacific" | question) = -15.8), so this reward
gave it no signal, and `toward_pacific` was a shaped ladder of partial credit, letter by letter, that got it
to " package" and no further (docs/policy.md keeps that run). TRL's reward signature.

    python train.py --reward docs/demos/ocean.py:names_pacific ... (docs/policy.md)
"""

import re

TARGET = "pacific"

OCEANS = re.compile(r"pacific|atlantic|indian|arctic|southern|antarctic", re.IGNORECASE)


def first_ocean_is_pacific(prompts, completions, **kwargs):
    """1 when the first ocean the completion names is the Pacific, else 0 (none named: 0)."""
    out = []
    for c in completions:
        m = OCEANS.search(c)
        out.append(1.0 if m and m.group(0).lower() == "pacific" else 0.0)
    return out


def toward_pacific(prompts, completions, **kwargs):
    """Partial credit in [0, 1], letter by letter: the longest start of "pacific" that begins a word of the
    completion, / 7 (" Path" earns 2/7, " package" 3/7, "Pacific" 1). A ladder of words the model can write."""
    out = []
    for c in completions:
        best = 0
        for word in re.findall(r"[a-z]+", c.lower()):
            n = 0
            while n < min(len(word), len(TARGET)) and word[n] == TARGET[n]:
                n += 1
            best = max(best, n)
        out.append(best / len(TARGET))
    return out


def names_pacific(prompts, completions, **kwargs):
    """1 when the completion names the Pacific anywhere, else 0."""
    return [1.0 if "pacific" in c.lower() else 0.0 for c in completions]
