"""The default corpus's English part: WordNet's database lines turned into sentences and questions by rule
(pigpt/training/wordnet.py), and the stdlib's functions as answers to requests for code (corpus.py). The
WordNet here is a small fake database in WordNet 3.0's file format, written by the test: CI installs no
WordNet, and the rules must hold on lines as the real files carry them."""

import ast
from pathlib import Path

import pytest

from pigpt import train
from pigpt.training import corpus, lm, wordnet
from pigpt.training import data as datalib
from pigpt.training.run import TrainError

LICENCE = "  1 This software and database is being provided to you, the LICENSEE, by  \n"
# offset lex_filenum ss_type w_cnt (word lex_id)... p_cnt (symbol offset pos source/target)... | gloss
NOUNS = [
    "00000100 03 n 01 entity 0 001 ~ 00000200 n 0000 | that which is perceived or known or inferred to have its "
    "own distinct existence  ",
    "00000200 17 n 02 body_of_water 0 water 0 002 @ 00000100 n 0000 ~ 00000300 n 0000 | the part of the earth's "
    "surface covered with water  ",
    "00000300 17 n 01 ocean 0 004 @ 00000200 n 0000 ~i 00000400 n 0000 ~i 00000500 n 0000 ~i 00000600 n 0000 | "
    'a large body of water constituting a principal part of the hydrosphere; "the ocean is deep"  ',
    "00000400 17 n 02 Pacific 0 Pacific_Ocean 0 001 @i 00000300 n 0000 | the largest ocean in the world  ",
    "00000500 17 n 02 Atlantic 0 Atlantic_Ocean 0 001 @i 00000300 n 0000 | the 2nd largest ocean; separates "
    "North and South America from Europe and Africa  ",
    "00000600 17 n 01 Indian_Ocean 0 001 @i 00000300 n 0000 | the 3rd largest ocean  ",
    "00000700 06 n 01 forest 0 000 | the trees and other plants in a large densely wooded area  ",
    "00000800 06 n 01 zebrawood 0 000 | hard striped wood of a zebrawood tree  ",  # rare: not tagged
]
VERBS = ["00000900 38 v 01 run 0 000 00 | move fast by using one's feet; \"Don't run--you'll be out of breath\"  "]
ADJS = ["00001000 00 a 01 large 0 000 | above average in size or number or quantity  ",
        "00001100 00 s 01 galore(ip) 0 000 | in great numbers; \"there were snakes galore in the woods\"  "]
ADVS = ["00001200 02 r 01 quickly 0 000 | with rapid movements; \"he works quickly\"  "]
# lemma pos synset_cnt p_cnt [ptr_symbol...] sense_cnt tagsense_cnt synset_offset...
INDEX = {
    "index.noun": ["body_of_water n 1 2 @ ~ 1 1 00000200", "entity n 1 1 ~ 1 1 00000100",
                   "forest n 1 0 1 1 00000700", "ocean n 1 3 @ ~i #p 1 1 00000300",
                   "pacific n 1 1 @i 1 0 00000400", "zebrawood n 1 0 1 0 00000800"],
    "index.verb": ["run v 1 0 1 1 00000900"],
    "index.adj": ["galore a 1 0 1 1 00001100", "large a 1 0 1 1 00001000"],
    "index.adv": ["quickly r 1 0 1 1 00001200"],
}


@pytest.fixture
def fake_wordnet(tmp_path):
    for name, lines in (("data.noun", NOUNS), ("data.verb", VERBS), ("data.adj", ADJS), ("data.adv", ADVS)):
        (tmp_path / name).write_text(LICENCE + "".join(line + "\n" for line in lines))
    for name, lines in INDEX.items():
        (tmp_path / name).write_text(LICENCE + "".join(line + "  \n" for line in lines))
    return tmp_path


def docs_of(directory, pos, offset):
    synsets = wordnet.read_synsets(directory)
    return wordnet.documents(synsets[(pos, offset)], synsets)


def test_a_data_line_parses_into_words_pointers_definition_and_examples():
    assert wordnet.parse_line(LICENCE.rstrip("\n")) is None
    s = wordnet.parse_line(NOUNS[2])
    assert (s.pos, s.offset, s.words) == ("n", 300, ["ocean"])
    assert s.pointers == [("@", "n", 200), ("~i", "n", 400), ("~i", "n", 500), ("~i", "n", 600)]
    assert s.definition == "a large body of water constituting a principal part of the hydrosphere"
    assert s.examples == ["the ocean is deep"]
    galore = wordnet.parse_line(ADJS[1])
    assert (galore.pos, galore.words) == ("a", ["galore"])  # a satellite is an adjective; "(ip)" is no part of it


