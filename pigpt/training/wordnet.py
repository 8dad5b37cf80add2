"""English text and world knowledge from WordNet 3.0, turned into sentences and questions by rule.

WordNet (Princeton; Debian's `wordnet-base` installs it under /usr/share/wordnet) holds ~117,000 synsets:
sets of synonyms, each with a gloss (a definition, often with example sentences) and pointers to other
synsets (hypernym "@": a dog is a canine; instance hypernym "@i": the Pacific is an ocean). Every rule
below applies to all synsets alike; none names a fact:

- a gloss sentence:    "The Pacific Ocean is the largest ocean in the world."   (nouns; verbs: "To run is to
                        move fast by using one's feet."; adjectives and adverbs: "Large means ...")
- its examples:        "He ran to the store."
- kind questions:      "Which is an ocean? The Atlantic Ocean."       (every hyponym and instance of a noun)
- superlatives:        "Which is the largest ocean? The Pacific Ocean is the largest ocean in the world."
                        (every noun gloss that starts "the <superlative> ...": "the 2nd largest", "the most
                        ...", with and without a closing "in the world" / "on earth")

Each synset is a unit of its own (its key "wordnet/<pos>/<offset>" decides train or val), and every sentence
or question is a document of its own, followed by <|endoftext|>, so a question opens a document as it opens
a prompt.

The WordNet 3.0 licence allows using, copying and distributing the database and derived works with its
copyright notice (docs/training.md).
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path

from .corpus import Unit

VERSION = 2  # part of the token cache key: bump when the documents change
SEARCH_DIRS = ("/usr/share/wordnet", "/usr/local/share/wordnet", "/usr/local/WordNet-3.0/dict")
INSTALL_HINT = "apt-get install wordnet-base (or set WNSEARCHDIR to a WordNet 3.0 dict/ directory)"
POS_FILES = {"n": "data.noun", "v": "data.verb", "a": "data.adj", "r": "data.adv"}
INDEX_FILES = {"n": "index.noun", "v": "index.verb", "a": "index.adj", "r": "index.adv"}
# Copies of each kind of document per epoch, (sentences, kind questions, superlative questions): their shares of
# the default corpus (docs/training.md; train.py --wordnet-repeats). Stage 2 of the default recipe reads every
# document three times; stage 3 reads the questions more often than the sentences: a 17M-parameter model that
# reads a fact a few times does not learn it, and the superlative questions ("Which is the largest ocean?
# ...", 207 of them) are the facts a question asks for by name.
REPEATS = (3, 3, 3)
_ADJ_MARKER = re.compile(r"\((?:a|p|ip)\)$")  # "galore(ip)": where an adjective may stand, not part of it
_QUOTED = re.compile(r'"([^"]*)"')
_ORDINAL = r"(?:\d+(?:st|nd|rd|th)|second|third|fourth|fifth)"
# "-est" words that are not superlatives (the rule must not read "the forest of ..." as one)
_NOT_SUPERLATIVE = {"forest", "interest", "harvest", "request", "protest", "contest", "conquest", "honest",
                    "modest", "earnest", "tempest", "manifest", "midwest", "northwest", "southwest", "arrest",
                    "inquest", "bequest", "digest", "behest", "unrest", "priest", "chest", "guest", "quest",
                    "crest", "nest", "rest", "test", "vest", "pest", "west", "zest", "jest", "fest", "almagest"}
_WORLD_SCOPE = re.compile(r" (?:in|on|of) (?:the )?(?:world|earth|Earth|planet)$")


@dataclass
class Synset:
    pos: str  # n, v, a (s: a satellite adjective, read as a), r
    offset: int
    words: list[str]
    pointers: list[tuple[str, str, int]] = field(default_factory=list)  # (symbol, pos, offset)
    definition: str = ""
    examples: list[str] = field(default_factory=list)


def find_dir() -> Path | None:
    """The directory of WordNet's data.* files: $WNSEARCHDIR, else the usual install places; None if absent."""
    candidates = [os.environ["WNSEARCHDIR"]] if os.environ.get("WNSEARCHDIR") else list(SEARCH_DIRS)
    for d in candidates:
        if all((Path(d) / f).is_file() for f in (*POS_FILES.values(), *INDEX_FILES.values())):
            return Path(d)
    return None


