"""Building and loading the CPU decode kernels (pigpt/model/cpu_decode.py, cbuild.py, csrc/): the compiled-library
cache loads only a file this user built, unchanged; the C and Python views of the interface agree; a failing
compiler costs one line on stderr and the torch path runs."""

import hashlib
import os
import shutil
import stat
import subprocess
import sys

import pytest
import torch

from pigpt import SamplingParams, generate
from pigpt.model import GPT, GPTConfig, cbuild, cpu_decode

GCC = shutil.which("gcc")
needs_gcc = pytest.mark.skipif(not GCC, reason="no gcc here to build test libraries with")
PROBE = b"int probe(void) { return 42; }\n"  # the library the cache should hand back


@pytest.fixture
def cache(tmp_path, monkeypatch):
    """A fresh PIGPT_CACHE, and cpu_decode.load() forgotten before and after."""
    monkeypatch.setenv("PIGPT_CACHE", str(tmp_path / "cache"))
    cpu_decode.load.cache_clear()
    yield tmp_path / "cache"
    cpu_decode.load.cache_clear()


@pytest.fixture(scope="module")
def planted(tmp_path_factory):
    """(a real shared library whose constructor writes `marker` as it loads, marker): the attacker's file."""
    d = tmp_path_factory.mktemp("planted")
    marker = d / "marker"
    src = d / "planted.c"
    src.write_text('#include <stdio.h>\n'
                   f'__attribute__((constructor)) static void planted(void) {{ FILE* f = fopen("{marker}", "w"); '
                   'if (f) { fputs("ran", f); fclose(f); } }\n'
                   'int probe(void) { return -1; }\n')
    subprocess.run([GCC, "-shared", "-fPIC", str(src), "-o", str(d / "planted.so")], check=True)
    return d / "planted.so", marker


