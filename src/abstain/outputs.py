"""What a command may write, and what ``--overwrite`` may replace.

Every command names its outputs before it computes anything (:class:`Output`: a file and
the command that writes it, or a section of a shared JSON file such as ``results.json``).
:func:`claim` then, in one place for every command:

* refuses an output that exists, unless ``--overwrite``;
* with ``--overwrite``, refuses to replace a file that this project did not write, or that
  another command wrote (``evaluate --save-adversarial RUN/model.safetensors --overwrite``
  must not replace the run's weights): each directory we write into holds a manifest,
  ``abstain-files.json``, mapping the file names we wrote to the command that wrote them;
* takes a lock on the output directory (``.abstain.lock``, ``flock``): a second writer
  fails at once with a message, instead of two runs mixing their files;
* records the outputs in the manifests BEFORE they are written (a kill between the write
  and the record would otherwise leave a file that no ``--overwrite`` may replace), and on
  a user error removes what it created (the directory, the manifest entries, the work area),
  so the corrected command runs as it is.

The manifest is visible (no leading dot) because it belongs to the run: copying a run
directory copies the knowledge of which files in it are ours.
"""
from __future__ import annotations

import errno
import fcntl
import json
import os
import shutil
import stat as stat_mod
import sys
import tempfile
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator, Sequence, TypeVar

from . import distributed
from .errors import AbstainError, ConfigError
from .io import atomic_write_json

MANIFEST = "abstain-files.json"
LOCK = ".abstain.lock"
WORK = ".abstain-work"          # resumable jobs keep their finished chunks here
BACKUP = ".abstain-backup"      # suffix of the hard link that keeps an output during a command


@dataclass(frozen=True)
class Output:
    """A file a command writes (``section`` None), or the key ``section`` of a JSON object
    file that several commands share (``results.json``)."""

    path: Path
    writer: str
    section: str | None = None
    exclusive: bool = True     # a section: refuse an existing one without --overwrite


# --------------------------------------------------------------------------- manifest
def _manifest_path(directory: Path) -> Path:
    return directory / MANIFEST


def read_manifest(directory: str | os.PathLike) -> dict[str, str]:
    """File name -> writing command, for the files we wrote into ``directory``."""
    path = _manifest_path(Path(directory))
    try:
        data = json.loads(path.read_text())
    except (FileNotFoundError, NotADirectoryError):
        return {}
    except (OSError, ValueError, RecursionError):
        return {}   # unreadable: nothing in the directory counts as ours
    return {str(k): str(v) for k, v in data.items()} if isinstance(data, dict) else {}


def _write_manifest(directory: Path, entries: dict[str, str]) -> None:
    if entries:
        atomic_write_json(_manifest_path(directory), entries)
    else:
        _manifest_path(directory).unlink(missing_ok=True)


def written_by(path: str | os.PathLike) -> str | None:
    """The command that wrote ``path`` (from its directory's manifest), or None."""
    p = Path(path)
    return read_manifest(p.parent).get(p.name)


def record(paths: dict[Path, str]) -> list[Path]:
    """Add ``path -> writer`` to the manifests of the paths' directories; the directories
    created for them."""
    by_dir: dict[Path, dict[str, str]] = {}
    created: list[Path] = []
    for p, w in paths.items():
        by_dir.setdefault(p.parent, {})[p.name] = w
    for d, new in by_dir.items():
        created += _make_dirs(d)
        entries = read_manifest(d)
        if any(entries.get(k) != v for k, v in new.items()):
            _write_manifest(d, {**entries, **new})
    return created


def forget_missing(paths: Sequence[Path]) -> None:
    """Drop the manifest entries of ``paths`` that were never written (after an error)."""
    for d in {p.parent for p in paths}:
        entries = read_manifest(d)
        keep = {k: v for k, v in entries.items() if (d / k).exists() or k not in {p.name for p in paths}}
        if keep != entries and d.is_dir():
            _write_manifest(d, keep)


