"""pigpt/model/threads.py: fewer threads while other processes hold the cores, back to the job's own count after."""

import subprocess
import sys
import time

import pytest
import torch

from pigpt.model import threads


@pytest.fixture
def fake_proc(monkeypatch):
    """A machine of 4 cores whose /proc readings the test writes: (machine busy s, our own s) at each time."""
    clock = {"t": 100.0, "busy": 0.0, "mine": 0.0, "runnable": 0}  # runnable: other threads at this instant
    monkeypatch.setattr(threads, "_cores", lambda: 4)
    monkeypatch.setattr(threads, "_others_running", lambda: clock["runnable"])
    monkeypatch.setattr(threads, "_busy_seconds", lambda: (clock["busy"], clock["mine"]))
    monkeypatch.setattr(threads.time, "monotonic", lambda: clock["t"])
    monkeypatch.setattr(threads, "_recent", None)
    monkeypatch.delenv("PIGPT_THREADS", raising=False)

    def advance(seconds, others, mine):
        clock["t"] += seconds
        clock["busy"] += (others + mine) * seconds
        clock["mine"] += mine * seconds
        clock["runnable"] = round(others)

    before = torch.get_num_threads()
    torch.set_num_threads(4)
    yield advance
    torch.set_num_threads(before)


def test_threads_follow_the_other_processes_load_and_come_back(fake_proc):
    with threads.Governor() as g:
        assert g.tick() == 4
        fake_proc(0.03, others=2.0, mine=2.0)
        assert g.tick() == 4  # not FIRST yet: no reading
        fake_proc(0.03, others=2.0, mine=2.0)
        assert g.tick() == 2 == torch.get_num_threads()  # two cores taken: two left
        fake_proc(0.1, others=1.0, mine=3.0)
        assert g.tick() == 2  # after the first reading, INTERVAL: no reading yet
        fake_proc(0.15, others=1.0, mine=3.0)
        assert g.tick() == 3
        fake_proc(0.3, others=3.6, mine=0.4)
        assert g.tick() == 1  # never below one
        fake_proc(0.3, others=0.2, mine=1.0)
        assert g.tick() == 4  # the others stopped: the job's own count again, never more
        fake_proc(0.3, others=1.4, mine=2.6)
        assert g.tick() == 3  # 2.6 cores left rounds to 3
    assert torch.get_num_threads() == 4 and g.changes == 5


def test_a_nested_job_defers_and_the_next_job_starts_from_the_last_reading(fake_proc):
    with threads.Governor() as outer:
        fake_proc(0.3, others=3.0, mine=1.0)
        assert outer.tick() == 1
        with threads.Governor() as inner:  # a GRPO step's rollouts
            fake_proc(0.3, others=0.0, mine=4.0)
            assert inner.tick() == 4  # the outer one's decision, from the outer one's cap
        assert torch.get_num_threads() == 4  # the inner exit restored nothing of its own
        fake_proc(0.3, others=3.0, mine=1.0)
        outer.tick()
    assert torch.get_num_threads() == 4
    fake_proc(0.5, others=3.0, mine=0.0)
    with threads.Governor():  # within REMEMBER of the last reading: starts at its count
        assert torch.get_num_threads() == 1
    assert torch.get_num_threads() == 4
    fake_proc(threads.REMEMBER + 1, others=0.0, mine=0.0)
    with threads.Governor():  # an old reading: a look of its own (nobody else runnable now): full width
        assert torch.get_num_threads() == 4


def test_a_job_that_starts_beside_busy_processes_starts_at_the_cores_they_leave(fake_proc, monkeypatch):
    fake_proc(threads.REMEMBER + 1, others=3.0, mine=0.0)  # three other threads runnable now, no recent reading
    with threads.Governor() as g:
        assert torch.get_num_threads() == 1  # before any step: not a first INTERVAL at full width
        fake_proc(threads.FIRST + 0.01, others=0.0, mine=1.0)
        assert g.tick() == 4  # they stopped: the first reading, after FIRST, gives the cores back
    assert torch.get_num_threads() == 4
    looks = iter([2, 0, 2])  # a passing task at one instant is not a neighbour: the least of the looks
    monkeypatch.setattr(threads, "_others_running", lambda: next(looks))
    fake_proc(threads.REMEMBER + 1, others=0.0, mine=0.0)
    with threads.Governor():
        assert torch.get_num_threads() == 4


def test_fixed_turns_it_off(fake_proc, monkeypatch):
    monkeypatch.setenv("PIGPT_THREADS", "fixed")
    with threads.Governor() as g:
        fake_proc(0.5, others=4.0, mine=0.0)
        assert g.tick() == 4


def test_on_this_machine_busy_processes_take_threads_away():
    """Real /proc readings: one busy process per core but one makes the governor drop to fewer threads, and
    after they stop it goes back."""
    cores = threads._cores()
    if cores is None or cores < 2:
        pytest.skip("needs /proc/stat describing this process's cores, and at least two of them")
    before = torch.get_num_threads()
    torch.set_num_threads(cores)
    hogs = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(cores)]
    try:
        with threads.Governor(interval=0.1) as g:
            end = time.monotonic() + 1.5
            while time.monotonic() < end and g.tick() == cores:
                time.sleep(0.02)
            assert torch.get_num_threads() < cores
            for h in hogs:
                h.kill()
                h.wait()
            end = time.monotonic() + 3
            while time.monotonic() < end and g.tick() < cores:
                time.sleep(0.02)
            # back up once they are gone (unless something else on this machine keeps a core busy meanwhile)
            assert torch.get_num_threads() > 1 or _others_now() >= 0.5
        assert torch.get_num_threads() == cores  # the job's own count again at the end
    finally:
        for h in hogs:
            h.kill()
        torch.set_num_threads(before)


def _others_now(seconds: float = 0.3) -> float:
    """Cores' worth of CPU the other processes use now (the governor's reading, taken once)."""
    a, t0 = threads._busy_seconds(), time.monotonic()
    time.sleep(seconds)
    b = threads._busy_seconds()
    return ((b[0] - a[0]) - (b[1] - a[1])) / (time.monotonic() - t0)
