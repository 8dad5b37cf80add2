"""Compile a small C library once per machine into a per-user cache, and load only a copy this user built.

Loading a shared library runs its code in this process, so the cache must never hand us a file another local
user could have written. The rules:

- The cache folder is `$PIGPT_CACHE/lib`, else `$XDG_CACHE_HOME/pigpt/lib`, else `~/.cache/pigpt/lib`, created
  0700. It is used only if it is a real folder owned by this user and not writable by group or others, and every
  folder above it is owned by this user or root and not writable by group or others unless sticky (as /tmp is).
  Otherwise the library is built in a fresh private folder (tempfile.mkdtemp) for this process alone.
- A library's file name carries a hash of everything that shapes it: the sources, the compiler and its version,
  the flags and the machine type. (No flag depends on the building CPU, as -march=native would, so its features
  are not part of the key; the caller checks them at run time.)
- A cached file is loaded only if it is a regular file (not a symbolic link), owned by this user, not writable
  by group or others, and its SHA-256 matches the one its build recorded beside it (`<name>.so.sha256`, which
  must pass the same checks). Anything else is rebuilt over, never loaded.
- Builds run under an exclusive flock on `<folder>/.lock` (so two processes don't build the same library at
  once), in a private temporary folder inside the cache folder, and land with os.replace (atomically), the
  library first and then its hash; checks and loads hold the lock shared, so no build replaces a file between
  its check and its load.
"""

from __future__ import annotations

import atexit
import contextlib
import ctypes
import dataclasses
import errno
import hashlib
import os
import platform
import shutil
import stat
import subprocess
import sys
import tempfile
from pathlib import Path


class BuildError(Exception):
    """The library could not be built or loaded here; the message is one line that says why."""


@dataclasses.dataclass(frozen=True)
class Recipe:
    """What to build: `sources` as (file name, content) pairs (every .c among them is compiled; headers are found
    beside them), with compiler `cc` and `flags`."""
    name: str
    sources: tuple[tuple[str, bytes], ...]
    cc: str
    flags: tuple[str, ...]

    @property
    def filename(self) -> str:
        version = _compiler_version(self.cc)
        h = hashlib.sha256()
        for part in (self.name, self.cc, version, platform.machine(), *self.flags):
            h.update(part.encode() + b"\0")
        for fname, content in self.sources:
            h.update(fname.encode() + b"\0" + hashlib.sha256(content).digest())
        return f"{self.name}_{h.hexdigest()[:16]}.so"


def _uid() -> int:
    return os.geteuid()


def _compiler_version(cc: str) -> str:
    try:
        return subprocess.run([cc, "--version"], capture_output=True, text=True, timeout=30).stdout
    except (OSError, subprocess.SubprocessError) as e:
        raise BuildError(f"{cc} --version failed: {e}") from None


# -- where: a folder only this user can write ----------------------------------------------------------------
def _unsafe_folder(folder: Path) -> str | None:
    """Why another user could change what `folder` holds, or None if only this user (and root) can."""
    st = os.lstat(folder)
    if not stat.S_ISDIR(st.st_mode):
        return f"{folder} is not a folder"
    if st.st_uid != _uid():
        return f"{folder} is owned by uid {st.st_uid}, not by this user"
    if st.st_mode & 0o022:
        return f"{folder} is writable by group or others (mode {stat.S_IMODE(st.st_mode):o})"
    for parent in folder.parents:  # whoever can rename a folder above can swap ours for theirs
        st = os.stat(parent)
        if st.st_uid not in (0, _uid()):
            return f"{parent} is owned by uid {st.st_uid}"
        if st.st_mode & 0o022 and not st.st_mode & stat.S_ISVTX:
            return f"{parent} is writable by group or others (mode {stat.S_IMODE(st.st_mode):o})"
    return None


def cache_folder() -> tuple[Path, str]:
    """(the folder to build and load libraries in, '' or why it is a private temporary one)."""
    root = Path(os.environ.get("PIGPT_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache"), "pigpt"))
    folder = root / "lib"
    try:
        root.parent.mkdir(parents=True, exist_ok=True)
        root.mkdir(mode=0o700, exist_ok=True)
        folder.mkdir(mode=0o700, exist_ok=True)
        folder = folder.resolve()
        problem = _unsafe_folder(folder)
    except OSError as e:
        problem = f"{folder}: {e.strerror or e}"
    if problem is None:
        return folder, ""
    private = Path(tempfile.mkdtemp(prefix="pigpt-lib-")).resolve()  # 0700, a name nobody could predict
    atexit.register(shutil.rmtree, private, True)  # a loaded library stays mapped after its file goes
    if (also := _unsafe_folder(private)) is not None:
        raise BuildError(f"no private folder to build in: {problem}; {also}")
    return private, problem


