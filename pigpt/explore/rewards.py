"""Rewards for the explorer, scored in a child process that a time bound can kill.

A built-in reward runs no code of the request's choosing, but `regex:PATTERN` runs Python's `re`, which holds the
GIL and cannot be interrupted: a pathological pattern (catastrophic backtracking) would freeze the whole server.
So the explorer scores rewards in one long-lived child (`python -m pigpt.explore.rewards`, started on first
use), with pigpt's own `policy.combine_rewards`: the same reward code as pigpt-sample and pigpt-train. A
request past its bound kills the child (the next one starts a fresh child) and answers 503.

Protocol: one JSON line in ({"spec", "prompts", "completions"}), one JSON line out ({"per_func", "total"} as
lists, NaN allowed, or {"error": "..."}).
"""

from __future__ import annotations

import json
import os
import select
import subprocess
import sys
import time
from pathlib import Path

import torch


class RewardProcess:
    """The child that scores rewards; `score` is a policy.CombinedReward's call, bounded in time."""

    def __init__(self):
        self.proc: subprocess.Popen | None = None

    def start(self) -> subprocess.Popen:
        if self.proc is None or self.proc.poll() is not None:
            # the child imports the same pigpt as this process (a checkout or an install)
            root = str(Path(__file__).resolve().parents[2])
            env = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in (root, os.environ.get("PYTHONPATH")) if p))
            self.proc = subprocess.Popen([sys.executable, "-m", "pigpt.explore.rewards"], stdin=subprocess.PIPE,
                                         stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, env=env)
        return self.proc

    def close(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        self.proc = None

    def score(self, spec: str, prompts: list[str], completions: list[str], *, timeout: float):
        """(per_func (N, 1), total (N,)) float32, as CombinedReward returns them. Raises ValueError with the
        reward's own message on bad input, TimeoutError (child killed) past `timeout` seconds."""
        proc = self.start()
        proc.stdin.write(json.dumps({"spec": spec, "prompts": prompts, "completions": completions}) + "\n")
        proc.stdin.flush()
        end = time.monotonic() + timeout
        while True:  # the first answer may wait for the child's imports (torch): that counts against the bound
            left = end - time.monotonic()
            if left <= 0 or not select.select([proc.stdout], [], [], left)[0]:
                self.close()
                self.start()  # a fresh child, its imports under way before the next request comes
                raise TimeoutError(f"the reward {spec!r} took over {timeout:g} s and was stopped")
            line = proc.stdout.readline()
            if not line:
                self.close()
                raise RuntimeError("the reward process exited; try again")
            answer = json.loads(line)
            if "error" in answer:
                raise ValueError(answer["error"])
            return torch.tensor(answer["per_func"], dtype=torch.float32), torch.tensor(answer["total"],
                                                                                       dtype=torch.float32)


class BoundedReward:
    """A stand-in for policy.CombinedReward (its `names` and its call) whose scoring runs in RewardProcess."""

    def __init__(self, spec: str, process: RewardProcess, timeout: float):
        self.names, self.spec, self.process, self.timeout = [spec], spec, process, timeout

    def __call__(self, prompts, completions, **kwargs):
        return self.process.score(self.spec, list(prompts), list(completions), timeout=self.timeout)


def serve() -> None:
    """The child: score each request line with pigpt's rewards, answer one line."""
    from pigpt.policy import PolicyError, combine_rewards

    for line in sys.stdin:
        req = json.loads(line)
        try:
            per_func, total = combine_rewards([req["spec"]])(req["prompts"], req["completions"])
            out = {"per_func": per_func.tolist(), "total": total.tolist()}
        except PolicyError as e:
            out = {"error": str(e)}
        sys.stdout.write(json.dumps(out) + "\n")
        sys.stdout.flush()


if __name__ == "__main__":
    serve()
