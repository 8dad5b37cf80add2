"""pigpt-explore: the JSON API (FastAPI's TestClient) against the engine itself, bad input (HTTP 400 + a message,
and the server keeps serving), safety (built-in rewards only, 127.0.0.1 by default), and the page in a real
headless Chromium served by a real uvicorn (docs/img/explorer*.png are its screenshots, redrawn with
PIGPT_SCREENSHOTS=docs/img)."""

import math
import os
import shutil
import socket
import tempfile
import threading
import time
from pathlib import Path
from urllib.parse import quote

import pytest
import torch

from pigpt.decoding import SamplingParams, beam_search, encode_prompts, generate
from pigpt.decoding.processors import apply_processors, sampler_logprobs
from pigpt.explore import build_parser, main
from pigpt.explore.core import Explorer
from pigpt.explore.server import create_app
from pigpt.model import GPT
from pigpt.policy import combine_rewards, group_advantages

ROOT = Path(__file__).resolve().parents[1]
PROMPT = "def add(a, b):\n    return"


@pytest.fixture(scope="module")
def explorer():
    return Explorer(GPT.from_pretrained("default"), name="default")


@pytest.fixture(scope="module")
def client(explorer):
    from fastapi.testclient import TestClient

    return TestClient(create_app(explorer, timeout=120))


def prompt_ids(explorer, text=PROMPT):
    return encode_prompts(explorer.model, [text], explorer.tok)[0]


# -- the step view ------------------------------------------------------------------------------------------------
def test_step_is_the_engine_step(client, explorer):
    s = {"temperature": 0.7, "top_k": 5, "repetition_penalty": 1.3, "seed": 11}
    r = client.post("/api/step", json={"prompt": PROMPT, "path": [257], "settings": s, "top": 10})
    assert r.status_code == 200, r.text
    d = r.json()
    # the reference: the processors and the sampler's distribution on a fresh forward of prompt + path
    ids = prompt_ids(explorer) + [257]
    params = SamplingParams(temperature=0.7, top_k=5, repetition_penalty=1.3, seed=11)
    with torch.inference_mode():
        logits = explorer.model(torch.tensor([ids]))[:, -1].float()
    raw = torch.log_softmax(logits[0], -1)
    proc = sampler_logprobs(apply_processors(logits, params, torch.tensor([ids]), 1, [50256]), params)[0]
    assert d["t"] == 1 and d["kept"] == int(torch.isfinite(proc).sum()) == 5
    for b in d["bars"]:
        assert b["p_raw"] == pytest.approx(float(raw[b["id"]].exp()), rel=1e-4, abs=1e-7)
        assert b["p"] == pytest.approx(float(proc[b["id"]].exp()), rel=1e-4, abs=1e-7)
        assert b["kept"] == bool(torch.isfinite(proc[b["id"]]))
    assert {b["id"] for b in d["bars"]} >= set(raw.topk(10).indices.tolist())
    assert sum(b["kept"] for b in d["bars"]) == 5
    # the drawn token: rollout 0 of generate with seed 11 from prompt + path draws it at t = 1 (same key, same logits)
    assert d["drawn"]["id"] in {b["id"] for b in d["bars"] if b["kept"]}


@pytest.mark.parametrize("s", [{"min_p": 0.1}, {"typical_p": 0.2}, {"epsilon_cutoff": 0.01}, {"eta_cutoff": 0.01},
                               {"temperature": 1.2, "top_k": 40, "typical_p": 0.9, "epsilon_cutoff": 1e-3}])
def test_step_with_the_other_rules_is_the_engine_step(client, explorer, s):
    """The page's min-p / typical / epsilon / eta sliders reach the sampler under SamplingParams' names."""
    d = client.post("/api/step", json={"prompt": PROMPT, "settings": s, "top": 12}).json()
    params = SamplingParams(**s)
    with torch.inference_mode():
        logits = explorer.model(torch.tensor([prompt_ids(explorer)]))[:, -1].float()
    proc = sampler_logprobs(logits, params)[0]
    assert d["kept"] == int(torch.isfinite(proc).sum()) < logits.shape[-1]
    for b in d["bars"]:
        assert b["kept"] == bool(torch.isfinite(proc[b["id"]]))
        assert b["p"] == pytest.approx(float(proc[b["id"]].exp()), rel=1e-4, abs=1e-7)


