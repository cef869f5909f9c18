"""Saving a streamed answer to disk: all or nothing, never whole in memory.

The bytes go to a temporary file beside the target (same directory, so the final rename is
atomic on one filesystem) and the target appears only once the last byte is written. Any
failure — a dropped connection, a full disk, cancellation — removes the temporary file and
leaves whatever was at the target untouched.

File writes run in a worker thread (``anyio.to_thread``) so a slow disk never stalls the
event loop; chunks are gathered into ~1 MiB writes so a 200 MB answer costs ~200 thread
hand-offs rather than thousands (benchmarks/bench_audio.py measures it).
"""

from __future__ import annotations

import contextlib
import os
import secrets
import stat
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import IO, Protocol

import anyio
import anyio.to_thread

__all__ = ["WRITE_SIZE", "save_atomically"]

#: Bytes gathered before one write to disk.
WRITE_SIZE = 1 << 20
#: How blocking file operations are run: in a worker thread. (Tests on a virtual clock run
#: them inline: a thread hand-off leaves the loop idle, and an idle virtual clock jumps.)
_offload = anyio.to_thread.run_sync


class Body(Protocol):
    """An answer body being read: chunks by ``async for``, and ``aclose()``."""

    def __aiter__(self) -> AsyncIterator[bytes]: ...

    async def aclose(self) -> None: ...


def _open_beside(target: str) -> tuple[str, str, IO[bytes]]:
    """The real target (a symlink at ``target`` is followed: the file it points to is
    replaced, the link stays), and a new temporary file beside it.

    The temporary name is short (``.camb-<12 hex>.part``) so any legal name can be saved;
    it takes the mode of the file it replaces (a new file gets the umask's default).
    """
    if os.path.isdir(target):
        raise IsADirectoryError(f"path is a directory: {target!r}")
    real = os.path.realpath(target) if os.path.islink(target) else os.path.abspath(target)
    if os.path.isdir(real):
        raise IsADirectoryError(f"path is a directory: {target!r}")
    directory = os.path.dirname(real)
    try:
        mode: int | None = stat.S_IMODE(os.stat(real).st_mode)
    except FileNotFoundError:
        mode = None
    for _ in range(100):
        temp = os.path.join(directory, f".camb-{secrets.token_hex(6)}.part")
        try:
            file = open(temp, "xb")  # noqa: SIM115 - closed by save_atomically
        except FileExistsError:
            continue
        if mode is not None:
            try:
                os.fchmod(file.fileno(), mode)
            except BaseException:
                _discard(temp, file)
                raise
        return real, temp, file
    raise FileExistsError(f"could not create a temporary file beside {target!r}")


def _discard(temp: str, file: IO[bytes]) -> None:
    try:
        file.close()
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temp)


async def save_atomically(
    path: str | os.PathLike[str], open_body: Callable[[], Awaitable[Body]]
) -> int:
    """Write the body ``open_body()`` returns to ``path``; returns the bytes written.

    The temporary file is created before ``open_body`` runs, so an unwritable directory fails
    before any request is made (an ``OSError``: ``PermissionError``, ``FileNotFoundError``,
    ``IsADirectoryError``...). A symlink at ``path`` is written through: the file it points
    to is replaced atomically, the link is kept. An existing file's permission bits are kept.
    """
    target = os.fspath(path)
    if not isinstance(target, str):
        raise TypeError("path must be str or os.PathLike[str]")
    target, temp, file = await _offload(_open_beside, target)
    done = False
    body: Body | None = None
    try:
        body = await open_body()
        written = 0
        pending = bytearray()
        async for chunk in body:
            pending += chunk
            if len(pending) >= WRITE_SIZE:
                batch, pending = pending, bytearray()
                await _offload(file.write, batch)
                written += len(batch)
        if pending:
            await _offload(file.write, pending)
            written += len(pending)
        await _offload(file.close)
        os.replace(temp, target)
        done = True
        return written
    finally:
        if not done:  # before any await: the temporary file goes even when cancelled
            _discard(temp, file)
        if body is not None:
            with anyio.CancelScope(shield=True):
                await body.aclose()
