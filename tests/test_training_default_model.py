"""The shipped default model (pigpt/model/default/): it loads in pigpt and in transformers with the same logits, records
its text form, is packaged, and its rollouts are text rather than runs of whitespace."""

import fnmatch
import json
import sys
from pathlib import Path

import pytest
import torch

from pigpt.model import DEFAULT_MODEL, GPT, get_tokenizer
from pigpt.model.textform import CONFIG_KEY, for_model
from pigpt.training import quality

ROOT = Path(__file__).resolve().parents[1]
DEFAULT = DEFAULT_MODEL


def test_shipped_model_loads_in_pigpt_and_transformers():
    from transformers import GPT2LMHeadModel

    config = json.loads((DEFAULT / "config.json").read_text())
    assert config["torch_dtype"] == "float16" and config[CONFIG_KEY] == "tabs"
    assert (DEFAULT / "model.safetensors").stat().st_size <= 40e6
    ours = GPT.from_pretrained(DEFAULT)
    assert ours.dtype == torch.float32 and for_model(ours).name == "tabs" and for_model(DEFAULT).name == "tabs"
    hf = GPT2LMHeadModel.from_pretrained(DEFAULT, dtype=torch.float32).eval()
    enc = get_tokenizer()
    text = 'Return the number of items.\n<|endoftext|>def add(a, b):\n\t"""Add two numbers."""\n\treturn a + b\n'
    idx = torch.tensor([enc.encode(text, allowed_special="all")])
    with torch.no_grad():
        ref = hf(idx).logits
        assert (ours(idx) - ref).abs().max().item() <= 1e-4


def test_package_ships_the_default_model():
    if sys.version_info >= (3, 11):
        import tomllib
    else:  # pragma: no cover
        import tomli as tomllib
    patterns = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]["pigpt.model"]
    for name in ("config.json", "model.safetensors"):
        assert any(fnmatch.fnmatch(f"default/{name}", p) for p in patterns), (name, patterns)


def test_shipped_model_rollouts_are_mostly_text():
    """docs/training.md's figure is over 10 seeds; two here, with the same prompts and settings."""
    gpt = GPT.from_pretrained(DEFAULT)
    share, total = quality.whitespace_share(gpt, seeds=range(2), max_new_tokens=48)
    assert total > 500 and share <= 0.2, share


def test_the_shipped_model_loads_by_name_from_any_folder(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert GPT.from_pretrained("default").config.n_layer == GPT.from_pretrained(DEFAULT).config.n_layer
    (tmp_path / "default").mkdir()  # a folder of the user's by that name wins, as a local directory does over a hub id
    with pytest.raises(Exception, match="no weights found|config.json"):
        GPT.from_pretrained("default")


def test_what_counts_as_naming_an_ocean_and_as_a_line_of_python():
    assert quality.names_ocean("The Pacific Ocean is the largest ocean in the world.") == "Pacific"
    assert quality.names_ocean(" An ocean: the Indian Ocean, then the Pacific") == "Indian"
    assert quality.names_ocean("an Indian tribe of the Arctic circle") is None  # "Indian" alone is no ocean
    assert quality.names_ocean("The largest ocean is a large body of water.") is None
    python = ["def add(a, b):", "return a + b", "x = [i for i in y]", "import os", "for k in d:", "print(s)"]
    english = ["The function returns a value.", "Here is a function that returns (a, b):", "Hello", "else", ""]
    assert all(map(quality.is_python_line, python)) and not any(map(quality.is_python_line, english))


def test_the_shipped_model_answers_a_request_for_code_with_code():
    """docs/training.md's figure: 16 rollouts of "Can you give me some Python code?" at temperature 1, seeds 0-15,
    10 of them hold a line of Python; the test asks for issue 22's target, half, since a rollout or two may fall
    the other way on another CPU's rounding."""
    share, texts = quality.code_share(GPT.from_pretrained(DEFAULT))
    assert share >= 8 / 16, texts


def test_the_shipped_model_answers_the_ocean_question_with_oceans():
    """docs/training.md's figures: 64 rollouts of "Which is the largest ocean?" at temperature 1 name an ocean in
    10 (16%; the Pacific in 3), and after "... ocean? The" " Pacific" is the likeliest token (12.5%), the other
    oceans near. The bound leaves a rollout or two to another CPU's rounding."""
    gpt = GPT.from_pretrained(DEFAULT)
    shares = quality.answer_shares(gpt)
    assert shares["ocean"] >= 7 / 64 and shares["counts"].get("Pacific", 0) >= 1, shares["counts"]
    top = dict(quality.next_token_probs(gpt, quality.OCEAN_QUESTION + " The", k=8))
    assert next(iter(top)) == " Pacific" and {" Atlantic", " Indian"} <= set(top) and sum(top.values()) < 1, top