def parse_line(line: str) -> Synset | None:
    """One line of a data.* file (format: wndb(5WN)); None for the licence header (lines that start with
    spaces) and blank lines."""
    if not line or line[0] == " " or " | " not in line and "|" not in line:
        return None
    head, _, gloss = line.partition("|")
    f = head.split()
    pos = "a" if f[2] == "s" else f[2]
    n_words = int(f[3], 16)
    words = [_ADJ_MARKER.sub("", w).replace("_", " ") for w in f[4:4 + 2 * n_words:2]]
    i = 4 + 2 * n_words
    n_ptr = int(f[i])
    pointers = [(f[i + 1 + 4 * k], "a" if f[i + 3 + 4 * k] == "s" else f[i + 3 + 4 * k], int(f[i + 2 + 4 * k]))
                for k in range(n_ptr)]
    gloss = gloss.strip()
    examples = [e.strip() for e in _QUOTED.findall(gloss) if len(e.split()) >= 3]
    definition = gloss.split('"')[0].strip().rstrip(";").strip()
    return Synset(pos, int(f[0]), words, pointers, definition, examples)


def read_synsets(directory: Path) -> dict[tuple[str, int], Synset]:
    """Every synset of the four data files, keyed by (pos, offset)."""
    out = {}
    for pos, name in POS_FILES.items():
        with open(Path(directory) / name, encoding="utf-8", errors="replace") as fh:
            for line in fh:
                s = parse_line(line.rstrip("\n"))
                if s is not None:
                    out[(s.pos, s.offset)] = s
    return out


# -- names and sentences --------------------------------------------------------------------------------------
def parents(s: Synset, synsets: dict) -> list[Synset]:
    """The noun's hypernyms and instance hypernyms (the kinds it is one of)."""
    return [synsets[(p, o)] for sym, p, o in s.pointers if sym in ("@", "@i") and (p, o) in synsets]


def head_word(s: Synset) -> str:
    """The last word of a synset's first lemma: "ocean" for {ocean}, "capital" for {national capital}."""
    return s.words[0].split()[-1].lower()


def name(s: Synset, synsets: dict) -> str:
    """The lemma that names a synset best: one that ends in its kind's head word ("Pacific Ocean", not
    "Pacific"), else the first."""
    heads = {head_word(p) for p in parents(s, synsets)}
    for w in s.words:
        if w.split()[-1].lower() in heads and len(w.split()) > 1:
            return w
    return s.words[0]


def article(word: str) -> str:
    return "an" if word[:1].lower() in "aeiou" else "a"


def noun_phrase(s: Synset, synsets: dict, countable: bool = True) -> str:
    """How a sentence names a noun synset: "the Pacific Ocean" (a proper name ending in a common noun),
    "Paris", "an ocean", "water" (not countable: a gloss that does not start with a/an)."""
    n = name(s, synsets)
    if n[:1].isupper():
        last = n.split()[-1]
        kind = {head_word(p) for p in parents(s, synsets)}
        return f"the {n}" if len(n.split()) > 1 and last.lower() in kind else n
    return f"{article(n)} {n}" if countable else n


def capitalise(text: str) -> str:
    return text[:1].upper() + text[1:]


def sentence(text: str) -> str:
    text = capitalise(text.strip())
    return text if text[-1:] in ".!?" else text + "."


def gloss_sentence(s: Synset, synsets: dict) -> str | None:
    """The definition as a sentence about the synset's name, or None for a synset without one."""
    d = s.definition
    if not d or not s.words:
        return None
    if s.pos == "n":
        countable = bool(re.match(r"(?:a|an) ", d))
        return sentence(f"{noun_phrase(s, synsets, countable)} is {d}")
    if s.pos == "v":
        return sentence(f"to {s.words[0]} is to {d}")
    return sentence(f"{s.words[0]} means {d}")


def superlative(definition: str) -> str | None:
    """The "the largest ocean in the world" clause that opens a gloss, or None: its second word is a
    superlative ("-est", most, least, best, worst), or an ordinal and then one ("the 2nd largest")."""
    clause = definition.split(";")[0].strip()
    m = re.match(rf"the (?:{_ORDINAL} )?(\w+) (\w+)", clause)
    if not m:
        return None
    word = m.group(1).lower()
    if word in ("most", "least", "best", "worst") or (
            word.endswith("est") and len(word) >= 6 and word not in _NOT_SUPERLATIVE and word.isalpha()):
        return clause
    return None


def documents(s: Synset, synsets: dict) -> list[str]:
    """Every document a synset gives: its gloss sentence, its examples, its questions."""
    return [d for kind in documents_by_kind(s, synsets) for d in kind]


