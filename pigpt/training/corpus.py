"""The default corpus: English prose and Python code that every Python install carries.

A model trained on raw .py files mostly learns indentation (GPT-2's BPE spends a token per space, and even
with tabs a small model falls into runs of them) and never learns where a piece of code ends. So the
standard library is taken apart into documents, each followed by <|endoftext|> when tokenised:

- prose: every docstring of a module (module, classes, functions, in source order, as paragraphs), its
  comments (consecutive comment lines as one paragraph; commented-out code and fragments dropped), and the
  help topics of `pydoc_data.topics` (the language reference pages `help("if")` shows). Runs of spaces
  inside a line are collapsed (column alignment costs a token per space and carries no meaning), and the
  wrapped lines of plain paragraphs are joined (a newline costs a token too).
- code: every function and method of up to CODE_MAX_LINES lines (decorators included), dedented, as a
  document of its own, so the model learns that a function ends, and with it the document.
- code on request: each of those functions with a docstring once more, after a question and an answer made
  from its docstring's first line ("Can you give me some Python code? Here is a function that returns the
  ...:" and the function), so a question asking for code is answered with code.

In both, indentation is rounded up to whole groups of 4 spaces and runs of spaces inside a line collapsed
(`collapse_spaces`): see there why.

Sizes on CPython 3.11 (610 modules, without the test suites, the codec tables of `encodings` and
`pydoc_data` itself, which comes in as topics): see docs/training.md.
"""

from __future__ import annotations

import ast
import hashlib
import io
import re
import sysconfig
import textwrap
import tokenize
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

VERSION = 6  # part of the token cache key: bump when the documents change
CODE_MAX_LINES = 12  # longer functions are left out: prose stays the larger share, and short bodies end soon
_SKIP_DIRS = {"__pycache__", "site-packages", "test", "tests", "idle_test", "encodings", "pydoc_data"}
_INNER_SPACES = re.compile(r"(?<=\S) {2,}(?=\S)")
_LEADING_SPACES = re.compile(r"^ +(?=\S)", flags=re.MULTILINE)
_BLANK_LINES = re.compile(r"\n(?:[ \t]*\n)+")  # a blank line, or several (whitespace-only lines too)
_JOINABLE = re.compile(r"[A-Za-z0-9\"'(`]")  # a line that starts a word at column 0: prose, not a list item


@dataclass
class Unit:
    """A piece of a corpus that goes to train or val as a whole: `key` decides which (a hash of it), `size`
    drives the progress bar, and `load()` returns (its documents, a status: "ok", or for a file "binary"
    (skipped, no documents) or "not-utf8" (undecodable bytes replaced))."""

    key: str
    size: int
    load: Callable[[], "tuple[list[str], str]"]


def stdlib_root() -> Path:
    return Path(sysconfig.get_paths()["stdlib"])


def stdlib_files() -> list[Path]:
    """This interpreter's standard library .py files, without site-packages, the test suites, the codec tables
    of `encodings` and pydoc_data (whose help text comes in as topics)."""
    root = stdlib_root()
    return sorted(p for p in root.rglob("*.py") if not _SKIP_DIRS.intersection(p.relative_to(root).parts))


