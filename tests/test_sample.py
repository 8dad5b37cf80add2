"""sample.py, the CLI: rollouts, JSON lines checked against decoding, pictures, streaming, and every bad input.

Most checks call sample.main(argv) in-process (each subprocess pays ~2-5 s of imports); a few run the real
command line in a subprocess: exit codes, one-line errors, no traceback, the default-model lookup.
"""

import io
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]

from pigpt import sample
from pigpt.model.checkpoint import SHIPPED
from pigpt.model import GPT, get_tokenizer  # noqa: E402

PROMPT = "Which is the largest ocean?"


@pytest.fixture(scope="module")
def ckpt(tiny_checkpoint):
    return str(tiny_checkpoint[0])


@pytest.fixture(scope="module")
def gpt(ckpt):
    return GPT.from_pretrained(ckpt)


def run(*argv):
    out, err = io.StringIO(), io.StringIO()
    code = sample.main([str(a) for a in argv], out=out, err=err)
    return code, out.getvalue(), err.getvalue()


def json_lines(text):
    return [json.loads(line) for line in text.splitlines() if line.strip()]


# -- rollouts and their numbers ---------------------------------------------------------------------------
def test_rollouts_are_printed_with_logprob_and_finish_reason(ckpt):
    code, out, err = run(PROMPT, "--model", ckpt, "-n", 3, "--max-new-tokens", 5, "--seed", 4)
    assert code == 0, err
    heads = [ln for ln in out.splitlines() if ln.startswith("── rollout")]
    assert len(heads) == 3
    for i, h in enumerate(heads):
        assert h.startswith(f"── rollout {i + 1}/3  seed {4 + i}  log π(y|x) = -")
        assert "finish: " in h
    assert sum(ln.startswith(PROMPT) for ln in out.splitlines()) == 3


def test_json_lines_schema_and_values_agree_with_decoding(ckpt, gpt):
    """At temperature 1 with no truncation the sampler's log-probs are the model's: they must equal score()."""
    from pigpt.decoding import SamplingParams, generate, score

    code, out, err = run(PROMPT, "--model", ckpt, "-n", 4, "--max-new-tokens", 6, "--seed", 7, "--json")
    assert code == 0, err
    recs = json_lines(out)
    assert len(recs) == 4
    enc = get_tokenizer()
    prompt = enc.encode(PROMPT)
    expected = generate(gpt, [prompt], SamplingParams(n=4, max_new_tokens=6, seed=7))[0]
    for i, (rec, r) in enumerate(zip(recs, expected)):
        assert set(rec) == {"prompt", "prompt_index", "index", "text", "tokens", "logprobs", "model_logprobs",
                            "sum_logprob", "finish_reason", "seed"}
        assert rec["prompt"] == PROMPT and rec["index"] == i and rec["seed"] == 7 + i
        assert rec["tokens"] == r.tokens and rec["finish_reason"] == r.finish_reason
        assert len(rec["logprobs"]) == len(rec["tokens"])
        assert math.isclose(rec["sum_logprob"], sum(rec["logprobs"]), abs_tol=1e-6)
        torch.testing.assert_close(torch.tensor(rec["logprobs"]), score(gpt, prompt, rec["tokens"]),
                                   atol=1e-5, rtol=0)
        assert rec["model_logprobs"] == pytest.approx(rec["logprobs"], abs=1e-5)  # T = 1, nothing truncated
        body = rec["tokens"][:-1] if rec["finish_reason"] == "stop" else rec["tokens"]
        assert rec["text"] == enc.decode(body)


def test_json_with_truncation_and_steps(ckpt):
    code, out, err = run(PROMPT, "--model", ckpt, "-n", 2, "--max-new-tokens", 4, "--seed", 1, "--json",
                         "--temperature", "0.5", "--top-k", 3, "--show-steps", "--top-tokens", 3)
    assert code == 0, err
    for rec in json_lines(out):
        assert len(rec["steps"]) == len(rec["tokens"])
        for step, tok, lp in zip(rec["steps"], rec["tokens"], rec["logprobs"]):
            assert step["token"] == tok and step["kept"] <= 3
            assert math.isclose(math.log(step["p"]), lp, abs_tol=2e-4)
            assert any(t["token"] == tok for t in step["top"])