def is_stale_tmp(path: Path) -> bool:
    """An interrupted atomic write (``.<name>.<random>.tmp``, :mod:`abstain.io`)."""
    return path.is_file() and path.name.startswith(".") and path.name.endswith(".tmp")


def ours(out: Path, flag: str = "--overwrite") -> list[Path]:
    """Every file under ``out`` that this project wrote: listed in a manifest, the manifests
    and the lock themselves, the work area, interrupted temporary files. Refuses (naming
    ``flag``) when any other file is there (not an abstain output, or a source directory):
    the one rule by which every command decides what it may remove."""
    mine, foreign = [], []
    for d, _, files in os.walk(out):
        dpath = Path(d)
        if dpath.name == WORK or WORK in dpath.relative_to(out).parts:
            mine += [dpath / f for f in files]
            continue
        listed = read_manifest(dpath)
        for f in files:
            p = dpath / f
            (mine if f in listed or f in (MANIFEST, LOCK) or is_stale_tmp(p) else foreign).append(p)
    if foreign:
        raise ConfigError(f"{flag} refused: {out} holds files abstain did not write "
                          f"({', '.join(str(p.relative_to(out)) for p in foreign[:3])}"
                          f"{', ...' if len(foreign) > 3 else ''}); {flag} removes only the "
                          f"files listed in {MANIFEST}: choose another --out")
    return mine


def remove_ours(out: Path, flag: str = "--overwrite") -> None:
    """Remove this project's files under ``out`` (refusing, before removing anything, if
    others are there; :func:`ours`), then the directories left empty (not ``out`` itself;
    the lock stays: its holder removes it)."""
    for p in ours(out, flag):
        if p.name != LOCK:
            p.unlink(missing_ok=True)
    for d, _, _ in sorted(os.walk(out), key=lambda t: -len(Path(t[0]).parts)):
        if Path(d) != out:
            try:
                Path(d).rmdir()
            except OSError:
                pass


# --------------------------------------------------------------------------- checks
def _refuse_not_ours(path: Path, writer: str) -> None:
    owner = written_by(path)
    if owner != writer:
        by = f"`abstain {owner}`" if owner else "something other than abstain"
        raise ConfigError(f"{path} was written by {by}; --overwrite replaces only files that "
                          f"`abstain {writer}` wrote: choose another path")


def _check_section(o: Output, overwrite: bool) -> None:
    if not o.path.exists():
        return
    try:
        data = json.loads(o.path.read_text())
    except (OSError, ValueError, RecursionError) as e:
        raise ConfigError(f"{o.path} is not a readable JSON file ({type(e).__name__}; truncated?): "
                          "move it away and rerun") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{o.path} does not hold a JSON object: move it away and rerun")
    if o.section in data and o.exclusive and not overwrite:
        raise ConfigError(f"{o.path} already holds the section {o.section!r}; pass --overwrite to "
                          "replace it (or choose another --out)")


def check(outputs: Sequence[Output], overwrite: bool) -> None:
    """Refuse outputs that exist (without ``overwrite``) or that we may not replace."""
    for o in outputs:
        for parent in o.path.parents:
            if parent.exists() and not parent.is_dir():
                raise ConfigError(f"cannot write {o.path}: {parent} is a file, not a directory")
        if o.section is not None:
            _check_section(o, overwrite)
            continue
        if o.path.is_dir() and not o.path.is_symlink():
            raise ConfigError(f"{o.path} is a directory; give a file path")
        if o.path.exists() or o.path.is_symlink():
            if not overwrite:
                raise ConfigError(f"{o.path} exists; pass --overwrite to replace it")
            if o.path.is_symlink():
                raise ConfigError(f"{o.path} is a symbolic link; --overwrite does not replace links")
            _refuse_not_ours(o.path, o.writer)


