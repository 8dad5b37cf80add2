"""How a trained model's rollouts look, in numbers: the share of whitespace-only tokens among sampled ones
(an early default model's rollouts were 70% tabs), how often a completion of a function header parses, how
often "Which is the largest ocean?" is answered with an ocean (and the Pacific), and how often "Can you give
me some Python code?" is answered with code.

    python -m pigpt.training.quality default                 # the figures docs/training.md quotes

Rollouts are drawn by decoding.generate as sample.py draws them: the prompt in the model's text form, rollout i
with seed s + i.
"""

from __future__ import annotations

import argparse
import ast
import re

from pigpt.model import EOT_TOKEN, GPT, get_tokenizer
from pigpt.model.textform import for_model

PROMPTS = ("Which is the largest ocean?", "The function returns", "Once upon a time", "def fibonacci(n):")
CODE_PROMPTS = ("def add(a, b):\n", "def is_even(n):\n", "def reverse(s):\n", "def mean(values):\n")
OCEAN_QUESTION, CODE_QUESTION = "Which is the largest ocean?", "Can you give me some Python code?"
OCEANS = re.compile(r"\b(Pacific|Atlantic|Indian|Arctic|Antarctic|Southern) Ocean\b|\b(Pacific|Atlantic)\b")
_BLOCK_OPENERS = re.compile(r"(?:async\s+)?(?:def|class|if|elif|else|for|while|with|try|except|finally)\b.*:$")


def rollouts(gpt, prompt: str, n: int, seed: int, max_new_tokens: int, temperature=0.7, top_k=50, top_p=1.0):
    """n rollouts of `prompt`: (token lists without the final <|endoftext|>, texts as a person reads them)."""
    from pigpt.decoding import SamplingParams, generate

    params = SamplingParams(n=n, temperature=temperature, top_k=top_k, top_p=top_p, max_new_tokens=max_new_tokens,
                            seed=seed)
    rollouts = generate(gpt, prompt, params)[0]
    return [r.tokens[:-1] if r.tokens[-1:] == [EOT_TOKEN] else r.tokens for r in rollouts], [r.text for r in rollouts]


def whitespace_share(gpt, prompts=PROMPTS, seeds=range(10), n=4, max_new_tokens=64) -> tuple[float, int]:
    """(share of sampled tokens that decode to whitespace only, sampled tokens in all), over prompts x seeds x n
    rollouts at temperature 0.7, top-k 50 (the stop token is not counted)."""
    enc = get_tokenizer()
    blank = {t for t in range(enc.n_vocab) if not enc.decode([t]).strip()}
    total = white = 0
    for prompt in prompts:
        for seed in seeds:
            for toks in rollouts(gpt, prompt, n, seed * 1000, max_new_tokens)[0]:
                total += len(toks)
                white += sum(t in blank for t in toks)
    return white / max(1, total), total


def parses(prompt: str, completion: str) -> bool:
    try:
        ast.parse(prompt + completion)
        return True
    except (SyntaxError, ValueError):
        return False


def parse_rate(gpt, prompts=CODE_PROMPTS, seeds=range(4), n=4, max_new_tokens=64) -> float:
    """Share of completions of function headers that parse as Python, with the header (what a
    python_compiles reward sees)."""
    ok = total = 0
    for prompt in prompts:
        for seed in seeds:
            for text in rollouts(gpt, prompt, n, seed * 1000, max_new_tokens)[1]:
                ok += parses(prompt, text)
                total += 1
    return ok / max(1, total)


def names_ocean(text: str) -> str | None:
    """The first ocean a text names ("Pacific", ...), or None. "Indian", "Arctic", ... count only as "X Ocean"
    (the Indian of "Indian tribe" is no ocean); the Pacific and the Atlantic count alone too."""
    m = OCEANS.search(text)
    return (m.group(1) or m.group(2)) if m else None


def is_python_line(line: str) -> bool:
    """A line of Python, not of English: it compiles (a block opener with a body added), and it is not just
    words (a bare name or a sentence that happens to parse): it has an operator, a call, a keyword of code."""
    line = line.strip()
    if not line or line.startswith("#"):
        return False
    source = line + "\n    pass" if _BLOCK_OPENERS.match(line) else line
    try:  # inside a function, so that `return x` compiles too
        compile("def _():\n    " + source.replace("\n", "\n    "), "<line>", "exec")
    except (SyntaxError, ValueError):
        return False
    return bool(_BLOCK_OPENERS.match(line) or re.search(r"[=()\[\]]|^(?:return|import|from|raise|yield|assert)\b",
                                                         line))