def test_min_p_and_epsilon_flags_reach_the_sampler(ckpt, gpt):
    """--min-p / --typical-p / --epsilon-cutoff: the rollouts and log-probs of SamplingParams(min_p=,
    typical_p=, epsilon_cutoff=), and the pictures' label names them."""
    from pigpt.decoding import SamplingParams, generate

    code, out, err = run(PROMPT, "--model", ckpt, "-n", 2, "--max-new-tokens", 4, "--seed", 3, "--json",
                         "--temperature", "1.5", "--min-p", "0.1", "--typical-p", "0.9", "--epsilon-cutoff", "0.001")
    assert code == 0, err
    params = SamplingParams(n=2, max_new_tokens=4, seed=3, temperature=1.5, min_p=0.1, typical_p=0.9,
                            epsilon_cutoff=0.001)
    expected = generate(gpt, [get_tokenizer().encode(PROMPT)], params)[0]
    for rec, r in zip(json_lines(out), expected):
        assert rec["tokens"] == r.tokens and rec["logprobs"] == pytest.approx(r.logprobs, abs=1e-6)
    code, out, err = run(PROMPT, "--model", ckpt, "--max-new-tokens", 2, "--seed", 0, "--min-p", "0.2",
                         "--show-steps")
    assert code == 0, err
    assert "after T=1 min-p=0.2" in out


def test_presence_and_frequency_penalty_flags_reach_the_processors(ckpt, gpt):
    from pigpt.decoding import SamplingParams, generate

    code, out, err = run(PROMPT, "--model", ckpt, "--max-new-tokens", 8, "--temperature", "0", "--json",
                         "--presence-penalty", "1.5", "--frequency-penalty", "0.5")
    assert code == 0, err
    params = SamplingParams(max_new_tokens=8, temperature=0, presence_penalty=1.5, frequency_penalty=0.5)
    (r,) = generate(gpt, [get_tokenizer().encode(PROMPT)], params)[0]
    (rec,) = json_lines(out)
    assert rec["tokens"] == r.tokens and rec["logprobs"] == pytest.approx(r.logprobs, abs=1e-6)


def test_streamed_output(ckpt):
    """One rollout streams its text as it is drawn; the text is the one --json reports for the same seed."""
    code, out, err = run(PROMPT, "--model", ckpt, "--max-new-tokens", 5, "--seed", 3)
    assert code == 0, err
    lines = out.splitlines()
    assert lines[1].startswith("── rollout 1/1  seed 3")
    (rec,) = json_lines(run(PROMPT, "--model", ckpt, "--max-new-tokens", 5, "--seed", 3, "--json")[1])
    assert lines[0] == PROMPT + rec["text"]


def test_greedy_runs_print_no_seed(ckpt):
    code, out, err = run(PROMPT, "--model", ckpt, "--max-new-tokens", 3, "--temperature", 0, "-n", 2)
    assert code == 0, err
    assert out.count("── rollout") == 2 and "seed" not in out
    recs = json_lines(run(PROMPT, "--model", ckpt, "--max-new-tokens", 3, "--temperature", 0, "--json")[1])
    assert recs[0]["seed"] is None


def test_no_prompt_samples_unconditionally(ckpt, gpt):
    """No prompt: what the model writes after <|endoftext|> (as train.py's end-of-run samples)."""
    from pigpt.decoding import SamplingParams, generate

    code, out, err = run("--model", ckpt, "--max-new-tokens", 4, "--seed", 1, "--json")
    assert code == 0, err
    (rec,) = json_lines(out)
    (want,) = generate(gpt, [[50256]], SamplingParams(max_new_tokens=4, seed=1))[0]
    assert rec["prompt"] == "<|endoftext|>" and rec["tokens"] == want.tokens