def stdlib_units(code_repeats: int = 1) -> list[Unit]:
    """One unit per module (its prose and its short functions), and one per pydoc help topic; with
    `code_repeats` > 1, each module's code-on-request documents that many times in all (the extra copies
    have the module's key, so a split gets all of them or none)."""
    root, files = stdlib_root(), stdlib_files()
    modules = [Unit(p.relative_to(root).as_posix(), p.stat().st_size, lambda p=p: (module_documents(p), "ok"))
               for p in files]
    copies = [Unit(u.key, u.size // 4, lambda p=p: (code_requests(p), "ok")) for u, p in zip(modules, files)]
    units = modules + copies * (code_repeats - 1)  # the order the shipped model's token stream was made in
    try:
        from pydoc_data.topics import topics
    except ImportError:  # some distributions package pydoc_data separately
        topics = {}
    units += [Unit(f"pydoc_data/topics/{name}", len(text), lambda text=text: ([prose(text)], "ok"))
              for name, text in sorted(topics.items())]
    return units


def module_documents(path: Path) -> list[str]:
    """A module's prose (docstrings, then comments) and its short functions, each a document."""
    source = path.read_text(encoding="utf-8", errors="replace")
    try:
        tree = ast.parse(source)
    except (SyntaxError, ValueError):  # a stdlib file for another Python version: no documents
        return []
    docs = [docstrings(tree), comments(source)]
    docs = [prose(d) for d in docs if d]
    code = functions(tree, source.splitlines(keepends=True))
    return docs + code + [qa for qa in map(code_answer, code) if qa]


def code_requests(path: Path) -> list[str]:
    """A module's code-on-request documents alone (the last part of `module_documents`)."""
    try:
        tree = ast.parse(source := path.read_text(encoding="utf-8", errors="replace"))
    except (SyntaxError, ValueError):
        return []
    return [qa for qa in map(code_answer, functions(tree, source.splitlines(keepends=True))) if qa]


def docstrings(tree: ast.Module) -> str:
    """Every docstring of three words or more, in source order, as paragraphs of one text."""
    nodes = (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)
    found = [(getattr(n, "lineno", 0), ast.get_docstring(n)) for n in ast.walk(tree) if isinstance(n, nodes)]
    return "\n\n".join(d for _, d in sorted(found, key=lambda x: x[0]) if d and len(d.split()) >= 3)


def comments(source: str) -> str:
    """The comments of a module as paragraphs: consecutive comment lines joined, '#' removed; kept when
    they read as prose (>= 4 words, mostly letters, not commented-out code)."""
    paragraphs, current, last = [], [], -2
    try:
        for tok in tokenize.generate_tokens(io.StringIO(source).readline):
            if tok.type != tokenize.COMMENT:
                continue
            text = tok.string.lstrip("#").strip()
            if tok.start[0] != last + 1 or not text:
                paragraphs.append(current)
                current = []
            if text:
                current.append(text)
            last = tok.start[0]
    except (tokenize.TokenError, SyntaxError):
        pass
    paragraphs.append(current)
    return "\n\n".join(p for p in map("\n".join, paragraphs) if _is_prose(p))


def _is_prose(text: str) -> bool:
    if len(text.split()) < 4 or sum(c.isalpha() or c == " " for c in text) < 0.8 * len(text):
        return False
    try:
        compile(text, "<comment>", "exec")
        return False  # commented-out code
    except (SyntaxError, ValueError):
        return True


def functions(tree: ast.Module, lines: list[str]) -> list[str]:
    """Top-level functions and methods (not functions nested in functions) of at most CODE_MAX_LINES lines,
    dedented, with their decorators."""
    out = []

    def visit(node):
        for child in ast.iter_child_nodes(node):
            if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef)):
                start = min([child.lineno] + [d.lineno for d in child.decorator_list])
                if child.end_lineno - start + 1 <= CODE_MAX_LINES:
                    code = textwrap.dedent("".join(lines[start - 1:child.end_lineno])).rstrip() + "\n"
                    out.append(collapse_spaces(hang_continuations(code)))
            elif isinstance(child, (ast.ClassDef, ast.If, ast.Try)):  # methods; `if sys.platform ...:` defs
                visit(child)

    visit(tree)
    return out


CODE_QUESTIONS = ("Can you give me some Python code?", "Can you write a Python function?",
                  "Show me some Python code.", "Can you give me an example of Python code?")
_VERB_ES = re.compile(r"(?:s|sh|ch|x|z|o)$")


def third_person(verb: str) -> str:
    """A docstring's imperative as a description: "Return" -> "returns", "Fetch" -> "fetches", "Copy" ->
    "copies"; a word that ends in s already ("Returns") is left as it is."""
    v = verb.lower()
    if v.endswith("s") and not v.endswith("ss"):
        return v
    if v.endswith("y") and v[-2:-1] not in tuple("aeiou"):
        return v[:-1] + "ies"
    return v + ("es" if _VERB_ES.search(v) else "s")


def code_answer(code: str) -> str | None:
    """A function as the answer to a request for code: a question (one of CODE_QUESTIONS, picked by a hash of
    the code so the choice is stable), "Here is a function that <its docstring's first line>:", a blank line,
    the function. None for a function without a docstring that starts with a word."""
    try:
        node = ast.parse(code).body[0]
    except (SyntaxError, ValueError, IndexError):
        return None
    doc = ast.get_docstring(node) if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) else None
    first = (doc or "").strip().split("\n")[0].strip().rstrip(".:")
    words = first.split(" ", 1)
    if len(words) < 2 or not words[0].isalpha():
        return None
    question = CODE_QUESTIONS[int(hashlib.sha256(code.encode()).hexdigest(), 16) % len(CODE_QUESTIONS)]
    return f"{question} Here is a function that {third_person(words[0])} {words[1]}:\n\n{code}"


