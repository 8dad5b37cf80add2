"""Threads that make way: fewer of torch's threads while other processes keep this machine's cores busy.

Why: torch's OpenMP threads meet at a barrier after every parallel region (and pigpt's CPU kernels several times a
decode step). When another process holds a core, one of our threads is descheduled for a whole time slice while
the others spin at the barrier, and every step waits for it: with two busy processes on 2 cores, decode ran 4-6x
slower and a GRPO demo 8x, where a fair share of the CPU would cost 2x (issue 26's measurements). Sleeping at the
barrier instead (OMP_WAIT_POLICY=PASSIVE) fixes the busy case but costs 10-40% on a quiet machine, and it can only
be chosen before torch is imported. So pigpt keeps torch's spinning pool and runs fewer threads while the cores
are taken: one thread has no barrier to wait at.

`Governor` samples, every `INTERVAL` seconds of a long job, how much CPU the *other* processes used (the
machine's busy time in /proc/stat less this process's own, /proc/self/stat) and sets torch's thread count to the
cores left over, rounded, at least 1 and never more than the count the job started with (which it restores at
the end). The decode loop (decoding/engine.py) and the GRPO trainer run under one.

A job's first INTERVAL would otherwise run at full width against whatever holds the cores, and a generate call
is often only a few INTERVALs long: at the start it counts the other processes' threads runnable at that instant
(/proc/loadavg's running count less our own, the least of a few looks a moment apart, so that a passing task
isn't taken for a neighbour), starts at the cores they leave, and takes its first reading after FIRST seconds.
Two busy processes beside 32-token generate calls (2-vCPU EPYC, one process, 6 interleaved rounds, float32): batch 1
went from 2.03x to 1.73x of the quiet time, n = 8 from 2.42x to 2.14x; one fixed thread throughout gave 1.77x and
2.00x.

What it changes: only how many threads run. In batch-invariant mode (model/invariant.py) results are the same
bits at every thread count; otherwise torch's products may round differently with another thread count, as
they may between machines. `PIGPT_THREADS=fixed` turns it off (the thread count stays what you set); it is off
where /proc/stat is unreadable, or describes more CPUs than this process may run on (a container's view of a
bigger host), where the reading would not be about our cores.
"""

from __future__ import annotations

import os
import time

import torch

INTERVAL = 0.2  # seconds between readings: a few time slices, and far less than a long job
FIRST = 0.05  # seconds to the first reading, after the guess from the runnable count: 5 ticks of each core
LOOKS = 3  # instant looks at the runnable count, LOOK seconds apart; the least is the guess
LOOK = 0.0002
REMEMBER = 2.0  # seconds a reading still describes the machine for the next job
_recent = None  # (when, its /proc reading, the thread count it chose): the last reading, for the next job
_active = None  # the governor in charge now (one per process: nested ones defer to it)
_TICKS = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def _cores() -> int | None:
    """This process's CPUs, when /proc/stat describes exactly those (else None: the reading would mislead)."""
    try:
        with open("/proc/stat") as f:
            n = sum(1 for line in f if line.startswith("cpu") and line[3:4].isdigit())
        allowed = len(os.sched_getaffinity(0))
    except (OSError, AttributeError):
        return None
    return allowed if n == allowed else None


def _busy_seconds() -> tuple[float, float] | None:
    """(CPU seconds the whole machine has been busy, CPU seconds this process has used), both since boot."""
    try:
        with open("/proc/stat") as f:
            fields = [int(x) for x in f.readline().split()[1:]]
        with open("/proc/self/stat") as f:
            mine = f.read().rsplit(")", 1)[1].split()
    except (OSError, ValueError, IndexError):
        return None
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)  # idle + iowait
    busy = sum(fields[:8]) - idle  # user nice system irq softirq, and steal: time the hypervisor gave away
    return busy / _TICKS, (int(mine[11]) + int(mine[12])) / _TICKS  # utime + stime, all our threads