@contextlib.contextmanager
def _locked(folder: Path, exclusive: bool):
    try:
        import fcntl
    except ImportError:  # no flock (Windows): builds still land atomically
        yield
        return
    fd = os.open(folder / ".lock", os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH)
        yield
    finally:
        os.close(fd)  # releases the lock


# -- what: a file this user built, unchanged since -----------------------------------------------------------
def _read_trusted(path: Path) -> bytes:
    """The content of `path` if it is a regular file (not a link) owned by this user and writable by no one
    else; else OSError (FileNotFoundError if it isn't there)."""
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)  # ELOOP on a symbolic link
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise OSError(f"{path.name} is not a regular file")
        if st.st_uid != _uid():
            raise OSError(f"{path.name} is owned by uid {st.st_uid}, not by this user")
        if st.st_mode & 0o022:
            raise OSError(f"{path.name} is writable by group or others (mode {stat.S_IMODE(st.st_mode):o})")
        with os.fdopen(os.dup(fd), "rb") as f:
            return f.read()
    finally:
        os.close(fd)


def _verified(path: Path) -> str | None:
    """Why the library at `path` must not be loaded, or None if it may be."""
    side = path.with_name(path.name + ".sha256")
    try:
        content = _read_trusted(path)
        recorded = _read_trusted(side).decode(errors="replace").strip()
    except FileNotFoundError as e:
        return "not built yet" if e.filename == str(path) else f"no recorded hash beside it ({side.name} is missing)"
    except OSError as e:
        name = Path(e.filename).name if e.filename else path.name
        return f"{name} is a symbolic link" if e.errno == errno.ELOOP else str(e) if e.errno is None else \
            f"{name}: {os.strerror(e.errno)}"
    if hashlib.sha256(content).hexdigest() != recorded:
        return f"{path.name} does not match the hash its build recorded"
    return None


def _build(recipe: Recipe, path: Path) -> None:
    with tempfile.TemporaryDirectory(dir=path.parent, prefix=".build-") as tmp:
        tmp = Path(tmp)
        for fname, content in recipe.sources:
            (tmp / fname).write_bytes(content)
        out = tmp / path.name
        units = [str(tmp / fname) for fname, _ in recipe.sources if fname.endswith(".c")]
        try:
            done = subprocess.run([recipe.cc, *recipe.flags, *units, "-o", str(out)],
                                  capture_output=True, text=True, timeout=600)
        except (OSError, subprocess.SubprocessError) as e:
            raise BuildError(f"{recipe.cc}: {e}") from None
        if done.returncode:
            lines = [ln.strip() for ln in done.stderr.splitlines() if ln.strip()]
            first = next((ln for ln in lines if "error" in ln.lower()), lines[0] if lines else "no message")
            raise BuildError(f"{recipe.cc} exited with {done.returncode}: {first[:300]}")
        os.chmod(out, 0o700)
        digest = tmp / (path.name + ".sha256")
        digest.write_text(hashlib.sha256(out.read_bytes()).hexdigest() + "\n")
        os.chmod(digest, 0o600)
        os.replace(out, path)  # the library first: until its hash lands too, a check sees a mismatch and waits
        os.replace(digest, path.with_name(digest.name))


def load(recipe: Recipe, what: str) -> tuple[ctypes.CDLL, Path]:
    """The library `recipe` makes, from the cache if a trusted copy is there, else built now (saying so once
    on stderr: it takes seconds). Raises BuildError (one line) where it can't be built or loaded."""
    try:
        return _load(recipe, what)
    except OSError as e:  # a full disk, a lock file that isn't one, ...
        raise BuildError(f"{e.filename}: {e.strerror}" if e.filename and e.strerror else str(e)) from None


def _load(recipe: Recipe, what: str) -> tuple[ctypes.CDLL, Path]:
    folder, why_private = cache_folder()
    path = folder / recipe.filename
    with _locked(folder, exclusive=False):
        if _verified(path) is None:
            return _dlopen(path), path
    with _locked(folder, exclusive=True):
        if (problem := _verified(path)) is not None:  # another process may have built it while we waited
            where = (f"a private temporary folder for this process (a few seconds; not the cache, as {why_private})"
                     if why_private else f"{folder} (once per machine, a few seconds)")
            note = "" if problem == "not built yet" else f"; not loading the cached copy: {problem}"
            print(f"pigpt: compiling {what} into {where}{note}", file=sys.stderr, flush=True)
            _build(recipe, path)
            if (problem := _verified(path)) is not None:
                raise BuildError(f"the library just built fails its checks: {problem}")
        return _dlopen(path), path


def _dlopen(path: Path) -> ctypes.CDLL:
    try:
        return ctypes.CDLL(str(path))
    except OSError as e:
        raise BuildError(f"could not load {path}: {e}") from None