def hang_continuations(code: str) -> str:
    """Continuation lines inside brackets indented one level past their statement, not aligned under the
    bracket: `f(a,\n          b)` -> `f(a,\n    b)`. Alignment gave lines of 5-10 levels (a tab each in the
    "tabs" form), and those runs taught the model to write runs of tabs. Indentation inside brackets has no
    meaning to Python, so the code stays the same program; lines that begin inside a string are left alone."""
    lines = code.splitlines(keepends=True)
    depth, stmt_indent, new_indent = 0, 0, {}  # new_indent: line number -> its indentation
    try:
        for tok in tokenize.generate_tokens(io.StringIO(code).readline):
            row, col = tok.start
            if tok.type in (tokenize.NEWLINE, tokenize.NL, tokenize.INDENT, tokenize.DEDENT, tokenize.ENDMARKER):
                continue
            line = lines[row - 1]
            first_on_line = col == len(line) - len(line.lstrip(" \t"))
            if depth == 0 and first_on_line:
                stmt_indent = col  # the first line of a logical line sets its statement's indentation
            elif depth > 0 and first_on_line and col > stmt_indent + 4:
                new_indent[row] = stmt_indent + 4
            if tok.type == tokenize.OP and tok.string in "([{":
                depth += 1
            elif tok.type == tokenize.OP and tok.string in ")]}":
                depth -= 1
    except (tokenize.TokenError, SyntaxError):
        return code
    for row, indent in new_indent.items():
        lines[row - 1] = " " * indent + lines[row - 1].lstrip(" \t")
    return "".join(lines)


def collapse_spaces(text: str) -> str:
    """'a    b' -> 'a b' inside lines, and indentation rounded up to whole groups of 4 spaces (tabs in the
    "tabs" text form). A run of spaces is a run of ' ' tokens, and pairs of them (pydoc's 3-space indents,
    continuation lines aligned under a bracket) taught the model that a space follows a space: its early
    rollouts were runs of dozens. Code stays valid: statements are indented in fours already, and the other
    lines are inside brackets or strings."""
    text = _LEADING_SPACES.sub(lambda m: " " * (-(-len(m.group(0)) // 4) * 4), text)
    return _INNER_SPACES.sub(" ", text)


def reflow(text: str) -> str:
    """Join the wrapped lines of plain paragraphs into one line each: a newline is a token, every ~12 tokens
    of wrapped prose. A line joins the one before when both start at column 0 with a word (not a list
    item, a heading underline or an example) and the one before does not end in ':' (a block follows)."""
    out: list[str] = []
    for line in text.split("\n"):
        prev = out[-1] if out else ""
        if _JOINABLE.match(line) and _JOINABLE.match(prev) and not prev.rstrip().endswith(":"):
            out[-1] = prev.rstrip() + " " + line.strip()
        else:
            out.append(line)
    return "\n".join(out)


def dedent_blocks(text: str) -> str:
    """Each block of indented lines (a list, an example, a grammar rule) moved to column 0, keeping the
    indentation inside it. In the "tabs" form every line of a block began with a newline and a tab, and prose
    that turned into indented lines taught the model to leave a sentence for a run of tabs."""
    out, block = [], []
    for line in text.split("\n") + [""]:
        if line[:1] in (" ", "\t") and line.strip():
            block.append(line)
            continue
        if block:
            out += textwrap.dedent("\n".join(block)).split("\n")
            block = []
        out.append(line)
    return "\n".join(out[:-1])


def prose(text: str) -> str:
    """Spaces collapsed, wrapped lines joined, indented blocks dedented, and paragraphs separated by one
    newline, not a blank line: a blank line is two newline tokens (GPT-2's BPE splits the pair when text
    follows), and that pair taught the model that a newline follows a newline: its rollouts fell into runs
    of them."""
    return _BLANK_LINES.sub("\n", dedent_blocks(reflow(collapse_spaces(text)))).strip("\n")


__all__ = ["Unit", "stdlib_units", "stdlib_files", "stdlib_root", "module_documents", "VERSION"]
