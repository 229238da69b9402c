"""Files replaced atomically and durably: a reader sees the old content or the new one,
never a part of either, and after a crash the disk holds one of the two.

The sequence, and why each step:

1. write a temporary file in the target's own directory: a rename is atomic only
   within one file system;
2. fsync it: otherwise the rename can reach the disk before the data, and a crash
   leaves an empty or partial file under the target's name;
3. rename it over the target (atomic for readers);
4. fsync the directory: otherwise the rename itself can be lost in a crash, and an old
   record (or a removed one) comes back.

Used for allocation records (:mod:`flock.adapters.store`), ``bird.conf``
(:mod:`flock.adapters.bird`, which runs ``bird -p`` on the temporary file between steps
2 and 3), flock-cni and its conflist (:mod:`flock.cni.install`) and the lab's state file.
Temporary files are named ``.<name>.<random>.tmp``: hidden, unique per write, and
recognisable after a crash (the store removes its leftovers when it loads).
"""

from __future__ import annotations

import contextlib
import os
import pathlib
import tempfile


def write_temporary(path: pathlib.Path, data: bytes, mode: int, *,
                    owner: tuple[int, int] | None = None) -> pathlib.Path:
    """Steps 1-2: ``data`` in a new file next to ``path``, with ``mode`` (not masked by
    the umask) and ``owner`` (uid, gid) where permitted, fsynced. Returns its path.

    Raises OSError (the file is then gone).
    """
    fd, name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    temporary = pathlib.Path(name)
    try:
        with os.fdopen(fd, "wb") as file:
            os.fchmod(file.fileno(), mode)
            if owner is not None:
                with contextlib.suppress(PermissionError):
                    os.fchown(file.fileno(), *owner)
            file.write(data)
            file.flush()
            os.fsync(file.fileno())
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise
    return temporary


def install(temporary: pathlib.Path, path: pathlib.Path) -> None:
    """Steps 3-4: rename ``temporary`` over ``path``, durably. Raises OSError."""
    os.replace(temporary, path)
    fsync_directory(path.parent)


def write_atomically(path: pathlib.Path, data: bytes, mode: int, *,
                     owner: tuple[int, int] | None = None) -> None:
    """Replace ``path``'s content with ``data`` (steps 1-4). Raises OSError; a failed
    write leaves ``path`` as it was and no temporary file behind."""
    temporary = write_temporary(path, data, mode, owner=owner)
    try:
        install(temporary, path)
    finally:
        temporary.unlink(missing_ok=True)  # gone already once renamed


def fsync_directory(directory: pathlib.Path) -> None:
    """Make the latest renames, creations and removals in ``directory`` durable."""
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