def test_glosses_become_sentences_by_part_of_speech(fake_wordnet):
    assert docs_of(fake_wordnet, "n", 400)[0] == "The Pacific Ocean is the largest ocean in the world."
    assert docs_of(fake_wordnet, "n", 300)[:2] == [
        "An ocean is a large body of water constituting a principal part of the hydrosphere.", "The ocean is deep."]
    assert docs_of(fake_wordnet, "n", 200)[0] == "Body of water is the part of the earth's surface covered with water."
    assert docs_of(fake_wordnet, "v", 900) == ["To run is to move fast by using one's feet.",
                                               "Don't run--you'll be out of breath."]
    assert docs_of(fake_wordnet, "a", 1000) == ["Large means above average in size or number or quantity."]
    assert docs_of(fake_wordnet, "r", 1200) == ["Quickly means with rapid movements.", "He works quickly."]


def test_every_kind_and_instance_gets_a_question(fake_wordnet):
    assert "Which is an ocean? The Pacific Ocean." in docs_of(fake_wordnet, "n", 400)
    assert "Which is an ocean? The Indian Ocean." in docs_of(fake_wordnet, "n", 600)
    assert "Which is a body of water? An ocean." in docs_of(fake_wordnet, "n", 300)


def test_superlative_glosses_become_questions_with_and_without_the_world(fake_wordnet):
    pacific = docs_of(fake_wordnet, "n", 400)
    answer = "The Pacific Ocean is the largest ocean in the world."
    assert f"Which is the largest ocean? {answer}" in pacific
    assert f"Which is the largest ocean in the world? {answer}" in pacific
    assert any(d.startswith("Which is the 2nd largest ocean? The Atlantic Ocean is") for d in
               docs_of(fake_wordnet, "n", 500))
    assert not any(d.startswith("Which is the trees") for d in docs_of(fake_wordnet, "n", 700))
    assert wordnet.superlative("the most populous city of Japan; capital") == "the most populous city of Japan"
    for gloss in ("the forest of the north", "the west coast", "the interest rate", "the test of a theory",
                  "a largest thing", "the 2nd"):
        assert wordnet.superlative(gloss) is None, gloss


def test_the_corpus_takes_words_in_common_use_and_every_named_thing(fake_wordnet):
    synsets = wordnet.read_synsets(fake_wordnet)
    keys = {(s.pos, s.offset) for s in wordnet.selected(synsets, wordnet.tagged(fake_wordnet))}
    assert ("n", 400) in keys and ("n", 500) in keys  # instances, though the Pacific's sense is not tagged
    assert ("n", 300) in keys and ("v", 900) in keys and ("a", 1100) in keys
    assert ("n", 800) not in keys  # zebrawood: rare, not an instance
    units = wordnet.wordnet_units(fake_wordnet)
    assert len(units) == 3 * len(keys) and len({u.key for u in units}) == len(keys)  # stage 2: all, 3 times
    # stage 3: each kind of document as many times as asked, a question more often than a sentence
    units = wordnet.wordnet_units(fake_wordnet, (2, 6, 24))
    assert len({u.key for u in units}) == len(keys)
    pacific = [d for u in units if u.key == "wordnet/n/00000400" for d in u.load()[0]]
    sentences, kinds, superlatives = wordnet.documents_by_kind(synsets[("n", 400)], synsets)
    assert superlatives and kinds and sentences
    assert wordnet.documents(synsets[("n", 400)], synsets) == sentences + kinds + superlatives
    for docs, copies in zip((sentences, kinds, superlatives), (2, 6, 24)):
        assert all(pacific.count(d) == copies for d in docs)


def test_the_default_corpus_has_wordnet_when_it_is_installed(fake_wordnet, tmp_path, monkeypatch):
    monkeypatch.setenv("WNSEARCHDIR", str(fake_wordnet))
    source = datalib.find_source(None)
    assert source.recipe.endswith(f"+wordnet-v{wordnet.VERSION}x3")  # as the shipped stage 2 was made
    assert datalib.find_source(None, True, (2, 6, 24)).recipe.endswith(f"+wordnet-v{wordnet.VERSION}x2-6-24")
    assert fake_wordnet / "data.noun" in source.files  # a changed database is a new token cache
    assert any(u.key == "wordnet/n/00000400" for u in source.units)
    assert "wordnet" not in datalib.find_source(None, False).recipe  # --preset stdlib, --no-wordnet
    monkeypatch.setenv("WNSEARCHDIR", str(tmp_path / "nowhere"))
    assert "wordnet" not in datalib.find_source(None).recipe and wordnet.find_dir() is None


def test_without_wordnet_a_default_run_says_in_one_line_how_to_install_it(tmp_path, monkeypatch, capsys):
    """The standard library cut to two modules, so that the run takes seconds."""
    monkeypatch.setenv("WNSEARCHDIR", str(tmp_path / "nowhere"))
    files = [corpus.stdlib_root() / name for name in ("bisect.py", "heapq.py")]
    monkeypatch.setattr(corpus, "stdlib_files", lambda: files)
    monkeypatch.setattr(corpus, "stdlib_units", lambda code_repeats=1: [
        corpus.Unit(p.name, p.stat().st_size, lambda p=p: (corpus.module_documents(p), "ok")) for p in files])
    train.main(["--preset", "tiny", "--cache-dir", str(tmp_path / "cache"), "--out", str(tmp_path / "out"),
                "--num-threads", "1", "--dtype", "float32", "--max-steps", "2", "--samples", "0"])
    notes = [line for line in capsys.readouterr().out.splitlines() if "WordNet" in line]
    assert len(notes) == 1 and "apt-get install wordnet-base" in notes[0], notes


