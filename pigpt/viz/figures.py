"""matplotlib pictures: per-step bar graphs, the rollout tree, one step under several settings.

Every builder returns the Figure (callers and tests count its panels with `len(fig.axes)`); `save` writes it.
"""

from __future__ import annotations

import math
import tempfile
from pathlib import Path

from .steps import StepView
from .text import show_token, shorten
from .tree import Node, layout

FORMATS = (".png", ".svg", ".pdf")
RAW_COLOR = "#b8b8b8"
PROC_COLOR = "#2b7bb9"
DRAWN_COLOR = "#e8590c"


def fmt_p(p: float) -> str:
    """A probability in few characters: 0.62, 0.047, 3e-05."""
    if p >= 0.095 or p == 0.0:
        return f"{p:.2f}"
    if p >= 0.001:
        return f"{p:.3f}"
    return f"{p:.0e}"


def _plt():
    import warnings

    import matplotlib

    # tokens in scripts the font lacks draw as boxes; one warning per glyph would drown the output
    warnings.filterwarnings("ignore", message="Glyph .* missing from font")

    matplotlib.use("Agg")  # files only, never a window
    import matplotlib.pyplot as plt

    return plt


def check_output_path(path) -> Path:
    """Raise ValueError (before any work is done) when `path` can't take a picture: the directory must
    really take a new file (one is created and removed: permission bits say nothing for root, or on /proc)."""
    path = Path(path)
    if path.suffix.lower() not in FORMATS:
        raise ValueError(f"{path}: picture files must end in {', '.join(FORMATS)}")
    parent = path.parent if str(path.parent) else Path(".")
    if not parent.is_dir():
        raise ValueError(f"{path}: cannot write there, directory {parent} does not exist")
    if path.is_dir():
        raise ValueError(f"{path}: is a directory, not a file name")
    try:
        with tempfile.NamedTemporaryFile(dir=parent, prefix=f".{path.name}.", suffix=".probe"):
            pass
    except OSError as e:
        raise ValueError(f"{path}: cannot write there ({e.strerror or e})") from None
    return path


def save(fig, path) -> None:
    """Write the figure atomically (a finished picture or the old file, never half of one), 0644 under
    umask 022 like any new file."""
    from pigpt.model.checkpoint import atomic_write

    plt = _plt()
    fmt = Path(path).suffix.lower().lstrip(".")
    try:
        atomic_write(Path(path), lambda tmp: fig.savefig(tmp, format=fmt, dpi=110, bbox_inches="tight",
                                                         facecolor="white"))
    finally:
        plt.close(fig)


def _grid(plt, n: int, ncols: int, panel_w: float, panel_h: float):
    ncols = max(1, min(ncols, n))
    nrows = math.ceil(n / ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(panel_w * ncols, panel_h * nrows), squeeze=False)
    flat = [ax for row in axes for ax in row]
    for ax in flat[n:]:
        fig.delaxes(ax)  # so that len(fig.axes) is the number of panels
    return fig, flat[:n]


def _bars(ax, labels, raw, processed, drawn_index, both: bool, xmax: float | None = None):
    """Horizontal bars, most likely token on top: raw (grey) and, when they differ, processed (blue)."""
    ys = list(range(len(labels)))[::-1]
    h = 0.4 if both else 0.75
    if both:
        ax.barh([y + h / 2 for y in ys], raw, height=h, color=RAW_COLOR, label="model (raw)")
        colors = [DRAWN_COLOR if i == drawn_index else PROC_COLOR for i in range(len(labels))]
        ax.barh([y - h / 2 for y in ys], processed, height=h, color=colors, label="processed")
    else:
        colors = [DRAWN_COLOR if i == drawn_index else PROC_COLOR for i in range(len(labels))]
        ax.barh(ys, raw, height=h, color=colors)
    ax.set_yticks(ys)
    ax.set_yticklabels(labels, fontsize=8, family="monospace")
    if drawn_index is not None:
        tick = ax.get_yticklabels()[drawn_index]
        tick.set_color(DRAWN_COLOR)
        tick.set_fontweight("bold")
    if xmax is None:
        xmax = _xmax(raw, processed if both else [])
    ax.set_xlim(0, xmax)
    if xmax > 1.0:  # room for the labels of bars near 1, but no axis ticks past a probability of 1
        ax.set_xticks([0.0, 0.2, 0.4, 0.6, 0.8, 1.0])
    values = processed if both else raw
    for i, (y, v) in enumerate(zip(ys if not both else [y - h / 2 for y in ys], values)):
        if v > 0:
            ax.text(v + xmax * 0.01, y, fmt_p(v), fontsize=6, va="center", color="#333333")
        elif both:  # removed by top-k / top-p / a mask: say so, with what the model gave it
            ax.text(raw[i] + xmax * 0.01, y, f"cut (raw {fmt_p(raw[i])})", fontsize=6, va="center",
                    color="#888888")
    ax.tick_params(axis="x", labelsize=7)
    ax.grid(axis="x", alpha=0.3)