def documents_by_kind(s: Synset, synsets: dict) -> tuple[list[str], list[str], list[str]]:
    """(sentences: the gloss and the examples, kind questions, superlative questions) of a synset."""
    sentences = []
    gloss = gloss_sentence(s, synsets)
    if gloss:
        sentences.append(gloss)
    sentences += [sentence(e) for e in s.examples]
    if s.pos != "n":
        return sentences, [], []
    subject = capitalise(noun_phrase(s, synsets))
    kinds = [f"Which is {noun_phrase(p, synsets)}? {subject}." for p in parents(s, synsets)]
    sup = superlative(s.definition)
    superlatives = []
    if sup and gloss:
        questions = [sup, _WORLD_SCOPE.sub("", sup)]
        superlatives = [f"Which is {q}? {gloss}" for q in dict.fromkeys(questions)]
    return sentences, kinds, superlatives


def tagged(directory: Path) -> set[tuple[str, int]]:
    """The synsets of words in common use: those with a sense tagged in the SemCor corpus. An index.* line
    lists a word's synsets most frequent first, the first `tagsense_cnt` of them tagged (wndb(5WN))."""
    out = set()
    for pos, name in INDEX_FILES.items():
        with open(Path(directory) / name, encoding="utf-8", errors="replace") as fh:
            for line in fh:
                if line.startswith(" ") or not line.strip():
                    continue
                f = line.split()
                rest = f[4 + int(f[3]):]  # after lemma, pos, synset_cnt, p_cnt and the p_cnt pointer symbols
                out.update((pos, int(o)) for o in rest[2:2 + int(rest[1])])
    return out


def selected(synsets: dict, common: set) -> list[Synset]:
    """The synsets the corpus uses: words in common use (`common`), and every named thing (an instance: a
    place, a person, a body of water), WordNet's world knowledge. The rest (rare senses, taxonomy) would
    triple the text that a short training run has to get through."""
    return [s for key, s in synsets.items() if key in common or any(sym == "@i" for sym, _, _ in s.pointers)]


def parse_repeats(text: str) -> tuple[int, int, int]:
    """"2,6,24" -> (2, 6, 24); ValueError naming the format otherwise."""
    try:
        repeats = tuple(int(v) for v in text.split(","))
    except ValueError:
        repeats = ()
    if len(repeats) != 3 or min(repeats) < 0 or max(repeats) == 0:
        raise ValueError(f"--wordnet-repeats must be three counts S,K,Q (copies of the sentences, the kind "
                         f"questions and the superlative questions per epoch; e.g. 1,4,256), got {text!r}")
    return repeats


def recipe(repeats=REPEATS) -> str:
    """The corpus recipe's WordNet part (a token-cache key)."""
    counts = str(repeats[0]) if len(set(repeats)) == 1 else "-".join(map(str, repeats))
    return f"wordnet-v{VERSION}x{counts}"


def wordnet_units(directory: Path, repeats=REPEATS) -> list[Unit]:
    """Per selected synset, each kind of its documents as a unit, as many times as `repeats` says (every copy
    of a synset's units has the synset's key, so a split gets all of them or none)."""
    synsets = read_synsets(directory)
    chosen = selected(synsets, tagged(directory))
    if len(set(repeats)) == 1:  # a synset's documents as one unit: stage 2's token stream, as it was made
        return [Unit(f"wordnet/{s.pos}/{s.offset:08d}", 80, lambda s=s: (documents(s, synsets), "ok"))
                for s in chosen] * repeats[0]
    units = []
    for s in chosen:
        # a unit only for the kinds a synset has (most have no superlative): 256 copies of an empty unit
        # per synset took minutes to tokenise to nothing
        for docs, copies in zip(documents_by_kind(s, synsets), repeats):
            if docs:
                load = lambda docs=docs: (docs, "ok")  # noqa: E731  (made once here: not again per copy)
                units += [Unit(f"wordnet/{s.pos}/{s.offset:08d}", 80, load)] * copies
    return units


def data_files(directory: Path) -> list[Path]:
    return [Path(directory) / f for f in (*POS_FILES.values(), *INDEX_FILES.values())]


__all__ = ["Synset", "find_dir", "parse_line", "read_synsets", "documents", "documents_by_kind", "gloss_sentence",
           "superlative",
           "parse_repeats", "recipe", "wordnet_units", "data_files", "INSTALL_HINT", "VERSION"]
