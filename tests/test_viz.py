"""viz: the recorded per-step distributions against transformers' processors and against what decoding drew;
the rollout tree; the figures' panels; the terminal bar charts."""

import pytest
import torch

from pigpt.decoding import SamplingParams, generate, score
from pigpt.model import GPT, get_tokenizer
from pigpt.viz import figures
from pigpt.viz.steps import BeamRecorder, StepRecorder, is_identity, label, summarize
from pigpt.viz.terminal import bar, render_compare, render_step
from pigpt.viz.tree import branch_points, build_tree, count_nodes, layout


@pytest.fixture(scope="module")
def gpt(tiny_checkpoint):
    return GPT.from_pretrained(tiny_checkpoint[0])


def _recorded(gpt, prompt, params, **kw):
    rec = StepRecorder(params, (50256,), **kw)
    rollouts = generate(gpt, [prompt], params, on_step=rec, distributions=True)[0]
    return rollouts, rec


def test_recorded_steps_are_the_distributions_generate_drew_from(gpt):
    """What viz shows for a step is what decoding sampled from: the drawn token's processed log-prob equals
    Rollout.logprobs, its raw log-prob Rollout.model_logprobs (and score), and the shown processed
    probabilities are transformers' chain applied to the raw logits (checked against its processors)."""
    from transformers import (LogitsProcessorList, MinNewTokensLengthLogitsProcessor,
                              RepetitionPenaltyLogitsProcessor, TemperatureLogitsWarper, TopKLogitsWarper,
                              TopPLogitsWarper)

    enc = get_tokenizer()
    prompt = enc.encode("Which is the largest ocean?")
    params = SamplingParams(temperature=0.7, top_k=40, top_p=0.9, repetition_penalty=1.3, min_new_tokens=2,
                            max_new_tokens=8, n=3, seed=11)
    rollouts, rec = _recorded(gpt, prompt, params, top=5)
    chain = LogitsProcessorList([RepetitionPenaltyLogitsProcessor(1.3),
                                 MinNewTokensLengthLogitsProcessor(len(prompt), 2, [50256]),
                                 TemperatureLogitsWarper(0.7), TopKLogitsWarper(40), TopPLogitsWarper(0.9)])
    assert sorted(rec.views) == [0, 1, 2]
    for i, r in enumerate(rollouts):
        vs = rec.views[i]
        assert [v.token for v in vs] == r.tokens
        torch.testing.assert_close(torch.tensor([v.token_logprob for v in vs]), torch.tensor(r.logprobs),
                                   atol=1e-5, rtol=0)
        torch.testing.assert_close(torch.tensor([v.token_raw_logprob for v in vs]), score(gpt, prompt, r.tokens),
                                   atol=1e-5, rtol=0)
        seq = torch.tensor([prompt + r.tokens])
        with torch.no_grad():
            logits = gpt(seq)[0, len(prompt) - 1:]
        for t, v in enumerate(vs):
            ref = torch.softmax(chain(seq[:, :len(prompt) + t], logits[t:t + 1].clone()), -1)[0]
            torch.testing.assert_close(torch.tensor(v.processed), ref[v.ids], atol=1e-5, rtol=0)
            assert v.token in v.ids and v.kept <= 40
            assert sorted(v.raw, reverse=True)[:5] == v.raw[:5]  # shown by raw probability
            if t < 2:  # min_new_tokens masks the stop token: it is shown, cut
                assert 50256 in v.ids and v.processed[v.ids.index(50256)] == 0.0


def test_greedy_views_and_only_the_rows_asked_for(gpt):
    """Greedy: the drawn token is the argmax, its log-prob the log-softmax of the penalised logits."""
    prompt = get_tokenizer().encode("Once upon a time")
    params = SamplingParams(temperature=0, repetition_penalty=1.5, max_new_tokens=6)
    (r,), rec = _recorded(gpt, prompt, params, top=3)
    views = rec.views[0]
    torch.testing.assert_close(torch.tensor([v.token_logprob for v in views]), torch.tensor(r.logprobs),
                               atol=1e-5, rtol=0)
    for v in views:
        assert v.processed[v.token_index] == max(v.processed)
    _, rec = _recorded(gpt, prompt, SamplingParams(n=3, seed=0, max_new_tokens=3), rows={1})
    assert list(rec.views) == [1]


