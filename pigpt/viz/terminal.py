"""Bar charts in the terminal: one time step's distribution, raw beside processed, the drawn token marked."""

from __future__ import annotations

import os
import shutil
import sys

from .steps import StepView
from .text import show_token, shorten

_EIGHTHS = " ▏▎▍▌▋▊▉"


def bar(p: float, width: int) -> str:
    """A bar of p * width cells, in eighths of a cell."""
    cells = max(0.0, min(1.0, p)) * width
    full = int(cells)
    frac = int((cells - full) * 8)
    text = "█" * full + (_EIGHTHS[frac] if frac and full < width else "")
    return text.ljust(width)


def use_color(stream=None) -> bool:
    stream = stream or sys.stdout
    return stream.isatty() and "NO_COLOR" not in os.environ and os.environ.get("TERM") != "dumb"


class Style:
    """ANSI styling that turns into plain text when colour is off."""

    def __init__(self, color: bool):
        self.color = color

    def _wrap(self, code: str, text: str) -> str:
        return f"\033[{code}m{text}\033[0m" if self.color else text

    def bold(self, t):
        return self._wrap("1", t)

    def dim(self, t):
        return self._wrap("2", t)

    def drawn(self, t):
        return self._wrap("1;33", t)

    def raw(self, t):
        return self._wrap("90", t)

    def proc(self, t):
        return self._wrap("36", t)


def terminal_width(default: int = 100) -> int:
    return max(60, min(140, shutil.get_terminal_size((default, 24)).columns))


def render_step(view: StepView, tokenizer, processing: str | None, *, context: str = "", width: int | None = None,
                style: Style | None = None) -> str:
    """Lines for one step: a header (context -> drawn token), then one bar row per shown token."""
    style = style or Style(False)
    width = width or terminal_width()
    both = processing is not None  # the chain's label; None: processed == raw, one column
    label_w = max(len(show_token(tokenizer, i)) for i in view.ids)
    label_w = min(max(label_w, 8), 18)  # at least "(others)"
    fixed = label_w + 2 + 8 + (3 + 8 if both else 0) + 10  # labels, numbers, separators, the marker
    bar_w = max(8, (width - fixed) // (2 if both else 1))

    drawn = show_token(tokenizer, view.token)
    head = (f"step {view.t + 1}: {style.dim(shorten(context, max(10, width - 40 - len(drawn))))}"
            f" → {style.drawn(drawn)}  p={_pct(view.processed[view.token_index])}")
    lines = [head]
    if both:
        lines.append(" " * (label_w + 3) + style.raw("model (raw)".ljust(bar_w + 7)) + "   "
                     + style.proc(f"after {processing}"[: bar_w + 7]))
    for tid, p_raw, p_proc in zip(view.ids, view.raw, view.processed):
        name = show_token(tokenizer, tid, limit=label_w - 2).rjust(label_w)
        row = f"  {name} " + style.raw(bar(p_raw, bar_w)) + f" {_pct(p_raw)}"
        if both:
            cut = p_proc == 0.0
            row += " │ " + (style.dim("·" * 3 + " cut".ljust(bar_w - 3)) if cut else style.proc(bar(p_proc, bar_w)))
            row += f" {_pct(p_proc) if not cut else '     -'}"
        if tid == view.token:
            row = style.drawn(row) + style.drawn("  ◀ drawn")
        lines.append(row)
    rest_raw = max(0.0, 1.0 - sum(view.raw))
    note = f"  {'(others)'.rjust(label_w)} {' ' * bar_w} {_pct(rest_raw)}"
    if both:
        shown = sum(1 for p in view.processed if p > 0)
        # all kept tokens shown: the rest is exactly 0, not 1 - sum's rounding (which printed "<0.1%")
        rest = 0.0 if shown >= view.kept else max(0.0, 1.0 - sum(view.processed))
        note += f" │ {view.kept} token(s) kept".ljust(bar_w + 3) + f" {_pct(rest)}"
    lines.append(style.dim(note))
    return "\n".join(lines)


def render_compare(ids: list[int], raw: list[float], columns: list[tuple[str, list[float], int]], tokenizer, *,
                   width: int | None = None, style: Style | None = None) -> str:
    """One step under several settings side by side: a row per token, a bar column per setting.

    columns: (label, probabilities of `ids`, number of tokens kept) per setting.
    """
    style = style or Style(False)
    width = width or terminal_width()
    label_w = min(max(max(len(show_token(tokenizer, i)) for i in ids), 6), 18)
    ncol = len(columns) + 1
    col_w = max(6, (width - label_w - 3) // ncol - 8)
    header = " " * (label_w + 3) + style.raw("model (raw)"[:col_w + 7].ljust(col_w + 7))
    for label, _, _ in columns:
        header += " │ " + style.proc(label[:col_w + 7].ljust(col_w + 7))
    lines = [header]
    for r, tid in enumerate(ids):
        row = f"  {show_token(tokenizer, tid, limit=label_w - 2).rjust(label_w)} "
        row += style.raw(bar(raw[r], col_w)) + f" {_pct(raw[r])}"
        for _, probs, _ in columns:
            p = probs[r]
            row += " │ " + (style.dim("·".ljust(col_w)) + "       " if p == 0.0 else style.proc(bar(p, col_w)) + f" {_pct(p)}")
        lines.append(row)
    kept = "  " + "kept".rjust(label_w) + " " + " " * (col_w + 7)
    for _, _, k in columns:
        kept += " │ " + f"{k} token(s)".ljust(col_w + 7)
    lines.append(style.dim(kept))
    return "\n".join(lines)


def _pct(p: float) -> str:
    """Probabilities as fixed-width percentages: ' 41.2%', '<0.1%'."""
    if p <= 0.0:
        return "  0.0%"
    if p < 0.001:
        return " <0.1%"
    return f"{100 * p:5.1f}%"
