"""Opening untrusted files safely: only regular files, checked before any read, with a size
bound (issue 25, item 2). A FIFO would block ``open()`` forever, a device could be read
without end, and a directory or a link out of a work area is not what was asked for.

* :func:`check_regular` is for files a user hands us (a run directory's ``meta.json``,
  ``model.safetensors``, a ``--weights`` file): a symlink is followed (weights kept by DVC or
  git-annex are links), but its target must be a regular file of at most ``max_bytes``.
* :func:`read_regular` is for files this project wrote itself (chunks of a resumable job):
  a link is never followed, and the file is opened with ``O_NOFOLLOW | O_NONBLOCK`` and
  checked again on the open descriptor, so a FIFO swapped in between cannot block.
"""
from __future__ import annotations

import os
import stat
from typing import Callable


def _kind(mode: int) -> str:
    if stat.S_ISDIR(mode):
        return "a directory"
    if stat.S_ISFIFO(mode):
        return "a FIFO"
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        return "a device"
    if stat.S_ISSOCK(mode):
        return "a socket"
    if stat.S_ISLNK(mode):
        return "a symbolic link"
    return "not a regular file"


def check_regular(path: str | os.PathLike, max_bytes: int, what: str,
                  error: Callable[[str], Exception]) -> int:
    """The size of ``path`` if it is (or links to) a regular file of at most ``max_bytes``;
    else raises ``error(message)`` naming ``what`` and why. Nothing is opened."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        raise error(f"missing {what} {path}") from None
    except OSError as e:
        raise error(f"cannot read {what} {path}: {e.strerror}") from None
    if not stat.S_ISREG(st.st_mode):
        raise error(f"{what} {path} is {_kind(st.st_mode)}, not a regular file; refusing to open it")
    if st.st_size > max_bytes:
        raise error(f"{what} {path} is {st.st_size:,} bytes, more than the {max_bytes:,} allowed")
    return st.st_size


def read_regular(path: str | os.PathLike, max_bytes: int, error: Callable[[str], Exception]) -> bytes:
    """The bytes of ``path`` if it is a regular file (not a link) of at most ``max_bytes``:
    checked with ``lstat`` before it is opened, opened with ``O_NOFOLLOW | O_NONBLOCK`` and
    checked again with ``fstat``; else raises ``error(reason)``."""
    try:
        st = os.lstat(path)
    except OSError as e:
        raise error(f"cannot stat ({e.strerror})") from None
    if not stat.S_ISREG(st.st_mode):
        raise error(f"{_kind(st.st_mode)}, not a regular file")
    if st.st_size > max_bytes:
        raise error(f"{st.st_size} bytes, more than {max_bytes}")
    flags = os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0)
    try:
        fd = os.open(path, flags)
    except OSError as e:
        raise error(f"cannot open ({e.strerror})") from None
    with os.fdopen(fd, "rb") as fh:
        st = os.fstat(fh.fileno())
        if not stat.S_ISREG(st.st_mode) or st.st_size > max_bytes:
            raise error("not a regular file")
        return fh.read(max_bytes + 1)


__all__ = ["check_regular", "read_regular"]