# --------------------------------------------------------------------------- lock
def _process_start(pid: int) -> str:
    """The start time of process ``pid`` in clock ticks since boot (``/proc/PID/stat`` field
    22), which tells a live holder from a later process that reuses its PID; "" off Linux."""
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return ""


class DirLock:
    """An exclusive ``flock`` on ``path`` (created; removed on release). A second holder
    fails at once, naming the holder's PID.

    The file is opened with ``O_NOFOLLOW | O_NONBLOCK`` in a directory checked first (it must
    be a directory, not a link to one or a file), and must be a regular file: a symlinked lock
    is refused, never followed out of the output directory. The holder writes
    ``PID START`` into it (START: the process's start time in clock ticks since boot).

    Stale locks (the rule): the kernel releases an ``flock`` when its process dies, so a lock
    file left by a SIGKILL never blocks; whoever gets the ``flock`` owns the file and
    overwrites the PID and start time. The recorded PID is only used to name the holder in
    the refusal, and only while that PID's start time still matches (else it is reported as
    a stale record of a dead process: the lock is then being taken over, try again)."""

    def __init__(self, path: Path, what: str) -> None:
        self.path, self.what, self.fd = path, what, -1

    def _check_dir(self) -> None:
        d = self.path.parent
        try:
            st = os.lstat(d)
        except OSError as e:
            raise ConfigError(f"cannot lock {self.what}: {d}: {e.strerror}") from None
        if stat_mod.S_ISLNK(st.st_mode):
            st = os.stat(d)      # an output directory given through a symlink: its target must be a directory
        if not stat_mod.S_ISDIR(st.st_mode):
            raise ConfigError(f"cannot lock {self.what}: {d} is not a directory")

    def _holder(self) -> str:
        try:
            fd = os.open(self.path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
            with os.fdopen(fd) as fh:
                pid_s, start = (fh.read(64).split() + ["", ""])[:2]
            pid = int(pid_s)
        except (OSError, ValueError):
            return ""
        return f" (PID {pid})" if _process_start(pid) == start else ""

    def acquire(self) -> "DirLock":
        self._check_dir()
        flags = os.O_RDWR | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0)
        for _ in range(10):
            try:
                fd = os.open(self.path, flags, 0o644)
            except OSError as e:
                if e.errno == errno.ELOOP:
                    raise ConfigError(f"the lock {self.path} is a symbolic link; refusing to follow it "
                                      "(remove it)") from None
                raise ConfigError(f"cannot lock {self.what}: {self.path}: {e.strerror}") from None
            if not stat_mod.S_ISREG(os.fstat(fd).st_mode):
                os.close(fd)
                raise ConfigError(f"the lock {self.path} is not a regular file; remove it")
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as e:
                os.close(fd)
                if e.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                    raise ConfigError(f"another abstain command is writing {self.what}{self._holder()} (lock "
                                      f"{self.path}); wait for it to finish or choose another output") from None
                raise
            # the previous holder may have removed the file between our open and flock:
            # hold the lock only if the path is still this file
            try:
                same = os.path.samestat(os.fstat(fd), os.lstat(self.path))
            except FileNotFoundError:
                same = False
            if same:
                self.fd = fd
                self._stamp()
                return self
            os.close(fd)
        raise ConfigError(f"could not lock {self.path}")   # pragma: no cover - a storm of writers

    def _stamp(self) -> None:
        pid = os.getpid()
        try:
            os.ftruncate(self.fd, 0)
            os.pwrite(self.fd, f"{pid} {_process_start(pid)}\n".encode(), 0)
        except OSError:
            pass       # a full disk: the flock itself still holds

    def release(self) -> None:
        if self.fd >= 0:
            try:
                self.path.unlink(missing_ok=True)   # while holding it: see acquire
            finally:
                os.close(self.fd)
                self.fd = -1


def _is_main() -> bool:
    if distributed.is_distributed():
        return distributed.is_main()
    return int(os.environ.get("RANK", "0") or 0) == 0


