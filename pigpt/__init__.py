"""pigpt: a from-scratch GPT-2 and decoding engine — the policy π(y|x), its rollouts, their log-probs and rewards.

    from pigpt import GPT, SamplingParams, generate, stream, beam_search, score

    gpt = GPT.from_pretrained("default")                     # the shipped model; or a directory, or "gpt2"
    rollouts = generate(gpt, "Which is the largest ocean?", SamplingParams(n=4, seed=0, max_new_tokens=12))
    for r in rollouts[0]:
        print(r.seed, sum(r.logprobs), r.text)

The parts: `pigpt.model` (GPT-2, checkpoints, tokenizer, int8), `pigpt.kernels` (the fused sampling op),
`pigpt.decoding` (the one decode loop: sampling, streaming, beam search, scoring), `pigpt.policy` (rewards,
rollouts in the RL sense, GRPO), `pigpt.training` (the training runs behind `pigpt-train`), `pigpt.viz`.
"""

from importlib import import_module

__version__ = "0.2.0"

# Loaded on first use (PEP 562), so that `pigpt-sample --help` and `import pigpt` don't pay for torch.
_PUBLIC = {
    "GPT": "pigpt.model",
    "GPTConfig": "pigpt.model",
    "get_tokenizer": "pigpt.model",
    "SamplingParams": "pigpt.decoding",
    "generate": "pigpt.decoding",
    "stream": "pigpt.decoding",
    "beam_search": "pigpt.decoding",
    "score": "pigpt.decoding",
    "Rollout": "pigpt.decoding",
}

__all__ = [*_PUBLIC, "__version__"]


def __getattr__(name):
    if name in _PUBLIC:
        value = getattr(import_module(_PUBLIC[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'pigpt' has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(_PUBLIC))