def test_beam_views_follow_each_beams_path(gpt):
    """BeamRecorder: each final beam's step t is the distribution of the running beam it extended then; the
    token's processed log-prob (normalised) and raw log-prob match the beam's own records."""
    from pigpt.decoding import beam_search

    prompt = get_tokenizer().encode("The sea is")
    params = SamplingParams(max_new_tokens=6, repetition_penalty=1.4)
    rec = BeamRecorder(params, (50256,), top=4)
    beams = beam_search(gpt, [prompt], params, num_beams=3, num_return_sequences=3, on_step=rec)[0]
    for b in beams:
        vs = rec.views(0, b)
        assert [v.token for v in vs] == b.tokens
        torch.testing.assert_close(torch.tensor([v.token_raw_logprob for v in vs]), torch.tensor(b.model_logprobs),
                                   atol=1e-5, rtol=0)
        torch.testing.assert_close(torch.tensor([v.token_raw_logprob for v in vs]), score(gpt, prompt, b.tokens),
                                   atol=1e-5, rtol=0)
    assert len({tuple(b.beam_indices) for b in beams}) > 1 or len(beams) == 1


def test_labels_of_the_processing():
    assert label(SamplingParams(temperature=0.7, top_k=50, repetition_penalty=1.3)) == "T=0.7 top-k=50 rep=1.3"
    assert label(SamplingParams(temperature=0)) == "greedy (argmax)"
    assert label(SamplingParams(), beam=True) == "beam search"
    assert is_identity(SamplingParams()) and not is_identity(SamplingParams(top_p=0.9))
    assert is_identity(SamplingParams(temperature=0.5), beam=True)


def test_summarize_keeps_the_drawn_token_and_marks_removed_ones():
    x = torch.tensor([[4.0, 3.0, 2.0, 1.0, 0.0]])
    (s,) = summarize(0, x, x, SamplingParams(top_k=2), top=2)
    view = s.view(4)
    assert view.ids == [0, 1, 4] and view.token_index == 2
    assert view.processed[2] == 0.0 and view.kept == 2
    assert abs(sum(view.processed[:2]) - 1.0) < 1e-6


def test_tree_is_the_trie_of_the_rollouts():
    completions = [[1, 2, 3], [1, 2, 4], [1, 5], [6]]
    probs = [[0.5, 0.9, 0.3], [0.5, 0.9, 0.6], [0.5, 0.1], [0.2]]
    root = build_tree(completions, probs, ["length", "length", "stop", "stop"])
    # distinct non-empty prefixes: 1, 1-2, 1-2-3, 1-2-4, 1-5, 6
    assert count_nodes(root) == 6
    assert layout(root) == 4  # one leaf per distinct completion
    assert sorted(len(n.children) for n in branch_points(root)) == [2, 2, 2]
    node = root.children[1].children[2]
    assert node.rollouts == [0, 1] and node.prob == 0.9 and node.depth == 2
    assert root.children[6].ends == [(3, "stop")]
    ys = [c.y for c in root.children[1].children[2].children.values()]
    assert root.children[1].children[2].y == sum(ys) / 2
    with pytest.raises(ValueError, match="probabilities"):
        build_tree([[1, 2]], [[0.5]])


def _png_ok(path):
    import matplotlib.image

    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    img = matplotlib.image.imread(path)
    assert img.shape[0] > 50 and img.shape[1] > 50


def test_figures_have_one_panel_per_step_and_setting(gpt, tmp_path):
    enc = get_tokenizer()
    prompt = enc.encode("Once upon a time")
    params = SamplingParams(temperature=0.8, top_k=10, max_new_tokens=5, n=2, seed=0, stop_token_ids=())
    _, rec = _recorded(gpt, prompt, params, top=4)
    views = [rec.views[0], rec.views[1]]
    fig = figures.plot_steps(views[0], enc, label(params), prompt_text="Once upon a time")
    assert len(fig.axes) == 5
    figures.save(fig, tmp_path / "steps.png")
    _png_ok(tmp_path / "steps.png")

    ids, raw = views[0][0].ids, views[0][0].raw
    fig = figures.plot_compare(ids, raw, [("a", raw, 9), ("b", raw, 3), ("c", raw, 1)], enc)
    assert len(fig.axes) == 3
    figures.save(fig, tmp_path / "cmp.svg")
    assert (tmp_path / "cmp.svg").read_text().lstrip().startswith("<?xml")

    root = build_tree([[262, 373, 11], [262, 290]], [[0.5, 0.4, 0.3], [0.5, 0.2]])
    fig = figures.plot_tree(root, enc, prompt_text="Once upon a time")
    assert len(fig.axes) == 1
    figures.save(fig, tmp_path / "tree.png")
    _png_ok(tmp_path / "tree.png")


