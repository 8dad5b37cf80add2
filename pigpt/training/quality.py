"""How a trained model's rollouts look, in numbers: the share of whitespace-only tokens among sampled ones
(the old default model's rollouts were 70% tabs), and how often a completion of a function header parses.

    python -m pigpt.training.quality default                 # the figures docs/training.md quotes

Rollouts are drawn by decoding.generate as sample.py draws them: the prompt in the model's text form, rollout i
with seed s + i.
"""

from __future__ import annotations

import argparse
import ast

from pigpt.model import EOT_TOKEN, GPT, get_tokenizer

PROMPTS = ("Which is the largest ocean?", "The function returns", "Once upon a time", "def fibonacci(n):")
CODE_PROMPTS = ("def add(a, b):\n", "def is_even(n):\n", "def reverse(s):\n", "def mean(values):\n")


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
    for prompt in PROMPTS + CODE_PROMPTS[:1]:
        print(f"--- {prompt!r}")
        for text in rollouts(gpt, prompt, 2, 0, 48)[1]:
            print(f"{prompt}{text}\n")


if __name__ == "__main__":
    main()