def test_following_the_drawn_tokens_is_rollout_zero(client, explorer):
    s = {"temperature": 0.9, "top_p": 0.9, "seed": 5}
    path = []
    for _ in range(6):
        d = client.post("/api/step", json={"prompt": PROMPT, "path": path, "settings": s}).json()
        path.append(d["drawn"]["id"])
    ref = generate(explorer.model, [prompt_ids(explorer)], SamplingParams(temperature=0.9, top_p=0.9, seed=5,
                                                                          max_new_tokens=6, stop_token_ids=()))[0][0]
    assert path == ref.tokens


def test_slider_move_reuses_the_cached_logits(client, explorer):
    body = {"prompt": PROMPT, "path": [257, 1343], "settings": {"temperature": 1.0}}
    client.post("/api/step", json=body)
    before = explorer.forwards
    for T in (0.3, 0.6, 1.4, 0.0):
        d = client.post("/api/step", json=dict(body, settings={"temperature": T, "top_k": 40})).json()
        assert d["cached"] is True
    assert explorer.forwards == before
    assert d["kept"] == 1 and d["drawn"]["p"] == 1.0  # greedy: a point mass on the argmax
    assert d["drawn"]["id"] == max(d["bars"], key=lambda b: b["p_raw"])["id"]


def test_step_tree_edges(client, explorer):
    tree = [[257, 1343], [275]]
    d = client.post("/api/step", json={"prompt": PROMPT, "path": [], "settings": {"temperature": 0.8},
                                       "tree": tree}).json()
    edges = {tuple(e["path"]): e for e in d["edges"]}
    assert set(edges) == {(257,), (257, 1343), (275,)}
    first = {b["id"]: b for b in d["bars"]}
    assert edges[(257,)]["p"] == pytest.approx(first[257]["p"], rel=1e-5)
    assert edges[(275,)]["p_raw"] == pytest.approx(first[275]["p_raw"], rel=1e-5)


def test_draw_frequencies_follow_the_heights(client, explorer):
    s = {"temperature": 1.0, "top_k": 3, "seed": 100}
    d = client.post("/api/draw", json={"prompt": PROMPT, "settings": s, "times": 1000}).json()
    assert d["seeds"] == [100, 1099] and sum(c["count"] for c in d["counts"]) == 1000
    step = client.post("/api/step", json={"prompt": PROMPT, "settings": s}).json()
    p = {b["id"]: b["p"] for b in step["bars"]}
    assert len(d["counts"]) <= 3
    for c in d["counts"]:  # 1000 draws: within 5 standard errors of the bar's height
        assert abs(c["freq"] - p[c["id"]]) < 5 * math.sqrt(p[c["id"]] * (1 - p[c["id"]]) / 1000) + 1e-9
    # draw i uses seed ω + i at t: the first tokens of generate's rollouts with seed ω
    few = client.post("/api/draw", json={"prompt": PROMPT, "settings": s, "times": 8}).json()
    ref = generate(explorer.model, [prompt_ids(explorer)], SamplingParams(top_k=3, seed=100, n=8, max_new_tokens=1))[0]
    counts = {}
    for r in ref:
        counts[r.tokens[0]] = counts.get(r.tokens[0], 0) + 1
    assert {c["id"]: c["count"] for c in few["counts"]} == counts