def test_the_default_recipe_continues_its_first_stage(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    cfg = lm.resolve_config(train.build_parser().parse_args([]), None, tmp_path)
    # the preset's lr, not fine-tuning's 1e-4; the questions read more often than the sentences
    assert (cfg.init, cfg.lr, cfg.wordnet, cfg.wordnet_repeats) == (lm.STAGE2, 1e-3, True, "1,4,256")
    own = lm.resolve_config(train.build_parser().parse_args(["--data", "notes.txt"]), None, tmp_path)
    assert own.init == "scratch"  # the stages are models of the default corpus, not of the user's text
    stage1 = lm.resolve_config(train.build_parser().parse_args(["--preset", "stdlib"]), None, tmp_path)
    assert (stage1.init, stage1.wordnet, stage1.max_steps) == ("scratch", False, 1600)
    stage2 = lm.resolve_config(train.build_parser().parse_args(["--preset", "wordnet"]), None, tmp_path)
    assert (stage2.init, stage2.wordnet_repeats, stage2.max_steps) == (lm.STAGE1, "3,3,3", 320)
    # each stage fails before it reads any data when the one before is missing, naming the command to run
    with pytest.raises(TrainError, match=r"run `python train.py --preset wordnet --out out-wordnet` first"):
        train.main(["--out", str(tmp_path / "o"), "--num-threads", "1"])
    with pytest.raises(TrainError, match=r"run `python train.py --preset stdlib --out out-stdlib` first"):
        train.main(["--preset", "wordnet", "--out", str(tmp_path / "o2"), "--num-threads", "1"])


@pytest.mark.parametrize("text", ["2,6", "a,b,c", "1,-1,2", "0,0,0", ""])
def test_wordnet_repeats_must_be_three_counts(tmp_path, text):
    with pytest.raises(TrainError, match=r"--wordnet-repeats must be three counts S,K,Q"):
        train.main(["--wordnet-repeats", text, "--out", str(tmp_path / "o"), "--num-threads", "1"])


@pytest.mark.parametrize("verb, expected", [("Return", "returns"), ("Returns", "returns"), ("Fetch", "fetches"),
                                            ("Copy", "copies"), ("Say", "says"), ("Pass", "passes")])
def test_a_docstring_verb_in_the_third_person(verb, expected):
    assert corpus.third_person(verb) == expected


def test_a_function_with_a_docstring_answers_a_request_for_code():
    code = 'def add(a, b):\n    """Return the sum of a and b."""\n    return a + b\n'
    answer = corpus.code_answer(code)
    question, _, rest = answer.partition(" Here is a function that ")
    assert question in corpus.CODE_QUESTIONS
    assert rest == "returns the sum of a and b:\n\n" + code
    ast.parse(rest.split("\n\n", 1)[1])
    assert corpus.code_answer("def f():\n    return 1\n") is None  # no docstring: no description to give
    assert corpus.code_answer('def f():\n    """42"""\n') is None


def test_code_repeats_add_copies_of_the_code_answers_alone_under_the_modules_key(monkeypatch):
    """--code-repeats N: each module's code answers N times an epoch, the extra copies keyed as the module, so a
    split takes all of them or none; the corpus recipe (the token cache's key) names the count."""
    from pigpt.training import data

    files = [corpus.stdlib_root() / name for name in ("shutil.py", "bisect.py")]
    monkeypatch.setattr(corpus, "stdlib_files", lambda: files)
    one, three = corpus.stdlib_units(), corpus.stdlib_units(code_repeats=3)
    extra = three[2:6]  # after the modules, before the help topics
    assert [u.key for u in three[:2]] == [u.key for u in one[:2]] and [u.key for u in three[6:]] == [u.key for u in one[2:]]
    assert sorted(u.key for u in extra) == sorted(["shutil.py", "bisect.py"] * 2)
    docs, status = next(u for u in extra if u.key == "shutil.py").load()
    assert status == "ok" and docs and all(d.startswith(corpus.CODE_QUESTIONS) for d in docs)
    assert docs == [d for d in corpus.module_documents(files[0]) if d.startswith(corpus.CODE_QUESTIONS)]
    assert data.find_source(None, False, code_repeats=3).recipe.endswith("-code3")
    assert "-code" not in data.find_source(None, False).recipe


def test_stdlib_modules_give_their_functions_as_answers_too():
    docs = corpus.module_documents(corpus.stdlib_root() / "shutil.py")
    answers = [d for d in docs if d.startswith(corpus.CODE_QUESTIONS)]
    assert answers and all(" Here is a function that " in d for d in answers)
    for d in answers:  # the function after the answer is one of the module's code documents, whole
        assert d.split(":\n\n", 1)[1] in docs
