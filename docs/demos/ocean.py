"""Rewards for the seed's own example: "Which is the largest ocean?" answered with "Pacific".

The default model was trained on Python's documentation and has never seen the word "Pacific": log π of
" Pacific" after "Which is the largest ocean?" is about -16, so a reward that only pays for naming it
(`names_pacific`) gives GRPO no signal: no rollout earns it, every advantage is zero. Naming the candidates
in the question does not help either (`first_ocean_is_pacific` on ocean_prompts.txt: no rollout named any
ocean; a token never seen in training can't be copied). `toward_pacific` shapes it letter by letter.
docs/policy.md has the run and what it reached (the third rung, " package"; never the word). TRL's reward
signature.

    python train.py --reward docs/demos/ocean.py:toward_pacific --reward docs/demos/ocean.py:names_pacific ... (docs/policy.md)
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