# -- rollouts, beams, rewards ---------------------------------------------------------------------------------------
def test_rollouts_equal_generate(client, explorer):
    s = {"temperature": 0.8, "top_k": 40, "top_p": 0.95, "repetition_penalty": 1.2, "min_new_tokens": 2,
         "max_new_tokens": 16, "seed": 7, "n": 5}
    d = client.post("/api/rollouts", json={"prompt": PROMPT, "settings": s}).json()
    params = SamplingParams(temperature=0.8, top_k=40, top_p=0.95, repetition_penalty=1.2, min_new_tokens=2,
                            max_new_tokens=16, seed=7, n=5)
    ref = generate(explorer.model, [prompt_ids(explorer)], params)[0]
    assert len(d["rollouts"]) == 5
    for got, want in zip(d["rollouts"], ref):
        assert got["seed"] == want.seed and got["tokens"] == want.tokens
        assert got["logprobs"] == pytest.approx(want.logprobs, abs=1e-6)
        assert got["model_logprobs"] == pytest.approx(want.model_logprobs, abs=1e-6)
        assert got["model_logprob"] == pytest.approx(sum(want.model_logprobs), abs=1e-4)
        assert got["finish_reason"] == want.finish_reason
        assert got["text"] == explorer.text([t for t in want.tokens if t != 50256])


def test_beams_equal_beam_search(client, explorer):
    s = {"num_beams": 3, "max_new_tokens": 6, "repetition_penalty": 1.1}
    d = client.post("/api/beams", json={"prompt": PROMPT, "settings": s}).json()
    ref = beam_search(explorer.model, [prompt_ids(explorer)], num_beams=3, num_return_sequences=3, max_new_tokens=6,
                      repetition_penalty=1.1)[0]
    assert [b["tokens"] for b in d["beams"]] == [b.tokens for b in ref]
    assert [b["score"] for b in d["beams"]] == pytest.approx([b.score for b in ref], abs=1e-5)
    # the running beams entering step t+1: t+1 tokens each, best first, scores = sums of processed log-probs
    assert len(d["steps"]) >= 1 and all(len(b["tokens"]) == t + 1 for t, row in enumerate(d["steps"]) for b in row)
    assert all(len(row) == 3 for row in d["steps"])
    # every final beam was a running beam at every step before its last token, with its running score (a beam
    # that ran to the length cap at all 5; one that drew <|endoftext|> up to it)
    assert {b["finish_reason"] for b in d["beams"]} <= {"length", "stop"} and len(d["steps"]) == 5
    for b in d["beams"]:
        for t, row in enumerate(d["steps"][:len(b["tokens"]) - 1]):
            mine = [r for r in row if r["tokens"] == b["tokens"][:t + 1]]
            assert mine and mine[0]["score"] == pytest.approx(sum(b["logprobs"][:t + 1]), abs=1e-4)


def test_rewards_and_advantages(client, explorer):
    s = {"temperature": 1.0, "max_new_tokens": 10, "seed": 3, "n": 6}
    ro = client.post("/api/rollouts", json={"prompt": PROMPT, "settings": s}).json()["rollouts"]
    d = client.post("/api/rewards", json={"prompt": PROMPT, "reward": "contains:a", "rollouts": ro, "episode": 2}).json()
    want = combine_rewards(["contains:a"])([PROMPT] * 6, [r["text"] for r in ro])[1]
    assert [r["reward"] for r in d["rollouts"]] == want.tolist()
    assert [r["advantage"] for r in d["rollouts"]] == pytest.approx(group_advantages(want, 6).tolist(), abs=1e-6)
    steps = d["transitions"]
    assert d["episode"] == 2 and [x["action"] for x in steps] == ro[2]["tokens"]
    assert [x["logprob"] for x in steps] == pytest.approx(ro[2]["logprobs"], abs=1e-6)
    assert steps[-1]["reward"] == want[2].item() and steps[-1]["done"] and steps[0]["state"] == PROMPT
    py = client.post("/api/rewards", json={"prompt": "def f():\n    return", "reward": "python_compiles",
                                           "rollouts": [{"tokens": [352, 198]}, {"tokens": [7, 7]}]}).json()
    assert [r["reward"] for r in py["rollouts"]] == [1.0, 0.0]  # " 1\n" compiles, "((" does not


