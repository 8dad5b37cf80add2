"""viz: the recomputed per-step distributions against transformers' processors and against what decoding drew;
the rollout tree; the figures' panels; the terminal bar charts."""

import pytest
import torch
import torch.nn.functional as F

from model import GPT, get_tokenizer
from viz import figures
from viz.steps import Processing, processed_logprobs, step_views, summarize
from viz.terminal import bar, render_compare, render_step
from viz.tree import branch_points, build_tree, count_nodes, layout


@pytest.fixture(scope="module")
def gpt(tiny_checkpoint):
    return GPT.from_pretrained(tiny_checkpoint[0])


def _transformers_chain(proc: Processing, prompt_len: int):
    from transformers import (LogitsProcessorList, MinNewTokensLengthLogitsProcessor,
                              RepetitionPenaltyLogitsProcessor, TemperatureLogitsWarper, TopKLogitsWarper,
                              TopPLogitsWarper)

    chain = LogitsProcessorList()
    if proc.repetition_penalty != 1.0:
        chain.append(RepetitionPenaltyLogitsProcessor(proc.repetition_penalty))
    if proc.min_new_tokens:
        chain.append(MinNewTokensLengthLogitsProcessor(prompt_len, proc.min_new_tokens, list(proc.stop_token_ids)))
    chain.append(TemperatureLogitsWarper(proc.temperature))
    if proc.top_k:
        chain.append(TopKLogitsWarper(proc.top_k))
    if proc.top_p < 1.0:
        chain.append(TopPLogitsWarper(proc.top_p))
    return chain


@pytest.mark.parametrize("proc", [
    Processing(temperature=0.7, top_k=20, top_p=0.9, repetition_penalty=1.3, min_new_tokens=3, stop_token_ids=(5,)),
    Processing(temperature=1.5, top_p=0.5, repetition_penalty=0.8),
    Processing(temperature=1.0, top_k=7),
])
def test_processed_logprobs_match_transformers_step_by_step(proc):
    """All steps processed at once (viz) == transformers' processors run step by step on prompt + y_<t."""
    g = torch.Generator().manual_seed(0)
    V, prompt = 64, [3, 9, 9, 17, 5]
    completion = [9, 30, 5, 30, 41, 2]
    logits = torch.randn(len(completion), V, generator=g) * 3  # (T, V)
    ours = processed_logprobs(logits, prompt, completion, proc)
    chain = _transformers_chain(proc, len(prompt))
    for t in range(len(completion)):
        ids = torch.tensor([prompt + completion[:t]])
        ref = F.log_softmax(chain(ids, logits[t:t + 1].clone()), dim=-1)[0]
        assert torch.equal(torch.isinf(ours[t]), torch.isinf(ref)), f"step {t}: different kept sets"
        keep = torch.isfinite(ref)
        torch.testing.assert_close(ours[t][keep], ref[keep], atol=1e-5, rtol=1e-5)


def test_beam_mode_processes_logprobs_like_transformers():
    from transformers import RepetitionPenaltyLogitsProcessor

    g = torch.Generator().manual_seed(1)
    logits = torch.randn(3, 32, generator=g)
    prompt, completion = [1, 2], [4, 1, 7]
    ours = processed_logprobs(logits, prompt, completion, Processing(repetition_penalty=1.5, mode="beam"))
    proc = RepetitionPenaltyLogitsProcessor(1.5)
    for t in range(3):
        ref = proc(torch.tensor([prompt + completion[:t]]), F.log_softmax(logits[t:t + 1], -1))[0]
        torch.testing.assert_close(ours[t], ref)