def test_rewards_are_printed_and_in_json(ckpt, tmp_path):
    f = tmp_path / "r.py"
    f.write_text("def length(prompts, completions, **kw):\n    return [float(len(c)) for c in completions]\n")
    code, out, err = run(PROMPT, "--model", ckpt, "-n", 3, "--max-new-tokens", 4, "--seed", 2, "--json",
                         "--reward", f"{f}:length", "--reward", "regex:.")
    assert code == 0, err
    recs = json_lines(out)
    for rec in recs:
        assert rec["rewards"] == {f"{f}:length": float(len(rec["text"])), "regex:.": 1.0 if rec["text"] else 0.0}
        assert rec["reward"] == pytest.approx(sum(rec["rewards"].values()))
    assert sum(r["advantage"] for r in recs) == pytest.approx(0.0, abs=1e-5)  # the group's GRPO advantages
    steps = tmp_path / "steps.jsonl"
    code, out, err = run(PROMPT, "--model", ckpt, "-n", 3, "--max-new-tokens", 4, "--seed", 2, "--json",
                         "--reward", f"{f}:length", "--transitions", steps)
    assert code == 0, err
    trans = json_lines(steps.read_text())
    assert len(trans) == sum(len(r["tokens"]) for r in json_lines(out))
    assert trans[0]["state"] == PROMPT and trans[0]["action"] == recs[0]["tokens"][0]
    code, out, err = run(PROMPT, "--model", ckpt, "-n", 2, "--max-new-tokens", 4, "--reward", "contains:the")
    assert code == 0, err
    assert out.count("  reward ") == 2
    code, out, err = run(PROMPT, "--model", ckpt, "--reward", "nosuchreward")
    assert code == 2 and err.startswith("sample.py: error: --reward") and err.count("\n") == 1


def test_show_steps_prints_one_chart_per_step(ckpt):
    code, out, err = run(PROMPT, "--model", ckpt, "-n", 2, "--max-new-tokens", 4, "--seed", 0, "--top-p", "0.8",
                         "--show-steps")
    assert code == 0, err
    import re

    n_tokens = sum(int(m) for m in re.findall(r"\((\d+) tokens?, finish", out))
    assert n_tokens >= 2
    assert sum(ln.startswith("step ") for ln in out.splitlines()) == n_tokens
    assert out.count("◀ drawn") == n_tokens
    assert "after T=1 top-p=0.8" in out


def test_beam_search_json_matches_decoding(ckpt, gpt):
    from pigpt.decoding import beam_search

    code, out, err = run(PROMPT, "--model", ckpt, "--num-beams", 3, "--max-new-tokens", 5, "--length-penalty", 0.5,
                         "--json")
    assert code == 0, err
    recs = json_lines(out)
    prompt = get_tokenizer().encode(PROMPT)
    beams = beam_search(gpt, [prompt], num_beams=3, max_new_tokens=5, length_penalty=0.5, num_return_sequences=3)[0]
    assert [r["tokens"] for r in recs] == [b.tokens for b in beams]
    for r, b in zip(recs, beams):
        assert math.isclose(r["score"], b.score, abs_tol=1e-4)
        # the per-token scores add up to the beam's score before the length penalty
        assert math.isclose(r["sum_logprob"] / len(r["tokens"]) ** 0.5, b.score, abs_tol=1e-4)
        assert r["seed"] is None


def test_compare_temperatures_and_top_k(ckpt, tmp_path):
    code, out, err = run(PROMPT, "--model", ckpt, "--compare-top-k", "1,3", "--json", "--top-tokens", 4)
    assert code == 0, err
    (rec,) = json_lines(out)
    k1, k3 = rec["settings"]
    assert k1["kept"] == 1 and k1["p"][0] == pytest.approx(1.0) and k1["p"][1:] == [0.0] * 3
    assert k3["kept"] == 3 and sum(k3["p"][:3]) == pytest.approx(1.0, abs=1e-5)
    code, out, err = run(PROMPT, "--model", ckpt, "--compare-temperatures", "0.5,1,2", "--plot", tmp_path / "c.png")
    assert code == 0, err
    assert "under 3 settings" in out and "T=0.5" in out and "T=2" in out
    assert "(3 panels, one per setting)" in err
    assert (tmp_path / "c.png").read_bytes()[:4] == b"\x89PNG"


@pytest.mark.parametrize("flag,field,values", [("--compare-min-p", "min_p", "0,0.3"),
                                               ("--compare-typical-p", "typical_p", "0.2,0.9"),
                                               ("--compare-epsilon-cutoff", "epsilon_cutoff", "1e-3,0.05"),
                                               ("--compare-eta-cutoff", "eta_cutoff", "1e-3,0.05")])