@pytest.mark.parametrize("spec", ["rewards.py:score", "/etc/passwd.py:f", "os:system", "pigpt.policy.rewards:compiles",
                                  "bogus"])
def test_file_and_module_rewards_are_refused(client, spec):
    r = client.post("/api/rewards", json={"prompt": PROMPT, "reward": spec, "rollouts": [{"tokens": [257]}]})
    assert r.status_code == 400
    assert "built-in" in r.json()["error"]


# -- bad input: 400 and a message, and the server keeps serving ----------------------------------------------------
BAD = [
    ("/api/step", {"prompt": ""}, "prompt is empty"),
    ("/api/step", {"prompt": "x" * 3000}, "the limit is"),
    ("/api/step", {"prompt": PROMPT, "settings": {"temperature": -1}}, "temperature"),
    ("/api/step", {"prompt": PROMPT, "settings": {"top_p": 0}}, "top_p"),
    ("/api/step", {"prompt": PROMPT, "settings": {"top_k": -2}}, "top_k"),
    ("/api/step", {"prompt": PROMPT, "settings": {"repetition_penalty": 0}}, "repetition_penalty"),
    ("/api/step", {"prompt": PROMPT, "settings": {"seed": -1}}, "seed"),
    ("/api/step", {"prompt": PROMPT, "settings": {"temperature": "hot"}}, "temperature"),
    ("/api/step", {"prompt": PROMPT, "settings": {"colour": 1}}, "colour"),
    ("/api/step", {"prompt": PROMPT, "path": [99999999]}, "not a token id"),
    ("/api/step", {"prompt": PROMPT, "path": [257] * 300}, "context"),
    ("/api/step", {"prompt": PROMPT, "top": 500}, "top"),
    ("/api/step", {"prompt": PROMPT, "tree": [[257] * 300]}, "context"),
    ("/api/step", {"path": [1]}, "prompt"),
    ("/api/draw", {"prompt": PROMPT, "times": 5000}, "times"),
    ("/api/draw", {"prompt": PROMPT, "times": 0}, "times"),
    ("/api/rollouts", {"prompt": PROMPT, "settings": {"n": 65}}, "n must be"),
    ("/api/rollouts", {"prompt": PROMPT, "settings": {"max_new_tokens": 257}}, "max_new_tokens"),
    ("/api/rollouts", {"prompt": PROMPT, "settings": {"max_new_tokens": 250}}, "context"),
    ("/api/rollouts", {"prompt": PROMPT, "settings": {"min_new_tokens": 9, "max_new_tokens": 4}}, "min_new_tokens"),
    ("/api/beams", {"prompt": PROMPT, "settings": {"num_beams": 9}}, "num_beams"),
    ("/api/beams", {"prompt": PROMPT, "settings": {"num_beams": 0}}, "num_beams"),
    ("/api/rewards", {"prompt": PROMPT, "reward": "regex:(", "rollouts": [{"tokens": [1]}]}, "regular expression"),
    ("/api/rewards", {"prompt": PROMPT, "reward": "contains:", "rollouts": [{"tokens": [1]}]}, "no word"),
    ("/api/rewards", {"prompt": PROMPT, "reward": "python_compiles", "rollouts": []}, "rollouts"),
    ("/api/rewards", {"prompt": PROMPT, "reward": "python_compiles", "rollouts": [{"tokens": [-1]}]}, "token id"),
    ("/api/rewards", {"prompt": PROMPT, "reward": "python_compiles", "rollouts": [{"tokens": [1]}], "episode": 3},
     "episode"),
]


@pytest.mark.parametrize("path,body,needle", BAD, ids=[f"{p}-{n}" for p, _, n in BAD])
def test_bad_input_is_400_with_a_message(client, path, body, needle):
    r = client.post(path, json=body)
    assert r.status_code == 400, r.text
    msg = r.json()["error"]
    assert needle in msg and "\n" not in msg and "Traceback" not in msg
    ok = client.post("/api/step", json={"prompt": PROMPT})  # and the server keeps serving
    assert ok.status_code == 200