def _make_dirs(path: Path) -> list[Path]:
    """``mkdir -p path``; the directories created, deepest last."""
    created = []
    for d in reversed([path, *path.parents]):
        if not d.exists():
            try:
                d.mkdir()
            except FileExistsError:
                continue
            except OSError as e:
                raise ConfigError(f"cannot create {d}: {e.strerror or e}") from None
            created.append(d)
    return created


def _undo(out: Path, outputs: Sequence[Output], created: list[Path], work: bool = True) -> None:
    """After an error: forget outputs never written, remove the directories we created
    (with the work area when ``work``: after a user error, whose rerun would fail alike)."""
    forget_missing([o.path for o in outputs])
    if out in created and work:
        shutil.rmtree(out / WORK, ignore_errors=True)
        (out / MANIFEST).unlink(missing_ok=True)
    for d in sorted(set(created), key=lambda p: len(p.parts), reverse=True):
        try:
            d.rmdir()
        except OSError:
            pass   # not empty: something else lives there now


def _keep(outputs: Sequence[Output]) -> dict[Path, Path | None]:
    """Before a command writes: a hard link ``.<name>.abstain-backup`` beside each output that
    is a regular file (no data copied, so it works on a full disk too), or None for an output
    that does not exist yet. An output whose link cannot be made (a filesystem without hard
    links) is not kept. A backup left by a SIGKILL is stale and replaced."""
    kept: dict[Path, Path | None] = {}
    for o in outputs:
        p = o.path
        if p in kept:
            continue
        try:
            st = os.lstat(p)
        except FileNotFoundError:
            kept[p] = None
            continue
        except OSError:
            continue
        if not stat_mod.S_ISREG(st.st_mode):
            continue
        b = p.parent / f".{p.name}{BACKUP}"
        try:
            b.unlink(missing_ok=True)
            os.link(p, b)
        except OSError:
            continue
        kept[p] = b
    return kept


def _put_back(kept: dict[Path, Path | None], failed: bool) -> None:
    """After the command: drop the backups (success), or (``failed``) put every output back as
    it was before, so that a command that fails half-way (a full disk after the records were
    written, say) leaves no new records beside old results, nor new results beside old
    records: an output it created is removed, one it replaced gets its old file back."""
    for p, b in kept.items():
        try:
            if not failed:
                if b is not None:
                    b.unlink(missing_ok=True)
            elif b is None:
                if p.is_file() and not p.is_symlink():
                    p.unlink()
            elif os.path.exists(p) and os.path.samefile(p, b):
                b.unlink()
            else:
                os.replace(b, p)
        except OSError:
            pass      # best effort: the error that made the command fail is the one to report


@contextmanager
def claim(out: str | os.PathLike, outputs: Sequence[Output], overwrite: bool, *,
          lock: bool = True) -> Iterator[Path]:
    """Check ``outputs`` (:func:`check`), create and lock the directory ``out``, record the
    outputs in its manifests, and yield ``out``. When the command fails (any exception but an
    interruption) its outputs are put back as they were (:func:`_put_back`). On a user
    error (:class:`AbstainError`) the manifest entries of outputs never written and the
    directories created here are removed; the lock is released in any case. Only rank 0 of a torchrun job locks and
    records (every rank checks)."""
    out = Path(out)
    for parent in [out, *out.parents]:
        if parent.exists() and not parent.is_dir():
            raise ConfigError(f"--out {out}: {parent} is a file, not a directory")
    check(outputs, overwrite)
    if not _is_main():
        yield out
        return
    created = _make_dirs(out)
    held = DirLock(out / LOCK, str(out)) if lock else None
    try:
        if held is not None:
            held.acquire()
        check(outputs, overwrite)       # again, under the lock: another writer may have finished
        try:
            # a shared JSON file is ours when we create it (an existing one keeps its owner)
            created += record({o.path: o.writer for o in outputs if o.section is None or not o.path.exists()})
        except OSError as e:
            raise ConfigError(f"cannot write into {out}: {e.strerror or e}") from None
        kept = _keep(outputs)
        try:
            yield out
        except Exception:
            _put_back(kept, failed=True)
            raise
        _put_back(kept, failed=False)
    except AbstainError:
        _undo(out, outputs, created)
        raise
    except Exception:
        # not the user's doing (out of memory, a full disk, a bug): keep finished chunks,
        # which a rerun with other resources reuses
        _undo(out, outputs, created, work=False)
        raise
    finally:
        if held is not None:
            held.release()
        if created and out.is_dir() and not any(out.iterdir()):
            _undo(out, (), created)


