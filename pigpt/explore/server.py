"""The explorer's web server: FastAPI over core.Explorer (the JSON API, documented at /docs) and the static page.

Model work runs on one worker thread, one request at a time, so the event loop stays free to serve the page and
other requests; each request waits at most `timeout` seconds, and the work itself stops between decode steps
once its deadline passed (a long request can neither block the page nor hold the server forever).
Bad input is HTTP 400 {"error": "..."}, the line the page shows.
"""

from __future__ import annotations

import asyncio
import time
from concurrent.futures import ThreadPoolExecutor
from importlib import resources
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse
from pydantic import BaseModel, ConfigDict, Field

from .core import MAX_BARS, MAX_DRAWS, ExploreError, Explorer, ExploreTimeout


class Settings(BaseModel):
    """The page's settings (SamplingParams' names); the limits are checked by the explorer."""

    model_config = ConfigDict(extra="forbid")
    temperature: float = 1.0
    top_k: int = 0
    top_p: float = 1.0
    min_p: float = 0.0
    typical_p: float = 1.0
    epsilon_cutoff: float = 0.0
    eta_cutoff: float = 0.0
    repetition_penalty: float = 1.0
    min_new_tokens: int = 0
    max_new_tokens: int = 32
    seed: int = 0
    n: int = 4
    num_beams: int = 4


class StepRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    prompt: str
    path: list[int] = Field(default_factory=list, description="token ids taken after the prompt")
    settings: Settings = Field(default_factory=Settings)
    top: int = Field(12, description=f"bars to show (<= {MAX_BARS})")
    tree: list[list[int]] | None = Field(None, description="paths taken so far: each edge's probability comes back")


class DrawRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    prompt: str
    path: list[int] = Field(default_factory=list)
    settings: Settings = Field(default_factory=Settings)
    times: int = Field(100, description=f"draws, seeds seed .. seed + times - 1 (<= {MAX_DRAWS})")


class GenRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    prompt: str
    settings: Settings = Field(default_factory=Settings)


class RolloutIn(BaseModel):
    tokens: list[int]
    logprobs: list[float] | None = None
    model_logprobs: list[float] | None = None
    seed: int | None = None
    finish_reason: str = "length"


class RewardRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    prompt: str
    reward: str = Field(..., description="python_compiles, contains:WORD or regex:PATTERN (built-ins only)")
    rollouts: list[RolloutIn]
    episode: int = Field(0, description="the rollout whose RL view (transitions) comes back")


def _validation_message(exc: RequestValidationError) -> str:
    parts = []
    for err in exc.errors()[:3]:
        where = ".".join(str(x) for x in err.get("loc", ()) if x != "body")
        parts.append(f"{where or 'body'}: {err.get('msg', 'invalid')}")
    return "; ".join(parts)


def create_app(explorer: Explorer, *, timeout: float = 60.0) -> FastAPI:
    app = FastAPI(title="pigpt explorer", version="1",
                  description="The JSON API of pigpt-explore: the next-token distribution, draws, rollouts, beams and "
                              "rewards, computed by pigpt's decoding engine. Bad input: HTTP 400 {\"error\": ...}.")
    worker = ThreadPoolExecutor(max_workers=1, thread_name_prefix="pigpt-explore")
    app.state.explorer, app.state.worker = explorer, worker
    static = resources.files("pigpt.explore") / "static"
    explorer.rewards_process.start()  # its imports run while the page loads, not in the first reward request

    @app.exception_handler(RequestValidationError)
    async def _bad_json(request: Request, exc: RequestValidationError):
        return JSONResponse({"error": _validation_message(exc)}, status_code=400)

    async def run(fn, *args, **kw) -> Any:
        deadline = time.monotonic() + timeout
        future = worker.submit(fn, *args, deadline=deadline, **kw)
        try:
            return await asyncio.wait_for(asyncio.wrap_future(future), timeout + 1.0)
        except ExploreError as e:
            return JSONResponse({"error": str(e)}, status_code=400)
        except (ExploreTimeout, asyncio.TimeoutError) as e:
            return JSONResponse({"error": str(e) or f"the request took over {timeout:g} s"}, status_code=503)

    @app.get("/", include_in_schema=False)
    async def page():
        return FileResponse(str(static / "index.html"))

    @app.get("/static/{name}", include_in_schema=False)
    async def asset(name: str):
        if name not in ("app.js", "style.css"):  # a fixed list: nothing else on disk is reachable
            return JSONResponse({"error": f"no file {name!r}"}, status_code=404)
        return FileResponse(str(static / name))

    @app.get("/api/info")
    async def info():
        """The model and the limits the page's sliders use."""
        from . import core

        return {"model": explorer.name, "context": explorer.block_size, "vocab": explorer.model.config.vocab_size,
                "text_form": explorer.form.name,
                "limits": {"prompt_tokens": core.MAX_PROMPT_TOKENS, "n": core.MAX_N,
                           "max_new_tokens": core.MAX_NEW_TOKENS, "num_beams": core.MAX_BEAMS,
                           "times": core.MAX_DRAWS, "top": core.MAX_BARS}}

    @app.post("/api/step")
    async def step(req: StepRequest):
        """The next-token distribution after prompt + path: top tokens with raw and processed probability, the
        kept set, the token seed ω draws at t = len(path); with `tree`, every edge's probability."""
        return await run(explorer.step, req.prompt, req.path, req.settings.model_dump(), top=req.top, tree=req.tree)

    @app.post("/api/draw")
    async def draw(req: DrawRequest):
        """The step's token drawn `times` times with seeds ω .. ω+times-1: each token's count and frequency."""
        return await run(explorer.draw, req.prompt, req.path, req.settings.model_dump(), times=req.times)

    @app.post("/api/rollouts")
    async def rollouts(req: GenRequest):
        """generate's n rollouts (seeds ω + i): tokens, per-token log-probs, log π(y|x), text."""
        return await run(explorer.rollouts, req.prompt, req.settings.model_dump())

    @app.post("/api/beams")
    async def beams(req: GenRequest):
        """beam_search's final beams and the running beams at each step, with their scores."""
        return await run(explorer.beams, req.prompt, req.settings.model_dump())

    @app.post("/api/rewards")
    async def rewards(req: RewardRequest):
        """A built-in reward on the given rollouts: reward and group advantage each, and one episode's RL view."""
        return await run(explorer.rewards, req.prompt, req.reward, [r.model_dump() for r in req.rollouts],
                         episode=req.episode)

    return app