def test_bad_json_is_400(client):
    r = client.post("/api/step", content=b"{not json", headers={"Content-Type": "application/json"})
    assert r.status_code == 400 and r.json()["error"]


def test_a_request_past_its_deadline_stops(explorer):
    from fastapi.testclient import TestClient

    slow = TestClient(create_app(explorer, timeout=0.01))
    r = slow.post("/api/rollouts", json={"prompt": PROMPT, "settings": {"n": 64, "max_new_tokens": 200}})
    assert r.status_code == 503 and "time bound" in r.json()["error"]
    assert not explorer.lock.locked()
    assert slow.get("/api/info").status_code == 200


def test_page_and_api_docs_are_served(client):
    import re

    page, js, css = client.get("/"), client.get("/static/app.js"), client.get("/static/style.css")
    assert page.status_code == js.status_code == css.status_code == 200 and "pigpt explorer" in page.text
    # offline: nothing is fetched from elsewhere (the SVG namespace is a name, not a download)
    assert "http" not in page.text and "url(" not in css.text and "@import" not in css.text
    assert set(re.findall(r"https?://[^\s\"'`]+", js.text)) == {"http://www.w3.org/2000/svg"}
    assert client.get("/static/../core.py").status_code == 404
    schema = client.get("/openapi.json").json()
    assert {"/api/step", "/api/draw", "/api/rollouts", "/api/beams", "/api/rewards"} <= set(schema["paths"])
    assert client.get("/docs").status_code == 200


# -- the command line ------------------------------------------------------------------------------------------------
def test_defaults_listen_on_localhost_only():
    args = build_parser().parse_args([])
    assert args.host == "127.0.0.1" and args.model == "default"