@contextmanager
def locked_target(out: str | os.PathLike) -> Iterator[Path]:
    """Lock a directory that a command replaces as a whole (``data mtsd --out``: written beside
    it, renamed into place): the lock is a sibling file ``.<name>.abstain.lock``. Parent
    directories created here are removed again when the command fails."""
    out = Path(out)
    created = _make_dirs(out.parent)
    held = DirLock(out.parent / f".{out.name}.abstain.lock", str(out))
    try:
        held.acquire()
        yield out
    except BaseException:
        held.release()
        for d in reversed(created):
            try:
                d.rmdir()
            except OSError:
                break
        raise
    finally:
        held.release()


T = TypeVar("T")


def replace_dir(out: str | os.PathLike, write: Callable[[Path], T], writer: str, overwrite: bool) -> T:
    """A directory that a command writes as a whole (``data mtsd --out``), under
    :func:`locked_target`: an existing ``out`` is refused without ``overwrite``, and with it
    unless every file there is ours (:func:`ours`), before any work. ``write(new)`` creates and
    fills ``new``, a fresh path beside ``out``; every file in it is recorded as ``writer``'s
    (:func:`record`) and ``new`` is renamed to ``out``. An earlier output is moved aside first
    and only our files are removed from it (:func:`remove_ours`). After an error ``out`` is as
    it was and nothing is left beside it. Returns what ``write`` returned."""
    out = Path(out)
    with locked_target(out):
        if out.exists() or out.is_symlink():
            if not overwrite:
                raise ConfigError(f"output directory {out} exists; pass --overwrite to replace it "
                                  "(only the files abstain wrote there)")
            ours(out)
        work = Path(tempfile.mkdtemp(prefix=f".{out.name}.new-", dir=out.parent))
        try:
            new = work / out.name
            result = write(new)
            record({Path(d) / f: writer for d, _, files in os.walk(new) for f in files})
            _swap(out, new, work / "old")
        finally:
            if not os.path.lexists(work / "old"):   # else it keeps files we may not remove
                shutil.rmtree(work, ignore_errors=True)
    return result


def _swap(out: Path, new: Path, old: Path) -> None:
    """Rename ``new`` to ``out``; an ``out`` already there goes to ``old`` first, and then only
    our files are removed from it (a file that appeared there meanwhile is kept, with a note)."""
    if not (out.exists() or out.is_symlink()):
        os.replace(new, out)
        return
    ours(out)                       # again, just before the swap
    os.replace(out, old)
    try:
        os.replace(new, out)
    except BaseException:
        os.replace(old, out)        # put the earlier output back
        raise
    if old.is_symlink():            # --out named a link: the link is replaced, its target left alone
        old.unlink()
        return
    try:
        remove_ours(old)
        old.rmdir()
    except (ConfigError, OSError) as e:
        print(f"abstain: kept what the earlier {out} held besides our files in {old} ({e})", file=sys.stderr)


def work_dir(out: Path, name: str) -> Path:
    """The work area of a resumable job ``name`` under the output directory ``out``."""
    return out / WORK / name


__all__ = ["ours", "remove_ours", "is_stale_tmp", "Output", "claim", "check", "record", "read_manifest", "written_by", "DirLock", "work_dir", "locked_target",
           "replace_dir",
           "MANIFEST", "LOCK", "WORK", "forget_missing"]
