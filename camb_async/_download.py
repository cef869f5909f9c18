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


def _open_beside(target: str) -> tuple[str, IO[bytes]]:
    if os.path.isdir(target):
        raise IsADirectoryError(f"path is a directory: {target!r}")
    directory, name = os.path.split(os.path.abspath(target))
    for _ in range(100):
        temp = os.path.join(directory, f".{name}.{secrets.token_hex(6)}.part")
        try:
            return temp, open(temp, "xb")
        except FileExistsError:
            continue
    raise FileExistsError(f"could not create a temporary file beside {target!r}")


def _discard(temp: str, file: IO[bytes]) -> None:
    try:
        file.close()
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temp)


async def save_atomically(
    path: str | os.PathLike[str],
    open_body: Callable[[], Awaitable[Body]],
) -> int:
    """Write the body ``open_body()`` returns to ``path``; returns the bytes written.

    The temporary file is created before ``open_body`` runs, so an unwritable directory fails
    before any request is made.
    """
    target = os.fspath(path)
    if not isinstance(target, str):
        raise TypeError("path must be str or os.PathLike[str]")
    temp, file = await _offload(_open_beside, target)
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