def test_compare_the_other_rules(ckpt, gpt, flag, field, values):
    """--compare-min-p / -typical-p / -epsilon-cutoff / -eta-cutoff: each panel is process_logits under that value."""
    from pigpt.kernels import process_logits

    code, out, err = run(PROMPT, "--model", ckpt, flag, values, "--json", "--top-tokens", 6)
    assert code == 0, err
    (rec,) = json_lines(out)
    with torch.no_grad():
        logits = gpt(torch.tensor([get_tokenizer().encode(PROMPT)]))[:, -1].float()
    for setting, v in zip(rec["settings"], map(float, values.split(","))):
        ref = process_logits(logits, **{field: v})[0]
        assert setting[field] == v and setting["kept"] == int(ref.isfinite().sum())
        assert setting["p"] == pytest.approx(ref[rec["tokens"]].exp().tolist(), abs=1e-6)


def test_plot_and_tree_files(ckpt, tmp_path):
    plot, tree = tmp_path / "steps.png", tmp_path / "tree.png"
    code, out, err = run(PROMPT, "--model", ckpt, "-n", 4, "--max-new-tokens", 6, "--seed", 2, "--plot", plot,
                         "--tree", tree, "--json", "--temperature", "2")
    assert code == 0, err
    recs = json_lines(out)
    panels = min(6, len(recs[0]["tokens"]))
    assert f"({panels} panels, one per step of rollout 1)" in err
    assert all("steps" not in r for r in recs)  # the steps go to the picture; --show-steps would add them
    prefixes = {tuple(r["tokens"][:t]) for r in recs for t in range(1, len(r["tokens"]) + 1)}
    assert f"(1 panel, {len(prefixes)} nodes)" in err
    for f in (plot, tree):
        assert f.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    code, out, err = run(PROMPT, "--model", ckpt, "--num-beams", 2, "--max-new-tokens", 3, "--tree",
                         tmp_path / "beams.svg", "--plot", tmp_path / "b.png", "--max-panels", 2)
    assert code == 0, err
    assert "(2 panels" in err and (tmp_path / "beams.svg").stat().st_size > 1000


def test_prompt_file_several_prompts(ckpt, tmp_path):
    f = tmp_path / "prompts.txt"
    f.write_text("Hello there\n\nThe sea is\n")
    code, out, err = run("--prompt-file", f, "--model", ckpt, "-n", 2, "--max-new-tokens", 3, "--seed", 0, "--json")
    assert code == 0, err
    recs = json_lines(out)
    assert [(r["prompt"], r["index"]) for r in recs] == [("Hello there", 0), ("Hello there", 1),
                                                        ("The sea is", 0), ("The sea is", 1)]


def test_default_model_is_the_shipped_one(monkeypatch, ckpt, tmp_path):
    monkeypatch.setitem(SHIPPED, "default", Path(ckpt))
    code, out, err = run("Hi", "--max-new-tokens", 2, "--seed", 0)
    assert code == 0, err
    assert "model: default model (" in err
    monkeypatch.setitem(SHIPPED, "default", tmp_path / "missing")
    code, out, err = run("Hi", "--max-new-tokens", 2)
    assert code == 2 and err.count("\n") == 1
    assert "no model: the shipped default" in err and "--model DIR" in err and "pigpt-train" in err


# -- bad input: one line, exit code 2 -------------------------------------------------------------------------
BAD = [
    (["--temperature", "-1"], "--temperature must be >= 0"),
    (["--top-p", "0"], "--top-p must be in (0, 1]"),
    (["--top-p", "1.5"], "--top-p must be in (0, 1]"),
    (["--top-k", "-2"], "--top-k must be >= 0"),
    (["--min-p", "1.5"], "--min-p must be in [0, 1] (0 turns min-p off), got 1.5"),
    (["--epsilon-cutoff", "1"], "--epsilon-cutoff must be in [0, 1) (0 turns it off), got 1.0"),
    (["--eta-cutoff", "1"], "--eta-cutoff must be in [0, 1) (0 turns it off), got 1.0"),
    (["--typical-p", "0"], "--typical-p must be in (0, 1] (1 turns it off), got 0.0"),
    (["--compare-typical-p", "0.5,1.5"], "--compare-typical-p: each value must be in (0, 1] (1 turns it off), got 1.5"),
    (["--compare-min-p", "0.1", "--compare-eta-cutoff", "0.01"], "one --compare-* option at a time"),
    (["--presence-penalty", "2.5"], "--presence-penalty must be in [-2, 2] (0 turns it off), got 2.5"),
    (["--frequency-penalty", "-3"], "--frequency-penalty must be in [-2, 2] (0 turns it off), got -3.0"),
    (["-n", "0"], "-n/--num-rollouts must be >= 1"),
    (["--repetition-penalty", "0"], "--repetition-penalty must be > 0"),
    (["--max-new-tokens", "0"], "--max-new-tokens must be >= 1"),
    (["--min-new-tokens", "9", "--max-new-tokens", "4"], "--min-new-tokens (9) must be <= --max-new-tokens (4)"),
    (["--num-beams", "2", "--num-return-sequences", "3"], "--num-return-sequences must be in [1, --num-beams=2]"),
    (["--compare-temperatures", "a,b"], "--compare-temperatures expects comma-separated float values"),
    (["--compare-top-k", "1", "--compare-top-p", "0.5"], "one --compare-* option at a time"),
    (["--plot", "/nonexistent-dir/x.png"], "--plot /nonexistent-dir/x.png: cannot write there, directory"),
    (["--plot", "/proc/x.png"], "--plot /proc/x.png: cannot write there"),
    (["--tree", "tree.txt"], "--tree tree.txt: picture files must end in .png, .svg, .pdf"),
    (["--top-k", "x"], "argument --top-k: invalid int value: 'x'"),
    (["--max-new-tokens", "100"], "exceeds the model's context of 128 tokens; use --max-new-tokens"),
    (["--model", "/nonexistent/model-dir"], "--model /nonexistent/model-dir: /nonexistent/model-dir: no such directory"),
]


