"""Writing outputs without losing anything: checks before work, atomic directories and files.

- :func:`check_out_dir` / :func:`check_out_file` run before any expensive work: a non-empty output needs
  ``--force``; an output that is, contains or lies inside an input is refused (``--force`` would delete it);
  an output whose parent cannot be written is refused.
- :func:`atomic_dir` and :func:`staging_dir` stage into a hidden sibling that is renamed into place at the end
  and removed on any error or Ctrl-C, so nothing half-written or temp-named is left beside the output.
- Everything written gets the user's umask (``tempfile`` would create 0700 directories and 0600 files).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from pathlib import Path
from typing import Iterable

from prunecli.core import interrupts
from prunecli.core.errors import UsageError


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def apply_umask(path: Path, directory: bool) -> None:
    """Give ``path`` the mode a plain ``mkdir``/``open`` would have given it."""
    os.chmod(path, (0o777 if directory else 0o666) & ~_umask())


def _nearest_existing(path: Path) -> Path:
    path = path.absolute()
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def _check_writable(out: Path, flag: str) -> None:
    """Probe the nearest existing ancestor (os.access says yes to root even on read-only mounts)."""
    parent = _nearest_existing(out.parent if not out.is_dir() else out)
    if not parent.is_dir():
        raise UsageError(f"{flag} {out}: {parent} is a file, so nothing can be created under it; choose another path")
    try:
        probe = tempfile.mkdtemp(prefix=".prunecli-probe-", dir=parent)
    except OSError as exc:
        raise UsageError(f"{flag} {out}: cannot write in {parent} ({exc.strerror or exc}); "
                         "choose a writable location") from exc
    os.rmdir(probe)


def _inside(child: Path, parent: Path) -> bool:
    try:
        child.relative_to(parent)
        return True
    except ValueError:
        return False


def check_not_input(out: Path, inputs: Iterable[Path], flag: str = "--out") -> None:
    """Refuse an output that is an input, contains one (``--force`` would delete it) or lies inside one."""
    target = Path(os.path.realpath(out))
    for item in inputs:
        source = Path(os.path.realpath(item))
        if not Path(item).exists():
            continue
        if target == source:
            raise UsageError(f"{flag} {out} is the input {item}; write the output somewhere else")
        if _inside(source, target):
            raise UsageError(f"{flag} {out} contains the input {item}, which replacing it would delete; "
                             "choose an output directory that holds no input")
        if source.is_dir() and _inside(target, source):
            raise UsageError(f"{flag} {out} lies inside the input {item}; write the output outside it")


def check_out_dir(out: Path, force: bool, flag: str = "--out", inputs: Iterable[Path] = ()) -> None:
    """Everything about an output directory that can be refused before work."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise UsageError(f"{flag} {out} exists and is a file; pass a directory path")
    check_not_input(out, inputs, flag)
    if out.is_dir() and any(out.iterdir()) and not force:
        raise UsageError(f"{flag} {out} is not empty; pass --force to replace it, or choose another directory")
    _check_writable(out, flag)


def check_out_file(out: Path, force: bool, flag: str = "--out", inputs: Iterable[Path] = (), suffix: str | None = None) -> None:
    out = Path(out)
    if suffix and out.suffix.lower() != suffix:
        raise UsageError(f"{flag} {out}: give a path ending in {suffix}")
    if out.is_dir():
        raise UsageError(f"{flag} {out} is a directory; give a file path ending in {suffix or 'a file name'}")
    check_not_input(out, inputs, flag)
    if out.exists() and not force:
        raise UsageError(f"{flag} {out} exists; pass --force to replace it")
    _check_writable(out, flag)


@contextlib.contextmanager
def staging_dir(near: Path):
    """A hidden directory beside ``near`` (same file system, so renames out of it are atomic), always removed."""
    near = Path(near)
    near.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{near.name}.tmp-", dir=near.parent))
    apply_umask(tmp, directory=True)
    try:
        yield tmp
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


@contextlib.contextmanager
def atomic_dir(out: Path, force: bool, *, merge: bool = False, keep: Iterable[str] = ()):
    """Yield a staging directory that replaces ``out`` only if the block finishes.

    With ``merge`` (a fine-tuning run whose ``out`` already holds its checkpoints) the staged files are
    moved into ``out`` one by one, the names in ``keep`` last (``recipe.json``: ``out`` is a bundle only
    once it is complete).
    """
    out = Path(out)
    if not merge:
        check_out_dir(out, force)
    last = set(keep)
    with staging_dir(out) as tmp:
        yield tmp
        for path in tmp.rglob("*"):  # some writers (safetensors) create 0600 files
            apply_umask(path, directory=path.is_dir())
        with interrupts.deferred():  # a Ctrl-C between the renames would lose both the old and the new output
            if merge and out.is_dir():
                for name in last:
                    (out / name).unlink(missing_ok=True)
                for name in sorted(os.listdir(tmp), key=lambda n: n in last):
                    os.replace(tmp / name, out / name)
            elif out.exists():
                old = Path(tempfile.mkdtemp(prefix=f".{out.name}.old-", dir=out.parent))
                try:
                    os.replace(out, old / "previous")
                    os.replace(tmp, out)
                finally:
                    shutil.rmtree(old, ignore_errors=True)
            else:
                os.replace(tmp, out)
            interrupts.wrote(out)