def _sha(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _plant(path, planted_so, case):
    """Put the planted library at `path` (the name the cache will look for) as `case` says, with a recorded
    hash beside it. Returns the reason the cache should give for not loading it (None: it should load it)."""
    side = path.with_name(path.name + ".sha256")
    if case == "symlink":
        target = path.with_name("elsewhere.so")
        shutil.copy(planted_so, target)
        os.chmod(target, 0o700)
        os.symlink(target, path)
        side.write_text(_sha(target) + "\n")
        return "is a symbolic link"
    if case == "garbage":
        path.write_bytes(os.urandom(4096))
    else:
        shutil.copy(planted_so, path)
    os.chmod(path, 0o700)
    side.write_text(_sha(path) + "\n")
    os.chmod(side, 0o600)
    if case == "control":  # everything as our build leaves it: the cache must take it (the marker must appear)
        return None
    if case == "wrong-owner":
        os.chown(path, 12345, 12345)
        return "owned by uid 12345"
    if case == "group-writable":
        os.chmod(path, 0o770)
        return "writable by group or others"
    if case == "other-writable":
        os.chmod(path, 0o707)
        return "writable by group or others"
    if case == "hash-file-other-writable":
        os.chmod(side, 0o666)
        return "writable by group or others"
    if case in ("wrong-hash", "garbage"):  # a valid (or not) library, but not the one our build recorded
        side.write_text(hashlib.sha256(b"the library we built").hexdigest() + "\n")
        return "does not match the hash its build recorded"
    if case == "no-hash-file":
        side.unlink()
        return "no recorded hash beside it"
    raise AssertionError(case)


CASES = ["control", "wrong-owner", "group-writable", "other-writable", "hash-file-other-writable", "wrong-hash",
         "garbage", "symlink", "no-hash-file"]


@needs_gcc
@pytest.mark.parametrize("case", CASES)
def test_a_planted_library_is_not_loaded(case, cache, planted, capfd, monkeypatch):
    """A library at the cache's expected name with the wrong owner, a mode that lets others write it (or its
    recorded hash), a hash that doesn't match (a different valid library, or garbage), or behind a symbolic link
    is never loaded: the cache builds its own over it. The planted library's constructor would write a marker
    file on load; the control case (a file exactly as our build leaves it) shows that it does."""
    planted_so, marker = planted
    marker.unlink(missing_ok=True)
    recipe = cbuild.Recipe("probe", (("probe.c", PROBE),), GCC, ("-shared", "-fPIC"))
    folder, note = cbuild.cache_folder()
    assert note == "" and folder == (cache / "lib").resolve()
    assert stat.S_IMODE(os.stat(folder).st_mode) == 0o700 and stat.S_IMODE(os.stat(cache).st_mode) == 0o700
    path = folder / recipe.filename
    if case == "wrong-owner" and os.geteuid() != 0:  # can't chown: make every file of ours look foreign instead
        real = os.geteuid()
        monkeypatch.setattr(cbuild, "_uid", lambda: real + 1)
    reason = _plant(path, planted_so, case)
    lib, loaded = cbuild.load(recipe, "the probe")
    err = capfd.readouterr().err
    if reason is None:
        assert marker.exists() and lib.probe() == -1 and err == ""
        return
    assert not marker.exists(), "the planted library's code ran"
    assert lib.probe() == 42
    if cbuild._uid() == os.geteuid():  # rebuilt in place, its hash recorded, and the stderr line says why
        assert loaded == path and not path.is_symlink() and os.stat(path).st_uid == os.geteuid()
        assert (path.with_name(path.name + ".sha256").read_text().strip() == _sha(path))
        lines = err.splitlines()
        assert len(lines) == 1 and lines[0].startswith("pigpt: compiling the probe into") and reason in lines[0]
    marker.unlink(missing_ok=True)
    cbuild.load(recipe, "the probe")  # and the rebuilt copy loads from the cache from then on, silently
    assert capfd.readouterr().err == "" and not marker.exists()


@needs_gcc
@pytest.mark.parametrize("problem", ["other-writable", "foreign-parent"])
def test_a_cache_folder_others_can_write_is_not_used(problem, cache, planted, capfd, monkeypatch):
    """If others can write the cache folder (or rename a folder above it), nothing in it is loaded, however
    trustworthy the files look: the library is built in a private temporary folder instead."""
    planted_so, marker = planted
    marker.unlink(missing_ok=True)
    recipe = cbuild.Recipe("probe", (("probe.c", PROBE),), GCC, ("-shared", "-fPIC"))
    folder, _ = cbuild.cache_folder()
    _plant(folder / recipe.filename, planted_so, "control")
    if problem == "other-writable":
        os.chmod(folder, 0o777)
    else:
        os.chown(cache, 12345, 12345) if os.geteuid() == 0 else pytest.skip("needs root to chown")
    lib, loaded = cbuild.load(recipe, "the probe")
    assert not marker.exists() and lib.probe() == 42
    assert loaded.parent != folder and stat.S_IMODE(os.stat(loaded.parent).st_mode) == 0o700
    (line,) = capfd.readouterr().err.splitlines()
    assert "a private temporary folder" in line and ("writable by group or others" in line or "uid 12345" in line)


def _kernels_capable() -> bool:
    return bool(GCC) and cpu_decode.isa() is not None


@pytest.mark.skipif(not _kernels_capable(), reason="the CPU decode kernels need AVX-512 or AVX2, and gcc")
def test_cpu_decode_rebuilds_over_a_planted_library(cache, planted, capfd):
    """End to end: a different, valid library planted under the kernels' own cache name, its recorded hash not
    its own, is rebuilt over; the real kernels load from that name and the planted code never runs."""
    planted_so, marker = planted
    marker.unlink(missing_ok=True)
    path = cbuild.cache_folder()[0] / cpu_decode.recipe().filename
    reason = _plant(path, planted_so, "wrong-hash")
    assert cpu_decode.load() is not None, cpu_decode.status()
    assert cpu_decode.status() == f"loaded from {path}" and not marker.exists()
    assert reason in capfd.readouterr().err
    assert path.with_name(path.name + ".sha256").read_text().strip() == _sha(path)


@pytest.mark.skipif(not _kernels_capable(), reason="the CPU decode kernels need AVX-512 or AVX2, and gcc")
def test_c_and_python_views_of_the_interface_agree():
    """Every shared struct's size and its fields' offsets and sizes, and the shared constants (types, layouts, activations,
    phase limits), as the compiler laid them out (pigpt_interface, from csrc/decode.h's field lists) and as
    cpu_decode.py's ctypes mirror has them."""
    lib = cpu_decode.load()
    assert lib is not None, cpu_decode.status()
    c, py = cpu_decode.c_interface(lib), cpu_decode.python_interface()
    assert c == py
    for struct in (cpu_decode.Linear, cpu_decode.Layer, cpu_decode.Cache, cpu_decode.Model):  # all of them
        assert c[f"sizeof({struct.__name__})"] > 0
        assert all(f"{struct.__name__}.{name}" in c and f"sizeof({struct.__name__}.{name})" in c
                   for name, _ in struct._fields_)
    assert {"MAX_PHASES", "PHASES_PER_LAYER", "F32", "PAIRS", "ACT_RELU"} <= c.keys()


def test_an_interface_mismatch_is_named_and_refused(cache, monkeypatch, capfd):
    """If the two views disagree (here: Python's limit changed without C's), load() refuses the library with
    one stderr line naming the difference, and the model runs its torch path."""
    assert cpu_decode.interface_mismatch({"a": 1, "b": 2}, {"a": 1, "b": 2}) is None
    assert cpu_decode.interface_mismatch({"a": 1}, {"a": 2, "c": 3}) == "a: C 1, Python 2; c: C has none, Python 3"
    if not _kernels_capable():
        return
    monkeypatch.setattr(cpu_decode, "MAX_PHASES", 2048)
    assert cpu_decode.load() is None
    err = [ln for ln in capfd.readouterr().err.splitlines() if not ln.startswith("pigpt: compiling")]
    assert len(err) == 1 and "MAX_PHASES: C 4096, Python 2048" in err[0] and "torch path" in err[0]
    assert "MAX_PHASES" in cpu_decode.status()


def test_a_failing_compiler_costs_one_line_and_the_torch_path_runs(cache, tmp_path, monkeypatch, capfd):
    """A compiler that fails: one line on stderr says so and why (after the one saying it is compiling), no
    traceback; generation runs the torch path and gives the same tokens as the kernels (where they build)
    and as the torch path chosen by hand."""
    torch.manual_seed(0)
    gpt = GPT(GPTConfig(n_layer=2, n_head=2, n_embd=32, vocab_size=97, block_size=32)).eval()
    params = SamplingParams(temperature=0, max_new_tokens=10, stop_token_ids=())
    prompts = [[3, 1, 4, 1, 5]]

    def tokens():
        gpt.cpu_kernels = True  # forget any plan
        return generate(gpt, prompts, params)[0][0].tokens

    with_kernels = tokens()  # the machine's own kernels, if they build here
    cc = tmp_path / "failing-cc"
    cc.write_text("#!/bin/sh\n[ \"$1\" = --version ] && { echo failing-cc 1.0; exit 0; }\n"
                  "echo 'decode.c:1:10: fatal error: immintrin.h: No such file or directory' >&2\nexit 1\n")
    cc.chmod(0o755)
    monkeypatch.setenv("CC", str(cc))
    monkeypatch.setattr(torch.backends.cpu, "get_cpu_capability", lambda: "AVX512")  # reach the build anywhere
    cpu_decode.load.cache_clear()
    capfd.readouterr()
    assert cpu_decode.load() is None
    lines = capfd.readouterr().err.splitlines()
    assert len(lines) == 2 and lines[0].startswith("pigpt: compiling the CPU decode kernels"), lines
    assert lines[1].startswith("pigpt: could not build the CPU decode kernels") and "exited with 1" in lines[1]
    assert "immintrin.h: No such file" in lines[1] and "torch path" in lines[1]
    assert cpu_decode.status().startswith("build failed")
    fallback = tokens()
    assert gpt._cpu_plan is False  # the step had no kernels to run in
    gpt.cpu_kernels = False
    assert fallback == with_kernels == generate(gpt, prompts, params)[0][0].tokens


@needs_gcc
def test_two_processes_build_once(tmp_path):
    """Two processes that need the same library at once: one builds it (under the cache's lock), the other
    waits and loads that build; both get a working library and stderr says 'compiling' once in all."""
    slow_cc = tmp_path / "slow-cc"  # widens the window in which the two would race
    slow_cc.write_text(f'#!/bin/sh\n[ "$1" = --version ] || sleep 1\nexec {GCC} "$@"\n')
    slow_cc.chmod(0o755)
    script = ("import sys; from pigpt.model import cbuild\n"
              f"r = cbuild.Recipe('probe', (('probe.c', {PROBE!r}),), {str(slow_cc)!r}, ('-shared', '-fPIC'))\n"
              "lib, path = cbuild.load(r, 'the probe'); assert lib.probe() == 42; print(path)\n")
    env = dict(os.environ, PIGPT_CACHE=str(tmp_path / "cache"))
    procs = [subprocess.Popen([sys.executable, "-c", script], env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for _ in range(2)]
    outs = [p.communicate(timeout=120) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outs
    assert outs[0][0] == outs[1][0]  # the same file
    assert sum(err.count("pigpt: compiling the probe") for _, err in outs) == 1, outs