@pytest.mark.parametrize("extra,message", BAD, ids=[m[:30] for _, m in BAD])
def test_bad_input_is_one_line_and_exit_2(ckpt, extra, message):
    argv = [PROMPT] + (["--model", ckpt] if "--model" not in extra else []) + extra
    if "--max-new-tokens" in extra and "100" in extra:
        argv[0] = "word " * 40  # 41 tokens + 100 > 128
    code, out, err = run(*argv)
    assert code == 2
    assert out == ""
    assert err.count("\n") == 1 and err.startswith("sample.py: error: ")
    assert message in err


def test_bad_prompts(ckpt, tmp_path):
    for argv, message in [
        ([""], "the prompt is empty"),
        ([" \t\n "], "the prompt is empty (or only whitespace)"),
        ([("word " * 200).strip()], "the prompt is 200 tokens, longer than the model's context of 128 tokens"),
        (["--prompt-file", tmp_path / "missing.txt"], f"cannot read --prompt-file {tmp_path / 'missing.txt'}: "
                                                      "No such file or directory"),
        (["--prompt-file", tmp_path], "cannot read --prompt-file"),
    ]:
        code, out, err = run(*argv, "--model", ckpt)
        assert code == 2 and err.count("\n") == 1, (argv, err)
        assert message in err, err
    blank = tmp_path / "blank.txt"
    blank.write_text("\n  \n")
    code, _, err = run("--prompt-file", blank, "--model", ckpt)
    assert code == 2 and "holds no prompts" in err


# -- the real command line ----------------------------------------------------------------------------------
def _cli(*argv, cwd=ROOT, env=None):
    e = dict(os.environ, HF_HUB_OFFLINE="1", **(env or {}))
    return subprocess.run([sys.executable, str(ROOT / "sample.py"), *map(str, argv)], cwd=cwd, env=e,
                          capture_output=True, text=True, timeout=120)


def test_cli_subprocess_rollouts_and_errors(ckpt, tmp_path):
    p = _cli(PROMPT, "--model", ckpt, "-n", 2, "--max-new-tokens", 4, "--seed", 1, "--tree", tmp_path / "t.png")
    assert p.returncode == 0, p.stderr
    assert p.stdout.count("── rollout") == 2 and (tmp_path / "t.png").exists()
    p = _cli(PROMPT, "--model", ckpt, "--temperature", "-0.5")
    assert p.returncode == 2 and "Traceback" not in p.stderr
    assert p.stderr == "sample.py: error: --temperature must be >= 0 (0 is greedy), got -0.5\n"
    p = _cli("--help")
    assert p.returncode == 0 and "examples:" in p.stdout and "--compare-temperatures" in p.stdout


