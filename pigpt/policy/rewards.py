"""Reward functions: built-ins, loading them from a spec string, and combining several with weights.

A reward function has TRL's signature, f(prompts: list[str], completions: list[str], **kwargs) ->
list[float | None], and is called with keyword arguments as TRL calls it, so a function written for TRL's
GRPOTrainer (often `def f(completions, **kwargs)`) works here unchanged and ours work there. None means "not
applicable to this completion"; as in TRL it becomes NaN and is left out of sums and means.

Specs accepted by load_reward:
    python_compiles          1.0 if prompt + completion compiles as Python (compile() only, nothing runs)
    contains:WORD            1.0 if WORD occurs in the completion
    regex:PATTERN            1.0 if re.search finds PATTERN in the completion
    path/to/file.py:NAME     the function NAME defined in that file
    module:NAME              the function NAME of an importable module (dotted names allowed on both sides)
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import math
import numbers
import re
import sys
import warnings
from pathlib import Path

import torch

from pigpt.policy.errors import PolicyError

SPEC_FORMS = "python_compiles, contains:WORD, regex:PATTERN, path/to/file.py:function or module:function"


class Reward:
    """A reward function under a readable name (its spec), for logs and error messages. Calling it calls the
    function with keyword arguments, exactly as TRL does; `__name__` is the name, which is what TRL logs."""

    def __init__(self, fn, name: str):
        self.fn, self.name, self.__name__ = fn, name, name

    def __call__(self, prompts, completions, **kwargs):
        return self.fn(prompts=prompts, completions=completions, **kwargs)

    def __repr__(self) -> str:
        return f"Reward({self.name!r})"


# -- built-ins --------------------------------------------------------------------------------------------------

def compiles(source: str) -> bool:
    """Whether source compiles as a Python module. compile() goes one step past ast.parse (it also rejects
    e.g. `return` outside a function) and, like it, never runs the code."""
    with warnings.catch_warnings():  # SyntaxWarnings (`x is 1`, bad escapes) would spam the log per rollout
        warnings.simplefilter("ignore")
        try:
            compile(source, "<completion>", "exec", dont_inherit=True)
        except (SyntaxError, ValueError, RecursionError, OverflowError, MemoryError):
            return False  # ValueError: NUL bytes; RecursionError / MemoryError: absurdly deep nesting
    return True


def python_compiles(prompts, completions, **kwargs) -> list[float]:
    return [1.0 if compiles(p + c) else 0.0 for p, c in zip(prompts, completions, strict=True)]


def contains(word: str):
    def reward(prompts, completions, **kwargs) -> list[float]:
        return [1.0 if word in c else 0.0 for c in completions]
    return reward


def regex(pattern: re.Pattern):
    def reward(prompts, completions, **kwargs) -> list[float]:
        return [1.0 if pattern.search(c) else 0.0 for c in completions]
    return reward


# -- loading ----------------------------------------------------------------------------------------------------

def load_reward(spec) -> Reward:
    """The reward function a spec names (see the module docstring); a callable is wrapped under its name."""
    if isinstance(spec, Reward):
        return spec
    if callable(spec):
        return Reward(spec, getattr(spec, "__name__", type(spec).__name__))
    if not isinstance(spec, str) or not spec.strip():
        raise PolicyError(f"a reward spec must be a non-empty string ({SPEC_FORMS}), got {spec!r}")
    if spec == "python_compiles":
        return Reward(python_compiles, spec)
    if spec.startswith("contains:"):
        word = spec[len("contains:"):]
        if not word:
            raise PolicyError("reward 'contains:' has no word: write contains:WORD, e.g. contains:return")
        return Reward(contains(word), spec)
    if spec.startswith("regex:"):
        pattern = spec[len("regex:"):]
        if not pattern:
            raise PolicyError(r"reward 'regex:' has no pattern: write regex:PATTERN, e.g. regex:def \w+\(")
        try:
            compiled = re.compile(pattern)
        except re.error as e:
            raise PolicyError(f"reward {spec!r}: {pattern!r} is not a valid regular expression ({e})") from None
        return Reward(regex(compiled), spec)
    target, _, name = spec.rpartition(":")
    if target and _is_dotted_name(name):
        if target.endswith(".py"):
            return Reward(_attribute(_load_file(target, spec), name, spec), spec)
        if _is_dotted_name(target):
            return Reward(_attribute(_import(target, spec), name, spec), spec)
    raise PolicyError(f"unknown reward {spec!r}: use {SPEC_FORMS}")


def _is_dotted_name(s: str) -> bool:
    return bool(s) and all(part.isidentifier() for part in s.split("."))


def _load_file(path: str, spec: str):
    file = Path(path).expanduser()
    if not file.is_file():
        raise PolicyError(f"reward {spec!r}: no file {str(file)!r}; give the path of a .py file")
    # a name unique to the file, so two reward files that are both called rewards.py don't collide
    digest = hashlib.sha1(str(file.resolve()).encode()).hexdigest()[:8]
    module_name = f"pigpt_reward_{file.stem}_{digest}"
    module_spec = importlib.util.spec_from_file_location(module_name, file)
    module = importlib.util.module_from_spec(module_spec)
    sys.modules[module_name] = module  # dataclasses and pickle look modules up here
    try:
        module_spec.loader.exec_module(module)
    except Exception as e:
        del sys.modules[module_name]
        raise PolicyError(f"reward {spec!r}: loading {str(file)!r} raised {type(e).__name__}: "
                          f"{_first_line(e)}") from e
    return module


def _import(module_name: str, spec: str):
    try:
        return importlib.import_module(module_name)
    except ModuleNotFoundError as e:
        raise PolicyError(f"reward {spec!r}: no module named {e.name!r}; install it, add its directory to "
                          f"PYTHONPATH, or give a file as path/to/file.py:function") from e
    except Exception as e:
        raise PolicyError(f"reward {spec!r}: importing {module_name!r} raised {type(e).__name__}: "
                          f"{_first_line(e)}") from e


def _attribute(module, dotted: str, spec: str):
    obj = module
    for part in dotted.split("."):
        if not hasattr(obj, part):
            defined = sorted(n for n, v in vars(module).items() if callable(v) and not n.startswith("_"))
            raise PolicyError(f"reward {spec!r}: {module.__name__} has no {dotted!r} "
                              f"(its functions: {', '.join(defined) or 'none'})")
        obj = getattr(obj, part)
    if not callable(obj):
        raise PolicyError(f"reward {spec!r}: {dotted!r} is a {type(obj).__name__}, not a function")
    return obj


# -- combining --------------------------------------------------------------------------------------------------

class CombinedReward:
    """Several reward functions and their weights. Calling it scores N completions with each and returns
    (per_func, total): per_func (N, F) float32, NaN where a function returned None; total (N,) the weighted
    sum over the functions that applied, as TRL sums them, and NaN for a completion none applied to (TRL
    leaves it out of its group's baseline and gives it advantage 0: group_advantages does the same)."""

    def __init__(self, rewards, weights=None):
        self.rewards = [load_reward(r) for r in rewards]
        if not self.rewards:
            raise PolicyError("no reward functions given: pass at least one spec or function")
        self.names = [r.name for r in self.rewards]
        self.weights = _check_weights(weights, self.names)  # (F,)

    def __call__(self, prompts, completions, **kwargs) -> tuple[torch.Tensor, torch.Tensor]:
        if len(prompts) != len(completions):
            raise PolicyError(f"{len(prompts)} prompts for {len(completions)} completions: pass one prompt per "
                              f"completion (repeat each prompt G times, prompt-major)")
        per_func = torch.stack([evaluate(r, prompts, completions, **kwargs) for r in self.rewards], dim=1)
        return per_func, weighted_total(per_func, self.weights)

    def __repr__(self) -> str:
        return f"CombinedReward({self.names}, weights={self.weights.tolist()})"


def combine_rewards(rewards, weights=None) -> CombinedReward:
    """Combine reward specs or functions, each weighted (default 1.0): see CombinedReward."""
    return CombinedReward(rewards, weights)


def weighted_total(per_func: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """(N,) sum of per_func (N, F) * weights (F,) over the non-NaN entries; NaN where every entry is NaN."""
    total = (per_func * weights.unsqueeze(0)).nansum(dim=1)  # (N,)
    total[torch.isnan(per_func).all(dim=1)] = torch.nan  # nansum would call "nothing applied" a reward of 0
    return total


def evaluate(reward: Reward, prompts, completions, **kwargs) -> torch.Tensor:
    """reward's values for the completions, float32 (N,) with None as NaN; PolicyError naming the reward if
    it raises or returns anything but one number or None per completion."""
    try:
        out = reward(prompts, completions, **kwargs)
    except Exception as e:  # one line here; the whole story stays in __cause__
        raise PolicyError(f"reward {reward.name!r} raised {type(e).__name__}: {_first_line(e)}") from e
    if hasattr(out, "tolist"):  # a tensor or numpy array
        out = out.tolist()
    if not isinstance(out, (list, tuple)):
        raise PolicyError(f"reward {reward.name!r} returned a {type(out).__name__}; it must return a list with "
                          f"one reward per completion")
    if len(out) != len(completions):
        raise PolicyError(f"reward {reward.name!r} returned {len(out)} rewards for {len(completions)} "
                          f"completions; it must return exactly one per completion")
    values = []
    for i, v in enumerate(out):
        if torch.is_tensor(v) and v.numel() == 1:
            v = v.item()
        if v is None:
            values.append(math.nan)
            continue
        if not isinstance(v, numbers.Real):
            raise PolicyError(f"reward {reward.name!r} returned a {type(v).__name__} ({v!r:.40}) for completion "
                              f"{i}; rewards must be numbers, or None for 'not applicable'")
        if math.isnan(v):
            raise PolicyError(f"reward {reward.name!r} returned NaN for completion {i}; return None when a "
                              f"reward does not apply")
        if math.isinf(v):
            raise PolicyError(f"reward {reward.name!r} returned {v} for completion {i}; rewards must be finite")
        values.append(float(v))
    return torch.tensor(values, dtype=torch.float32)  # (N,)


def _first_line(e: Exception) -> str:
    return (str(e).strip().splitlines() or [""])[0]


def _check_weights(weights, names) -> torch.Tensor:
    if weights is None:
        return torch.ones(len(names))
    weights = list(weights)
    if len(weights) != len(names):
        raise PolicyError(f"{len(weights)} weights for {len(names)} reward functions ({', '.join(names)}): "
                          f"give one weight per function")
    for w, name in zip(weights, names):
        if not isinstance(w, numbers.Real) or not math.isfinite(w):
            raise PolicyError(f"the weight of reward {name!r} must be a finite number, got {w!r}")
    return torch.tensor([float(w) for w in weights], dtype=torch.float32)