def answer_shares(gpt, n=64, seed=0, max_new_tokens=32) -> dict:
    """n rollouts of OCEAN_QUESTION at temperature 1 (no top-k): the share that names an ocean, the share that
    names the Pacific, the oceans named (counts), and the texts."""
    texts = rollouts(gpt, OCEAN_QUESTION, n, seed, max_new_tokens, temperature=1.0, top_k=0)[1]
    named = [names_ocean(t) for t in texts]
    counts: dict[str, int] = {}
    for o in named:
        if o:
            counts[o] = counts.get(o, 0) + 1
    return {"ocean": sum(map(bool, named)) / n, "pacific": named.count("Pacific") / n, "counts": counts,
            "texts": texts}


def next_token_probs(gpt, prompt: str, k=8) -> list[tuple[str, float]]:
    """The k likeliest next tokens after `prompt` (in the model's text form) and their probabilities."""
    import torch

    enc, form = get_tokenizer(), for_model(gpt)
    ids = torch.tensor([enc.encode(form.to_model(prompt), allowed_special="all")])
    with torch.no_grad():
        probs = gpt(ids)[0, -1].float().softmax(-1)
    top = probs.topk(k)
    return [(enc.decode([int(t)]), float(p)) for p, t in zip(top.values, top.indices)]


def code_share(gpt, n=16, seed=0, max_new_tokens=64) -> tuple[float, list[str]]:
    """(share of n rollouts of CODE_QUESTION at temperature 1 that contain a line of Python, the texts)."""
    texts = rollouts(gpt, CODE_QUESTION, n, seed, max_new_tokens, temperature=1.0, top_k=0)[1]
    return sum(any(map(is_python_line, t.splitlines())) for t in texts) / n, texts


def answer_logprob(gpt, question: str = "Which is the largest ocean?", answer: str = " The Pacific") -> float:
    """log pi(answer | question) under the raw model: how reachable an RL target answer is before training."""
    from pigpt.decoding import score

    return float(score(gpt, question, answer).sum())


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("model", help="a checkpoint directory (or hub id)")
    p.add_argument("--seeds", type=int, default=10)
    a = p.parse_args(argv)
    gpt = GPT.from_pretrained(a.model)
    share, total = whitespace_share(gpt, seeds=range(a.seeds))
    print(f"whitespace-only tokens: {share:.1%} of {total} sampled ({len(PROMPTS)} prompts x {a.seeds} seeds x 4 "
          "rollouts, temperature 0.7, top-k 50, <= 64 tokens)")
    print(f"completions of function headers that parse: {parse_rate(gpt):.0%}")
    for answer in (" Pacific", " The Pacific", "\nThe Pacific Ocean"):
        print(f"log pi({answer!r} | 'Which is the largest ocean?') = {answer_logprob(gpt, answer=answer):.2f}")
    ocean = answer_shares(gpt)
    print(f"{OCEAN_QUESTION!r}, 64 rollouts at temperature 1: {ocean['ocean']:.0%} name an ocean, "
          f"{ocean['pacific']:.0%} the Pacific; named: {ocean['counts']}")
    after = OCEAN_QUESTION + " The"
    print(f"next token after {after!r}: " + ", ".join(f"{t!r} {p:.1%}" for t, p in next_token_probs(gpt, after)))
    print(f"next token after {OCEAN_QUESTION!r}: " + ", ".join(
        f"{t!r} {p:.1%}" for t, p in next_token_probs(gpt, OCEAN_QUESTION)))
    share, _ = code_share(gpt)
    print(f"{CODE_QUESTION!r}, 16 rollouts at temperature 1: {share:.0%} contain a line of Python")
    for prompt in PROMPTS + CODE_PROMPTS[:1]:
        print(f"--- {prompt!r}")
        for text in rollouts(gpt, prompt, 2, 0, 48)[1]:
            print(f"{prompt}{text}\n")


if __name__ == "__main__":
    main()