def test_cli_bad_input_is_one_line(capsys):
    assert main(["--port", "70000"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--port" in err


def test_cli_without_fastapi_says_how_to_install(monkeypatch, capsys):
    import builtins

    real = builtins.__import__

    def no_fastapi(name, *a, **kw):
        if name in ("fastapi", "uvicorn"):
            raise ImportError(name)
        return real(name, *a, **kw)

    monkeypatch.setattr(builtins, "__import__", no_fastapi)
    assert main([]) == 2
    assert capsys.readouterr().err.strip() == "pigpt-explore needs FastAPI and uvicorn: install them with pip install " \
                                              "'pigpt[explore]'"


def test_cli_warns_off_localhost(monkeypatch, capsys):
    import pigpt.explore as ex

    monkeypatch.setattr(ex, "make_app", lambda *a, **k: (_ for _ in ()).throw(ValueError("stop here")))
    assert main(["--host", "0.0.0.0", "--port", "0"]) == 2
    err = capsys.readouterr().err
    assert "warning: listening on 0.0.0.0" in err and "stop here" in err


def test_cli_taken_port_is_one_line_before_any_loading(monkeypatch, capsys):
    import pigpt.explore as ex

    monkeypatch.setattr(ex, "make_app", lambda *a, **k: pytest.fail("the model was loaded before the port was checked"))
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        assert main(["--port", str(taken.getsockname()[1])]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "cannot listen on 127.0.0.1" in err and "--port" in err


def test_cli_serves_on_localhost(tmp_path):
    """`python -m pigpt.explore --port 0`, as a user starts it: it prints its URL on 127.0.0.1 and answers there."""
    import json
    import os
    import subprocess
    import sys
    import urllib.request

    env = dict(os.environ, PYTHONPATH=str(ROOT))  # this checkout's pigpt, whatever the environment installed
    proc = subprocess.Popen([sys.executable, "-m", "pigpt.explore", "--port", "0"], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, cwd=tmp_path, env=env)
    try:
        line = proc.stdout.readline()
        assert line.startswith("pigpt-explore: default at http://127.0.0.1:"), line + proc.stderr.read()
        base = line.split()[3].rstrip("/")
        with urllib.request.urlopen(base + "/api/info", timeout=60) as r:
            assert json.loads(r.read())["model"] == "default"
        with urllib.request.urlopen(base + "/", timeout=60) as r:
            assert b"pigpt explorer" in r.read()
    finally:
        proc.terminate()
        proc.wait(30)
    assert proc.stderr.read() == ""  # no warning on 127.0.0.1


# -- the page in a real browser ---------------------------------------------------------------------------------------
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def served(explorer):
    """A real uvicorn on 127.0.0.1 and a free port, in a thread."""
    import uvicorn

    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    server = uvicorn.Server(uvicorn.Config(create_app(explorer, timeout=120), log_level="warning"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    for _ in range(200):
        if server.started:
            break
        time.sleep(0.05)
    assert server.started, "uvicorn did not start"
    yield f"http://127.0.0.1:{sock.getsockname()[1]}"
    server.should_exit = True
    thread.join(10)


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    chromium, driver = shutil.which("chromium"), shutil.which("chromedriver")
    if not chromium or not driver:
        pytest.fail("the browser test needs Debian's chromium and its driver: "
                    "apt-get update && apt-get install -y chromium chromium-driver (.ci/run does)")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    opts = webdriver.ChromeOptions()
    opts.binary_location = chromium
    for flag in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--window-size=1400,1000", f"--user-data-dir={tmp_path_factory.mktemp('chromium-profile')}"):
        opts.add_argument(flag)
    b = webdriver.Chrome(service=Service(driver), options=opts)
    b.set_script_timeout(60)
    yield b
    b.quit()


def _wait(check, what: str, timeout: float = 60.0):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        got = check()
        if got:
            return got
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


def _bars(browser):
    return browser.execute_script(
        "return [...document.querySelectorAll('#bars g.bar-row')].map(g => [+g.dataset.id, +g.dataset.p, g.dataset.drawn])")


# Screenshots go to a temp folder; PIGPT_SCREENSHOTS=docs/img redraws the README's (a test leaves the checkout as it was).
SHOTS = Path(os.environ.get("PIGPT_SCREENSHOTS") or tempfile.mkdtemp(prefix="pigpt-shots-"))


def _shot(browser, name: str):
    height = browser.execute_script("return document.documentElement.scrollHeight")
    browser.set_window_size(1400, min(max(height + 120, 700), 3000))
    assert browser.save_screenshot(str(SHOTS / name))


def test_the_page_in_chromium(browser, served, explorer):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys

    SHOTS.mkdir(parents=True, exist_ok=True)
    link = f"{served}/#prompt={quote(PROMPT)}&T=1&k=10&p=1&rep=1&min=0&max=12&n=6&seed=0&beams=3"
    browser.get(link)
    before = _wait(lambda: _bars(browser), "the bars")
    assert len(before) >= 12

    # the temperature slider: five steps left (1.0 -> 0.75), as a user's arrow keys move it
    slider = browser.find_element(By.ID, "s-temperature")
    slider.click()
    slider.send_keys(Keys.HOME)  # a click lands mid-track: start from 0 and walk up to 0.75
    for _ in range(15):
        slider.send_keys(Keys.ARROW_RIGHT)
    assert browser.find_element(By.ID, "n-temperature").get_attribute("value") == "0.75"
    after = _wait(lambda: (b := _bars(browser)) != before and "T=0.75" in browser.find_element(By.ID, "label").text
                  and b, "the bars to change with the temperature")
    p_before, p_after = {i: p for i, p, _ in before}, {i: p for i, p, _ in after}
    top = max(p_before, key=p_before.get)
    assert p_after[top] > p_before[top]  # a lower temperature sharpens the distribution
    assert "T=0.75" in browser.current_url

    # click a bar: the path takes it and the tree gains an edge; back, another bar: the tree branches
    def edges():
        return len(browser.find_elements(By.CSS_SELECTOR, "#tree path.edge"))

    rows = browser.find_elements(By.CSS_SELECTOR, "#bars g.bar-row")
    first, second = rows[0].get_attribute("data-id"), rows[1].get_attribute("data-id")
    rows[1].click()
    _wait(lambda: edges() == 1 and browser.find_element(By.ID, "t").text == "1", "the first edge")
    browser.find_element(By.ID, "btn-back").click()
    _wait(lambda: browser.find_element(By.ID, "t").text == "0", "going back")
    browser.find_element(By.CSS_SELECTOR, f"#bars g.bar-row[data-id='{first}']").click()
    _wait(lambda: edges() == 2, "the tree to gain a branch")
    roots = browser.execute_script("return [...document.querySelectorAll('#tree text.node')].map(t => t.dataset.path)")
    assert sorted(roots) == sorted([first, second])
    browser.find_element(By.ID, "btn-step").click()  # one more step along the drawn token
    _wait(lambda: edges() == 3 and browser.find_element(By.ID, "t").text == "2", "a step along the drawn token")
    browser.find_element(By.ID, "btn-draw").click()
    _wait(lambda: browser.find_elements(By.CSS_SELECTOR, "#bars rect.freq"), "the draw frequencies")
    _shot(browser, "explorer-step.png")

    # rollouts: the same tokens and log-probs as generate with those settings and seeds
    browser.find_element(By.ID, "btn-rollouts").click()
    rows = _wait(lambda: browser.find_elements(By.CSS_SELECTOR, "tr.rollout"), "the rollouts")
    got = [(int(r.get_attribute("data-seed")), [int(x) for x in r.get_attribute("data-tokens").split(",")],
            [float(x) for x in r.get_attribute("data-logprobs").split(",")]) for r in rows]
    with explorer.lock:
        ref = generate(explorer.model, [prompt_ids(explorer)],
                       SamplingParams(temperature=0.75, top_k=10, max_new_tokens=12, n=6, seed=0))[0]
    assert [(s, t) for s, t, _ in got] == [(r.seed, r.tokens) for r in ref]
    for (_, _, lps), r in zip(got, ref):
        assert lps == pytest.approx(r.logprobs, abs=1e-5)

    # beams and rewards, then the whole page
    browser.find_element(By.ID, "btn-beams").click()
    _wait(lambda: browser.find_elements(By.CSS_SELECTOR, "tr.beam"), "the beams")
    browser.find_element(By.ID, "reward").send_keys("contains: a")
    browser.find_element(By.ID, "btn-rewards").click()
    _wait(lambda: browser.find_elements(By.CSS_SELECTOR, "#rlview tr"), "the rewards")
    _shot(browser, "explorer-rollouts.png")

    # the link reproduces the view: the same path, tree and bars in a fresh load
    url, bars_now = browser.current_url, _bars(browser)
    browser.get("about:blank")
    browser.get(url)
    _wait(lambda: _bars(browser) == bars_now and edges() == 3, "the view from the link")

    # bad input reaches the page as the server's message, and the page keeps working
    browser.get(f"{served}/#prompt={quote(PROMPT)}&T=-1")
    msg = _wait(lambda: browser.find_element(By.ID, "error").text, "the error message")
    assert "temperature" in msg
    browser.set_window_size(1400, 1000)


def test_bench_explore_times_cached_slider_moves(served):
    from conftest import load_script

    bench = load_script("benchmarks/bench_explore.py")
    times = bench.slider_moves(served, 3)  # asserts every move hit the logits cache
    assert len(times) == 3 and all(t > 0 for t in times)


def test_rollouts_equal_pigpt_sample(client, capsys):
    import json

    from pigpt.sample import main as sample_main

    s = {"temperature": 0.8, "top_p": 0.9, "max_new_tokens": 8, "seed": 7, "n": 3}
    d = client.post("/api/rollouts", json={"prompt": PROMPT, "settings": s}).json()
    assert sample_main([PROMPT, "-n", "3", "--seed", "7", "--max-new-tokens", "8", "--temperature", "0.8",
                        "--top-p", "0.9", "--json"]) == 0
    lines = [json.loads(x) for x in capsys.readouterr().out.splitlines() if x.startswith("{")]
    assert [(x["seed"], x["tokens"], x["text"]) for x in lines] == \
           [(r["seed"], r["tokens"], r["text"]) for r in d["rollouts"]]
    for x, r in zip(lines, d["rollouts"]):
        assert x["logprobs"] == pytest.approx(r["logprobs"], abs=1e-6)


def test_a_long_request_does_not_block_the_page(served):
    """Model work runs on one worker thread: while a long rollouts request runs, the page and /api/info are
    served; concurrent step requests are serialized and each gets its own answer."""
    import json
    import urllib.request
    from concurrent.futures import ThreadPoolExecutor

    def post(path, body):
        req = urllib.request.Request(served + path, data=json.dumps(body).encode(),
                                     headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=300) as r:
            return json.loads(r.read())

    with ThreadPoolExecutor(9) as pool:
        long = pool.submit(post, "/api/rollouts", {"prompt": PROMPT, "settings": {"n": 64, "max_new_tokens": 200,
                                                                                   "min_new_tokens": 200}})
        time.sleep(0.3)
        with urllib.request.urlopen(served + "/", timeout=60) as r:
            assert r.status == 200
        assert not long.done()  # the page came back while the long request was still running
        temps = [0.5, 0.7, 0.9, 1.1, 1.3, 1.5]
        steps = list(pool.map(lambda T: post("/api/step", {"prompt": PROMPT, "settings": {"temperature": T}}), temps))
        assert len(long.result()["rollouts"]) == 64
    for T, d in zip(temps, steps):
        assert d["label"] == f"T={T:g}"
        alone = post("/api/step", {"prompt": PROMPT, "settings": {"temperature": T}})
        assert [b["p"] for b in alone["bars"]] == [b["p"] for b in d["bars"]]


def test_step_knows_the_length_cap_and_min_new_tokens(client):
    d = client.post("/api/step", json={"prompt": PROMPT, "path": [257, 13],
                                       "settings": {"max_new_tokens": 2, "min_new_tokens": 0}}).json()
    assert d["past_max_new_tokens"] is True
    masked = client.post("/api/step", json={"prompt": PROMPT, "path": [257, 13],
                                            "settings": {"max_new_tokens": 8, "min_new_tokens": 5}}).json()
    eos = [b for b in masked["bars"] if b["id"] == 50256]
    assert not masked["past_max_new_tokens"] and eos and eos[0]["masked"] and eos[0]["p"] == 0.0
    assert eos[0]["p_raw"] > 0  # the model's own probability is shown, cut by min_new_tokens


def test_a_runaway_regex_reward_is_stopped(explorer):
    """re cannot be interrupted, so rewards run in a child process: catastrophic backtracking past the time
    bound kills it (503), the server keeps serving, and the next reward works in a fresh child."""
    from fastapi.testclient import TestClient

    fast = TestClient(create_app(explorer, timeout=4))
    patient = TestClient(create_app(explorer, timeout=120))  # a fresh child may still be importing torch
    ids = explorer.tok.encode("a" * 40 + "!")
    warm = patient.post("/api/rewards", json={"prompt": PROMPT, "reward": "regex:a!", "rollouts": [{"tokens": ids}]})
    assert warm.status_code == 200 and warm.json()["rollouts"][0]["reward"] == 1.0  # the child is up
    r = fast.post("/api/rewards", json={"prompt": PROMPT, "reward": "regex:^(a+)+$", "rollouts": [{"tokens": ids}]})
    assert r.status_code == 503 and "stopped" in r.json()["error"]  # 2**40 ways to fail to match: it never ends
    assert fast.get("/api/info").status_code == 200
    ok = patient.post("/api/rewards", json={"prompt": PROMPT, "reward": "regex:^a+!$", "rollouts": [{"tokens": ids}]})
    assert ok.status_code == 200 and ok.json()["rollouts"][0]["reward"] == 1.0