def _xmax(*prob_lists) -> float:
    """Zoom in on flat distributions, and leave room right of the longest bar for its value label (past 1.0
    when a bar is near 1, so that its label never runs into the frame)."""
    top = max((max(ps, default=0.0) for ps in prob_lists), default=0.0)
    return max(0.02, top * 1.3) if top < 0.75 else top + 0.22


def plot_steps(views: list[StepView], tokenizer, processing: str | None, *, prompt_text: str = "",
               context_texts: list[str] | None = None, ncols: int = 4, note: str = ""):
    """One panel per time step: the top tokens' probabilities, raw beside processed, the drawn token orange.
    processing: viz.steps.label of the chain, or None when the processed distribution is the raw one.
    `note` (e.g. which steps are left out, and the flag that shows them) is written under the panels."""
    plt = _plt()
    if not views:
        raise ValueError("no steps to plot: the rollout generated no tokens")
    fig, axes = _grid(plt, len(views), ncols, 3.4, 0.32 * max(len(v.ids) for v in views) + 1.1)
    both = processing is not None
    for ax, view in zip(axes, views):
        labels = [show_token(tokenizer, i, limit=14) for i in view.ids]
        _bars(ax, labels, view.raw, view.processed, view.token_index, both)
        p = view.processed[view.token_index]
        title = f"t={view.t + 1}  → {show_token(tokenizer, view.token, limit=14)}  p={fmt_p(p)}"
        if context_texts:
            title = shorten(context_texts[view.t], 34) + "\n" + title
        ax.set_title(title, fontsize=8, family="monospace")
    handles = [plt.Rectangle((0, 0), 1, 1, color=c) for c in ((RAW_COLOR, PROC_COLOR, DRAWN_COLOR) if both
                                                              else (PROC_COLOR, DRAWN_COLOR))]
    names = (["model (raw)", f"after {processing}", "drawn token"] if both
             else ["model distribution", "drawn token"])
    _header(fig, f"Next-token distribution at each step — prompt: {shorten(prompt_text, 70, keep_end=False)!r}",
            handles, names, note)
    return fig


def _header(fig, title: str, handles, names, note: str = "") -> None:
    """A title and a legend above the panels (and a note below them), at fixed distances in inches whatever
    the figure's height."""
    H = fig.get_figheight()
    fig.tight_layout(rect=(0, 0.4 / H if note else 0, 1, 1 - 0.75 / H))
    if note:
        fig.text(0.5, 0.12 / H, note, fontsize=9, ha="center", va="bottom", color="#444444")
    fig.suptitle(title, fontsize=11, y=1 - 0.12 / H, va="top")
    fig.legend(handles, names, loc="upper center", ncol=len(names), fontsize=9, frameon=False,
               bbox_to_anchor=(0.5, 1 - 0.38 / H))


def plot_compare(ids: list[int], raw: list[float], columns: list[tuple[str, list[float], int]], tokenizer, *,
                 prompt_text: str = ""):
    """One step's distribution under several settings, side by side: one panel per setting."""
    plt = _plt()
    fig, axes = _grid(plt, len(columns), len(columns), 3.2, 0.3 * len(ids) + 1.3)
    labels = [show_token(tokenizer, i, limit=14) for i in ids]
    xmax = _xmax(raw, *(probs for _, probs, _ in columns))  # one scale, so that panels compare
    for k, (ax, (label, probs, kept)) in enumerate(zip(axes, columns)):
        _bars(ax, labels, raw, probs, None, True, xmax)
        ax.set_title(f"{label}\n{kept} token(s) kept", fontsize=9)
        if k:
            ax.set_yticklabels([])
    handles = [plt.Rectangle((0, 0), 1, 1, color=c) for c in (RAW_COLOR, PROC_COLOR)]
    _header(fig, f"The next token after {shorten(prompt_text, 60)!r}", handles, ["model (raw)", "after processing"])
    return fig