def test_step_views_agree_with_generate_and_score(gpt):
    """What viz shows for a step is what decoding sampled from: the drawn token's processed log-prob equals
    Rollout.logprobs, and its raw log-prob equals decoding.score."""
    from decoding import SamplingParams, generate, score

    enc = get_tokenizer()
    prompt = enc.encode("Which is the largest ocean?")
    params = SamplingParams(temperature=0.7, top_k=40, top_p=0.9, repetition_penalty=1.3, min_new_tokens=2,
                            max_new_tokens=8, n=3, seed=11)
    rollouts = generate(gpt, [prompt], params)[0]
    proc = Processing(temperature=0.7, top_k=40, top_p=0.9, repetition_penalty=1.3, min_new_tokens=2)
    views = step_views(gpt, prompt, [r.tokens for r in rollouts], proc, top=5, chunk=2)
    assert len(views) == 3
    for r, vs in zip(rollouts, views):
        assert [v.token for v in vs] == r.tokens
        torch.testing.assert_close(torch.tensor([v.token_logprob for v in vs]), torch.tensor(r.logprobs),
                                   atol=2e-4, rtol=0)
        torch.testing.assert_close(torch.tensor([v.token_raw_logprob for v in vs]), score(gpt, prompt, r.tokens),
                                   atol=2e-4, rtol=0)
        for v in vs:
            assert v.token in v.ids and v.kept <= 40
            assert sorted(v.raw, reverse=True)[:5] == v.raw[:5]  # shown by raw probability


def test_greedy_step_views_agree_with_generate(gpt):
    """Greedy: the drawn token is the argmax, and its log-prob is the log-softmax of the penalised logits."""
    from decoding import SamplingParams, generate

    prompt = get_tokenizer().encode("Once upon a time")
    (r,) = generate(gpt, [prompt], SamplingParams(temperature=0, repetition_penalty=1.5, max_new_tokens=6))[0]
    proc = Processing(temperature=0, repetition_penalty=1.5, mode="greedy")
    (views,) = step_views(gpt, prompt, [r.tokens], proc, top=3)
    torch.testing.assert_close(torch.tensor([v.token_logprob for v in views]), torch.tensor(r.logprobs),
                               atol=2e-4, rtol=0)
    for v in views:
        assert v.processed[v.token_index] == max(v.processed)


def test_summarize_keeps_the_drawn_token_and_marks_removed_ones():
    raw = F.log_softmax(torch.tensor([[4.0, 3.0, 2.0, 1.0, 0.0]]), -1)
    proc = processed_logprobs(torch.tensor([[4.0, 3.0, 2.0, 1.0, 0.0]]), [0], [4], Processing(top_k=2))
    (view,) = summarize(raw, proc, [4], top=2)
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
    proc = Processing(temperature=0.8, top_k=10)
    views = step_views(gpt, prompt, [[262, 373, 11, 290, 257], [262, 373]], proc, top=4)
    fig = figures.plot_steps(views[0], enc, proc, prompt_text="Once upon a time")
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


def test_terminal_charts():
    enc = get_tokenizer()
    assert bar(1.0, 10) == "█" * 10 and bar(0.0, 4) == "    " and bar(0.55, 10).startswith("█████▌")
    raw = F.log_softmax(torch.tensor([[5.0, 4.0, 1.0, 0.0]]), -1)
    proc = Processing(top_k=2)
    lp = processed_logprobs(torch.tensor([[5.0, 4.0, 1.0, 0.0]]), [0], [1], proc)
    (view,) = summarize(raw, lp, [1], top=3)
    text = render_step(view, enc, proc, context="Hello", width=100)
    lines = text.splitlines()
    assert "→ '\"'" in lines[0]  # token 1 is '"'
    drawn = [ln for ln in lines if "◀ drawn" in ln]
    assert len(drawn) == 1 and "'\"'" in drawn[0]
    assert sum("cut" in ln for ln in lines) == 1  # token 2 removed by top-k 2
    assert "2 token(s) kept" in text
    cmp = render_compare([0, 1], [0.7, 0.2], [("T=0.5", [0.9, 0.1], 2), ("top-k=1", [1.0, 0.0], 1)], enc, width=100)
    assert "T=0.5" in cmp and "1 token(s)" in cmp and "100.0%" in cmp