# -- what a newcomer hit (issue 20) ---------------------------------------------------------------------------
def test_stop_reads_backslash_escapes_as_the_shell_passes_them():
    """`--stop "\\n\\n"` reaches sample.py as backslash, n, backslash, n: it must stop at a blank line. On the
    shipped model (trained on Python) the same seeds without --stop run on past blank lines."""
    argv = ("def add(a, b):", "-n", 6, "--seed", 0, "--max-new-tokens", 40, "--json")
    code, out, err = run(*argv)
    assert code == 0, err
    free = json_lines(out)
    assert sum("\n\n" in r["text"] for r in free) >= 1
    code, out, err = run(*argv, "--stop", "\\n\\n")  # what the shell passes for "\n\n"
    assert code == 0, err
    for a, b in zip(json_lines(out), free):
        assert b["tokens"][:len(a["tokens"])] == a["tokens"]  # the same draws ...
        if "\n\n" in b["text"]:  # ... cut at the first blank line
            assert a["finish_reason"] == "stop" and len(a["tokens"]) < len(b["tokens"]) and "\n\n" in a["text"]
        else:
            assert (a["tokens"], a["finish_reason"]) == (b["tokens"], b["finish_reason"])
    code, out, err = run(*argv, "--stop", "\\\\n\\\\n")  # an escaped backslash is a backslash: no match here
    assert code == 0 and [r["tokens"] for r in json_lines(out)] == [r["tokens"] for r in free]
    assert '--stop "\\n\\n" stops at a blank line' in " ".join(sample.build_parser().format_help().split())


def _ctrl_c_at(monkeypatch, k):
    """A Ctrl-C that lands while the engine computes step k (0-based): steps 0..k-1 were drawn."""
    import pigpt.decoding.engine as engine

    real = engine.steps

    def steps(*a, **kw):
        for step in real(*a, **kw):
            if step.t == k:
                raise KeyboardInterrupt
            yield step

    monkeypatch.setattr(engine, "steps", steps)


def test_ctrl_c_prints_what_was_drawn_and_exits_130(ckpt, monkeypatch):
    argv = (PROMPT, "--model", ckpt, "-n", 4, "--max-new-tokens", 8, "--seed", 3)
    code, out, err = run(*argv, "--json")
    assert code == 0, err
    full = json_lines(out)
    _ctrl_c_at(monkeypatch, 3)
    code, out, err = run(*argv, "--json")
    assert code == 130
    cut = json_lines(out)
    assert [r["index"] for r in cut] == [0, 1, 2, 3]
    for a, b in zip(cut, full):
        if len(b["tokens"]) <= 3:  # finished before the Ctrl-C: kept whole
            assert a == b
        else:
            assert a["finish_reason"] == "interrupted" and a["tokens"] == b["tokens"][:3]
            assert a["logprobs"] == b["logprobs"][:3] and a["seed"] == b["seed"]
    assert sum(r["finish_reason"] == "interrupted" for r in cut) >= 1
    assert err.count("\n") == 1 and err.startswith("interrupted (Ctrl-C) after 3 of 8 steps: ")
    code, out, err = run(*argv, "--reward", "contains:e")  # the terminal view: marked, no rewards of half-text
    assert code == 130 and out.count("finish: interrupted (Ctrl-C)") >= 1 and out.count("── rollout") == 4
    assert " reward " not in out and "no rewards scored" in err
    code, out, err = run(*argv[:3], "--max-new-tokens", 8, "--seed", 3)  # one rollout, streamed as it is drawn
    assert code == 130 and "finish: interrupted (Ctrl-C)" in out and "after 3 of 8 steps" in err


def test_ctrl_c_outside_generation_is_one_line_and_exit_130(ckpt, monkeypatch):
    def interrupted(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(sample, "load_model", interrupted)
    code, out, err = run(PROMPT, "--model", ckpt)
    assert code == 130 and out == "" and err.strip() == "sample.py: interrupted (Ctrl-C)"


def test_a_group_of_one_says_it_has_no_advantage(ckpt):
    code, out, err = run(PROMPT, "--model", ckpt, "--max-new-tokens", 4, "--seed", 0, "--reward", "contains:e")
    assert code == 0, err
    assert " reward " in out and "advantage" not in out
    assert "with -n 1 there is no advantage" in err and "use -n 2 or more" in err
    code, out, err = run(PROMPT, "--model", ckpt, "--max-new-tokens", 4, "--seed", 0, "--reward", "contains:e",
                         "--json")
    (rec,) = json_lines(out)
    assert code == 0 and rec["advantage"] is None and rec["reward"] in (0.0, 1.0)