def plot_tree(root: Node, tokenizer, *, prompt_text: str = "", title: str = "", edge_label: str = "p",
              note: str = ""):
    """The rollouts as a tree: x is the time step, each node a token, each edge labelled with its probability.

    Thicker edges carry more rollouts; a leaf is marked with the rollouts that end there and why. `note`
    (e.g. what a depth limit leaves out, and the flag that shows it) is written under the time axis.
    """
    plt = _plt()
    leaves = layout(root)
    nodes = list(root.walk())
    depth = max(n.depth for n in nodes)
    width = min(40, 1.7 + 1.45 * (depth + 1))
    fig, ax = plt.subplots(figsize=(width, min(40, max(0.9 + 0.5 * leaves, width / 5))))  # never a sliver
    n_rollouts = max(1, len(root.rollouts))
    boxes = {}
    for node in nodes:
        if node.token is None:
            text = shorten(prompt_text, 18) or "prompt"
            style = dict(boxstyle="round,pad=0.3", fc="#eeeeee", ec="#888888")
        else:
            text = show_token(tokenizer, node.token, limit=12)
            branching = len(node.children) > 1
            style = dict(boxstyle="round,pad=0.25", fc="#fff4e6" if branching else "white",
                         ec=DRAWN_COLOR if branching else "#8aa4c8")
        boxes[id(node)] = ax.text(node.depth, node.y, text, fontsize=7, ha="center", va="center",
                                  family="monospace", bbox=style, zorder=4)
    ax.set_xlim(-0.7, depth + 1.4)
    ax.set_ylim(leaves - 0.5, -0.5)  # first rollout on top
    ax.set_yticks([])
    ax.set_xticks(range(depth + 1))
    ax.set_xticklabels(["prompt"] + [f"t={d}" for d in range(1, depth + 1)], fontsize=7)
    if note:
        ax.set_xlabel(note, fontsize=8, color="#444444")
    for side in ("top", "right", "left"):
        ax.spines[side].set_visible(False)
    ax.set_title(title or f"{len(root.rollouts)} rollouts; edge label: {edge_label}(token | path above)",
                 fontsize=10)
    fig.tight_layout()
    # Token boxes are as wide as their text: measure them (in data units of x), so that edge labels sit in
    # the gap between two boxes and the end labels start right of their box, whatever the tokens' widths.
    extent = _x_extents(fig, ax, boxes)
    margin = 0.04
    for node in nodes:
        for child in node.children.values():
            lw = 0.8 + 3.0 * len(child.rollouts) / n_rollouts
            ax.plot([node.depth, child.depth], [node.y, child.y], color="#8aa4c8", lw=lw, zorder=1,
                    solid_capstyle="round")
            label = ax.text(0, 0, fmt_p(child.prob), fontsize=6.5, ha="center", va="center", color="#555555",
                            zorder=3, bbox=dict(boxstyle="round,pad=0.1", fc="white", ec="none", alpha=0.85))
            w = _x_extents(fig, ax, {0: label})[0]
            w = w[1] - w[0]
            left, right = extent[id(node)][1] + margin, extent[id(child)][0] - margin  # the visible edge
            # as close to the child as fits: edges fanning out of one node part there, not at the parent
            x = max(right - w / 2, (left + right) / 2)
            f = (x - node.depth) / (child.depth - node.depth)
            label.set_position((x, node.y + f * (child.y - node.y)))
    for node in nodes:
        if node.ends:
            ends = ", ".join(f"#{i + 1}" + (f" {why}" if why else "") for i, why in node.ends[:3])
            if len(node.ends) > 3:
                ends += f" +{len(node.ends) - 3}"
            ax.text(extent[id(node)][1] + margin, node.y, ends, fontsize=6.5, ha="left", va="center",
                    color="#666666")
    return fig


def _x_extents(fig, ax, texts: dict) -> dict:
    """{key: (left, right)} of each text's box (its bbox patch included) in data units of x."""
    renderer = fig.canvas.get_renderer()
    to_data = ax.transData.inverted()
    out = {}
    for key, t in texts.items():
        box = t.get_window_extent(renderer)
        patch = t.get_bbox_patch()
        if patch is not None:  # the padding around the text, in points
            pad = patch.get_boxstyle().pad * t.get_fontsize() * fig.dpi / 72
            box = box.expanded(1, 1).from_extents(box.x0 - pad, box.y0, box.x1 + pad, box.y1)
        (x0, _), (x1, _) = to_data.transform([(box.x0, box.y0), (box.x1, box.y1)])
        out[key] = (x0, x1)
    return out