def test_check_output_path(tmp_path):
    assert figures.check_output_path(tmp_path / "a.png") == tmp_path / "a.png"
    with pytest.raises(ValueError, match="does not exist"):
        figures.check_output_path(tmp_path / "missing" / "a.png")
    with pytest.raises(ValueError, match="must end in"):
        figures.check_output_path(tmp_path / "a.txt")
    (tmp_path / "d.png").mkdir()
    with pytest.raises(ValueError, match="is a directory"):
        figures.check_output_path(tmp_path / "d.png")
    with pytest.raises(ValueError, match="cannot write there"):  # writable by its mode bits for root; not really
        figures.check_output_path("/proc/x.png")
    assert not list(tmp_path.glob(".*probe")), "the probe file is removed"


def test_pictures_are_written_atomically_with_normal_permissions(tmp_path):
    import os

    old = os.umask(0o022)
    try:
        fig = figures.plot_tree(build_tree([[262]], [[0.5]]), get_tokenizer())
        figures.save(fig, tmp_path / "t.png")
    finally:
        os.umask(old)
    assert (tmp_path / "t.png").stat().st_mode & 0o777 == 0o644
    assert [p.name for p in tmp_path.iterdir()] == ["t.png"]


def test_terminal_charts():
    enc = get_tokenizer()
    assert bar(1.0, 10) == "█" * 10 and bar(0.0, 4) == "    " and bar(0.55, 10).startswith("█████▌")
    x = torch.tensor([[5.0, 4.0, 1.0, 0.0]])
    params = SamplingParams(top_k=2)
    (s,) = summarize(0, x, x, params, top=3)
    text = render_step(s.view(1), enc, label(params), context="Hello", width=100)
    lines = text.splitlines()
    assert "→ '\"'" in lines[0]  # token 1 is '"'
    drawn = [ln for ln in lines if "◀ drawn" in ln]
    assert len(drawn) == 1 and "'\"'" in drawn[0]
    assert sum("cut" in ln for ln in lines) == 1  # token 2 removed by top-k 2
    assert "2 token(s) kept" in text
    cmp = render_compare([0, 1], [0.7, 0.2], [("T=0.5", [0.9, 0.1], 2), ("top-k=1", [1.0, 0.0], 1)], enc, width=100)
    assert "T=0.5" in cmp and "1 token(s)" in cmp and "100.0%" in cmp


def test_bar_labels_near_one_stay_inside_the_frame():
    """A bar at p = 0.98 leaves room for its value label inside the axes (the frame used to cut it)."""
    enc = get_tokenizer()
    x = torch.tensor([[8.0, 4.0, 1.0, 0.0]])
    (s,) = summarize(0, x, x, SamplingParams(), top=3)
    fig = figures.plot_steps([s.view(0)], enc, None)
    ax = fig.axes[0]
    right = ax.get_xlim()[1]
    labels = [t for t in ax.texts if t.get_text() == figures.fmt_p(s.view(0).raw[0])]
    assert labels and all(t.get_position()[0] < right - 0.1 for t in labels), (right, labels)
    assert max(ax.get_xticks()) <= 1.0  # no tick pretends to a probability above 1


def test_tree_edge_labels_part_where_the_edges_do():
    """Edge labels sit toward the child end: the labels of edges fanning out of one node don't stack."""
    enc = get_tokenizer()
    root = build_tree([[262, 373], [262, 11], [262, 290], [262, 257]], [[0.9, 0.4], [0.9, 0.3], [0.9, 0.2], [0.9, 0.1]])
    fig = figures.plot_tree(root, enc)
    ys = [t.get_position()[1] for t in fig.axes[0].texts if t.get_text() in ("0.40", "0.30", "0.20", "0.10")]
    assert len(ys) == 4 and min(abs(a - b) for i, a in enumerate(ys) for b in ys[i + 1:]) > 0.5


