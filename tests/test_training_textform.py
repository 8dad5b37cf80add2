"""The text form (model/textform.py): round trips, recorded in config.json by every save and read back by
GPT.from_pretrained (transformers still loads the directory), applied to the training corpus; half-precision
saves; the default corpus's documents (training/corpus.py)."""

import ast
import json
import sysconfig
from pathlib import Path

import pytest
import torch

from pigpt.model import GPT, GPTConfig, get_tokenizer
from pigpt.model.checkpoint import save_pretrained
from pigpt.model.textform import CONFIG_KEY, TextForm, for_model
from pigpt.training import corpus
from pigpt.training import data as datalib

STDLIB = Path(sysconfig.get_paths()["stdlib"])


def test_text_forms_round_trip():
    tabs, plain = TextForm("tabs"), TextForm("plain")
    assert tabs.to_model("        x = 1\n      y\n  z\n") == "\t\tx = 1\n\t  y\n  z\n"  # whole groups of 4 only
    assert tabs.from_model("\t\tx = 1\n\t  y\na\tb\n") == "        x = 1\n      y\na\tb\n"  # inner tabs stay
    src = (STDLIB / "textwrap.py").read_text()
    for text in (src, "", "no indent\n", "    one\n\n        two  spaced   out\n", "ünï\n    cödé 🙂\n"):
        assert tabs.from_model(tabs.to_model(text)) == text
        assert plain.to_model(text) == plain.from_model(text) == text
    tabbed = tabs.to_model(src)
    compile(tabbed, "textwrap.py", "exec")  # still Python
    enc = get_tokenizer()
    assert len(enc.encode_ordinary(tabbed)) < 0.85 * len(enc.encode_ordinary(src))  # why the form exists
    with pytest.raises(ValueError, match="unknown text form"):
        TextForm("spaces")


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
def test_saved_form_and_half_precision_load_in_pigpt_and_transformers(tmp_path, dtype, tiny_checkpoint):
    from transformers import GPT2LMHeadModel

    torch.manual_seed(0)
    gpt = GPT(GPTConfig(block_size=32, n_layer=2, n_head=2, n_embd=64)).eval()
    gpt.text_form = "tabs"
    save_pretrained(gpt, tmp_path, dtype=dtype)
    config = json.loads((tmp_path / "config.json").read_text())
    assert config[CONFIG_KEY] == "tabs" and config["torch_dtype"] == dtype
    loaded = GPT.from_pretrained(tmp_path)
    assert loaded.dtype == torch.float32 and loaded.text_form == "tabs"
    assert for_model(loaded) == for_model(tmp_path) == for_model(str(tmp_path)) == TextForm("tabs")
    rounded = {k: v.to(getattr(torch, dtype)).float() for k, v in gpt.state_dict().items()}
    assert all(torch.equal(v, rounded[k]) for k, v in loaded.state_dict().items())
    hf = GPT2LMHeadModel.from_pretrained(tmp_path, dtype=torch.float32).eval()
    idx = torch.randint(0, 50257, (2, 16), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        assert (loaded(idx) - hf(idx).logits).abs().max().item() < 1e-4
    # transformers keeps the key when it saves the model again; a checkpoint that records none is plain.
    hf.save_pretrained(tmp_path / "hf")
    assert for_model(tmp_path / "hf").name == "tabs"
    path, _ = tiny_checkpoint
    assert CONFIG_KEY not in json.loads((path / "config.json").read_text())
    assert GPT.from_pretrained(path).text_form == "plain" and for_model(path).name == "plain"


def test_training_text_is_in_the_recorded_form(tmp_path):
    """The token cache of a "tabs" corpus is the tokens of to_model(text): what sample.py's prompts get too."""
    data = tmp_path / "code"
    data.mkdir()
    for name in ("textwrap.py", "bisect.py", "heapq.py"):
        (data / name).write_text((STDLIB / name).read_text())
    c = datalib.load(datalib.prepare(str(data), 0.34, tmp_path / "cache", progress=False, text_form="tabs"))
    train_units, _ = datalib.split_units(datalib.find_source(str(data)).units, 0.34)
    enc, form = get_tokenizer(), TextForm("tabs")
    expected = []
    for u in train_units:
        expected += enc.encode_ordinary(form.to_model((data / u.key).read_text())) + [enc.eot_token]
    assert c.train.read(0, len(c.train)).tolist() == expected and c.meta["text_form"] == "tabs"
    assert 197 in expected  # the tab token: the form was applied


def test_default_corpus_documents():
    """A module becomes its prose (docstrings, comment paragraphs) and its short functions, each of which parses."""
    docs = corpus.module_documents(STDLIB / "textwrap.py")
    code = [d for d in docs if d.startswith(("def ", "async def ", "@"))]
    answers = [d for d in docs if d.startswith(corpus.CODE_QUESTIONS)]  # tests/test_training_wordnet.py
    prose = [d for d in docs if d not in code and d not in answers]
    assert code and answers and len(prose) == 2  # docstrings, comments
    assert "Wrap a single paragraph of text" in prose[0]  # textwrap.wrap's docstring
    for d in code:
        ast.parse(d)  # a whole function, dedented, still valid with its indentation rounded up to fours
        assert len(d.splitlines()) <= corpus.CODE_MAX_LINES
        assert all((len(line) - len(line.lstrip(" "))) % 4 == 0 for line in d.splitlines())
    assert corpus.collapse_spaces("   x ::= a    b\n\ty\n") == "    x ::= a b\n\ty\n"
    assert all("  " not in line.strip() for line in prose[1].splitlines())  # inner runs of spaces collapsed
    units = corpus.stdlib_units()
    keys = {u.key for u in units}
    assert "textwrap.py" in keys and "pydoc_data/topics/if" in keys and not any(k.startswith("test/") for k in keys)
    topic, status = next(u for u in units if u.key == "pydoc_data/topics/if").load()
    assert status == "ok" and 'The "if" statement' in topic[0]


def test_default_corpus_whitespace_shapes():
    """Continuation lines hang one level past their statement (the same program), prose has no blank lines
    (one newline between paragraphs), and indented blocks of prose start at column 0: the shapes whose
    runs of tabs and newlines the first default model learned to fall into."""
    code = "def f(a,\n                b):\n    return g(a,\n                     b)\n"
    hung = corpus.hang_continuations(code)
    assert hung == "def f(a,\n    b):\n    return g(a,\n        b)\n"
    assert ast.dump(ast.parse(hung)) == ast.dump(ast.parse(code))
    text = 'x = """\n                keep\n"""\n'  # a line inside a string is not indentation
    assert corpus.hang_continuations(text) == text
    prose = corpus.prose("First paragraph\nwrapped.\n\n\n    an indented\n      example\n\nLast.")
    assert prose == "First paragraph wrapped.\nan indented\n    example\nLast."  # indents round up to fours
    for path in (STDLIB / "textwrap.py", STDLIB / "argparse.py"):
        for d in corpus.module_documents(path):
            # a blank line only in code, and between an answer to a request for code and its function
            assert "\n\n" not in d or d.startswith(("def ", "async def ", "@", *corpus.CODE_QUESTIONS))
            if d.startswith(("def ", "async def ", "@")):
                ast.parse(d)