def _others_running() -> int | None:
    """Threads of other processes runnable at this instant: /proc/loadavg's count of running tasks less the
    threads of ours that are (the main thread reading it, torch's workers still spinning after an op)."""
    try:
        with open("/proc/loadavg") as f:
            running = int(f.read().split()[3].split("/")[0])
        mine = 0
        for tid in os.listdir("/proc/self/task"):
            try:
                with open(f"/proc/self/task/{tid}/stat") as f:
                    mine += f.read().rsplit(")", 1)[1].split()[0] == "R"
            except OSError:  # a thread that ended between the listing and the read
                pass
    except (OSError, ValueError, IndexError):
        return None
    return max(0, running - mine)


def _others_guess() -> int | None:
    """The least of LOOKS instant counts: a neighbour that keeps a core busy is runnable at every look."""
    looks = []
    for i in range(LOOKS):
        if i:
            time.sleep(LOOK)
        n = _others_running()
        if n is None:
            return None
        looks.append(n)
    return min(looks)


class Governor:
    """Sets torch's thread count from the other processes' CPU use while it is entered (see the module's doc).

        with Governor() as g:
            for step in ...:
                g.tick()       # cheap: reads /proc only every INTERVAL seconds
    """

    def __init__(self, interval: float = INTERVAL):
        self.interval = interval
        self.cores = _cores() if os.environ.get("PIGPT_THREADS", "auto") != "fixed" else None
        self.cap = torch.get_num_threads()
        self.changes = 0  # how many times the count changed (tests, benchmarks)
        self._last = None
        self._first = False  # the next reading is the job's first (taken after FIRST, not INTERVAL)
        self.outer = None

    def __enter__(self):
        global _recent, _active
        if _active is not None:  # inside another job's governor (a GRPO step's rollouts): that one decides
            self.outer = _active
            return self
        self.outer, _active = None, self
        self.cap = torch.get_num_threads()
        if self.cores is not None and self.cap > 1:
            now = time.monotonic()
            if _recent is not None and now - _recent[0] < REMEMBER and _recent[2] <= self.cap:
                # a job that follows another (rollout after rollout) starts where the last one's reading left off,
                # rather than spending its first INTERVAL at full width against the same neighbours
                self._last = _recent[:2]
                if _recent[2] != self.cap:
                    torch.set_num_threads(_recent[2])
            else:
                others = _others_guess()
                start = self.cap if others is None else self.threads_for(others)
                if start != self.cap:
                    torch.set_num_threads(start)
                self._last, self._first = (time.monotonic(), _busy_seconds()), True
        return self

    def __exit__(self, *exc):
        global _active
        if self.outer is not None:
            return False
        _active = None
        if torch.get_num_threads() != self.cap:
            torch.set_num_threads(self.cap)
        self._last = None
        return False

    def tick(self) -> int:
        """Look again if INTERVAL has passed; returns the thread count now in use."""
        if self.outer is not None:
            return self.outer.tick()
        if self._last is None:
            return torch.get_num_threads()
        now = time.monotonic()
        t0, s0 = self._last
        if now - t0 < (FIRST if self._first else self.interval):
            return torch.get_num_threads()
        s1 = _busy_seconds()
        self._last, self._first = (now, s1), False
        if s0 is None or s1 is None:
            return torch.get_num_threads()
        others = max(0.0, (s1[0] - s0[0]) - (s1[1] - s0[1])) / (now - t0)  # cores the others kept busy
        want = self.threads_for(others)
        if want != torch.get_num_threads():
            torch.set_num_threads(want)
            self.changes += 1
        global _recent
        _recent = (now, s1, want)
        return want

    def threads_for(self, others: float) -> int:
        """The thread count for `others` cores' worth of other processes' work: the cores left, rounded."""
        return max(1, min(self.cap, int(self.cores - others + 0.5)))