def test_tree_leaves_cut_by_the_depth_still_say_whose_they_are(tmp_path, monkeypatch, tiny_checkpoint):
    from pigpt import sample

    shown = []
    monkeypatch.setattr(sample, "write_figure", lambda s, fig, path, what: shown.append(fig))
    import io

    argv = ["Hi", "--model", tiny_checkpoint[0], "-n", 3, "--seed", 5, "--max-new-tokens", 6, "--tree",
            tmp_path / "t.png", "--tree-depth", 2, "--json"]
    code = sample.main([str(a) for a in argv], out=io.StringIO(), err=io.StringIO())
    assert code == 0
    texts = " ".join(t.get_text() for t in shown[0].axes[0].texts)
    assert "seed 5" in texts and "(+4 tokens)" in texts


def test_tree_edge_labels_never_overlap_token_boxes():
    """Wide tokens (' parameter', ' section') used to cover the labels of the edges into them ('0.0(' ...)."""
    enc = get_tokenizer()
    wide = [enc.encode(w)[0] for w in (" parameter", " section", " declaration", " following")]
    narrow = enc.encode(" a")[0]
    root = build_tree([[wide[0], wide[1], narrow], [wide[2], narrow, wide[3]], [wide[2], wide[3], wide[0]]],
                      [[0.003, 0.047, 0.5], [0.3, 3e-5, 0.25], [0.3, 0.0123, 0.9]])
    fig = figures.plot_tree(root, enc, note="a note")
    ax = fig.axes[0]
    renderer = fig.canvas.get_renderer()
    fig.canvas.draw()  # the bbox patches take their final size when drawn
    boxes = [t.get_bbox_patch().get_window_extent(renderer) for t in ax.texts if t.get_fontsize() == 7]
    labels = [t for t in ax.texts if t.get_text() in {figures.fmt_p(p) for p in (0.003, 0.047, 0.5, 0.3, 3e-5, 0.25,
                                                                                 0.0123, 0.9)}]
    assert len(boxes) == 9 and len(labels) == 8  # 8 tokens + the prompt; 8 edges
    for label in labels:
        extent = label.get_window_extent(renderer)
        assert not any(extent.overlaps(b) for b in boxes), label.get_text()
    assert ax.get_xlabel() == "a note"


def test_pictures_say_what_they_leave_out(tmp_path, monkeypatch, tiny_checkpoint):
    """tree.png drawn to --tree-depth and steps.png to --max-panels say on the picture (and in the terminal)
    which steps are left out and the flag that draws them."""
    import io

    from pigpt import sample

    shown = []
    monkeypatch.setattr(sample, "write_figure", lambda s, fig, path, what: shown.append((fig, what)))
    argv = ["Hi", "--model", tiny_checkpoint[0], "-n", 3, "--seed", 5, "--max-new-tokens", 9, "--tree",
            tmp_path / "t.png", "--tree-depth", 4, "--plot", tmp_path / "s.png", "--max-panels", 6, "--json"]
    code = sample.main([str(a) for a in argv], out=io.StringIO(), err=io.StringIO())
    assert code == 0
    (steps, steps_what), (tree, tree_what) = shown
    note = " ".join(t.get_text() for t in steps.texts)
    assert len(steps.axes) == 6 and "steps 1-6 of the 9 of rollout 1 shown: --max-panels 9 draws them all" in note
    assert "3 later steps left out: --max-panels 9 for all" in steps_what
    assert tree.axes[0].get_xlabel().startswith("the first 4 of up to 9 steps: 3 of the 3 rollouts go on past t=4")
    assert "--tree-depth 9 draws every step" in tree.axes[0].get_xlabel()
    assert "steps 5-9 left out: --tree-depth 9 for all" in tree_what
    shown.clear()
    argv[argv.index("--tree-depth") + 1] = 9
    argv[argv.index("--max-panels") + 1] = 9
    assert sample.main([str(a) for a in argv], out=io.StringIO(), err=io.StringIO()) == 0
    (steps, steps_what), (tree, tree_what) = shown
    assert "shown" not in " ".join(t.get_text() for t in steps.texts) and tree.axes[0].get_xlabel() == "" and "left out" not in steps_what + tree_what
