"""train.py's samples are decoding.generate's rollouts: the same text as sample.py prints for the same checkpoint,
prompt, settings and seed (rollout i uses seed + i), unconditional ones after "<|endoftext|>", and the prompt
goes through the model's text form."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

from pigpt import train
from pigpt.decoding import SamplingParams, generate  # noqa: E402
from pigpt.model import GPT, get_tokenizer  # noqa: E402
from pigpt.model.textform import TextForm  # noqa: E402
from pigpt.training import lm  # noqa: E402

CODE = '''def area(width, height):
    """Return the area of a rectangle."""
    if width < 0 or height < 0:
        raise ValueError("negative size")
    return width * height
'''


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    root = tmp_path_factory.mktemp("code")
    for i in range(12):
        (root / f"m{i}.py").write_text(CODE.replace("area", f"area{i}") * 8)
    return root, tmp_path_factory.mktemp("cache")


def run_tiny(corpus, out, *extra):
    data, cache = corpus
    argv = ["--preset", "tiny", "--data", str(data), "--cache-dir", str(cache), "--out", str(out), "--num-threads",
            "1", "--dtype", "float32", "--max-steps", "6", *map(str, extra)]
    return train.main(argv)


def rollouts_text(gpt, prompt_ids, **params):
    enc = get_tokenizer()
    out = generate(gpt, [prompt_ids], SamplingParams(**params))[0]
    return [enc.decode(r.tokens[:-1] if r.tokens[-1:] == [enc.eot_token] else r.tokens) for r in out]


def test_samples_are_generate_rollouts_and_match_sample_py(corpus, tmp_path, capsys):
    out = tmp_path / "run"
    prompt = "def area(width"
    settings = dict(n=3, temperature=1.3, top_k=40, top_p=0.95, max_new_tokens=12, seed=5)
    summary = run_tiny(corpus, out, "--samples", 3, "--sample-tokens", 12, "--temperature", 1.3, "--top-k", 40,
                       "--top-p", 0.95, "--seed", 5, "--prompt", prompt)
    printed = capsys.readouterr().out
    gpt = GPT.from_pretrained(out)
    enc = get_tokenizer()
    expected = rollouts_text(gpt, enc.encode(prompt), **settings)
    assert summary["samples"] == expected
    assert len(set(expected)) > 1  # three seeds, three different rollouts: the test can tell them apart
    for i, text in enumerate(expected):
        assert f"--- sample {i + 1} (seed {5 + i}) " in printed and f"\n{prompt}{text}\n" in printed
    # sample.py, the same checkpoint, prompt, settings and seed: the same completions.
    res = subprocess.run([sys.executable, str(ROOT / "sample.py"), "--model", str(out), prompt, "-n", "3",
                          "--seed", "5", "--temperature", "1.3", "--top-k", "40", "--top-p", "0.95",
                          "--max-new-tokens", "12", "--json"], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-2000:]
    records = [json.loads(line) for line in res.stdout.splitlines() if line.startswith("{")]
    assert [r["text"] for r in records] == expected and [r["seed"] for r in records] == [5, 6, 7]
    # Unconditional samples follow "<|endoftext|>", which sample.py takes as a prompt too.
    cfg = lm.TrainConfig(**{**saved_config(out), "prompt": None})
    uncond = lm.draw_samples(gpt, cfg)
    assert uncond == rollouts_text(gpt, [enc.eot_token], **settings)
    res = subprocess.run([sys.executable, str(ROOT / "sample.py"), "--model", str(out), "<|endoftext|>", "-n", "3",
                          "--seed", "5", "--temperature", "1.3", "--top-k", "40", "--top-p", "0.95",
                          "--max-new-tokens", "12", "--json"], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-2000:]
    assert [json.loads(line)["text"] for line in res.stdout.splitlines() if line.startswith("{")] == uncond


def saved_config(out):
    import torch

    return torch.load(Path(out) / "train_state.pt", weights_only=True)["config"]


def test_samples_use_the_text_form(corpus, tmp_path):
    """With --tabs the prompt is rewritten into tabs before encoding, and the completions come back with spaces."""
    out = tmp_path / "tabs"
    prompt = "def area(width, height):\n    if width"
    summary = run_tiny(corpus, out, "--tabs", "--samples", 2, "--sample-tokens", 10, "--temperature", 1.0,
                       "--seed", 3, "--prompt", prompt)
    gpt = GPT.from_pretrained(out)
    assert gpt.text_form == "tabs"
    form = TextForm("tabs")
    ids = get_tokenizer().encode(form.to_model(prompt))
    assert ids != get_tokenizer().encode(prompt)  # the form changes what the model reads
    raw = rollouts_text(gpt, ids, n=2, temperature=1.0, top_k=50, max_new_tokens=10, seed=3)
    assert summary["samples"] == [form.from_model(t) for t in raw]
