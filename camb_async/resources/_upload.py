"""A file argument of a multipart create call: opened (or wrapped) once, re-opened for a retry."""

from __future__ import annotations

import io
import mimetypes
import os
from typing import IO, Any, cast

from ._args import _required_str

__all__ = ["_Upload"]


class _Upload:
    """The ``media_file`` part of a transcription upload, and how to resend it.

    Paths are opened here and closed after the request (reopened for a retry); bytes are
    reused; a caller's file object is rewound by httpx before each send (it seeks to 0), so
    only one that cannot seek is not resendable.
    """

    __slots__ = ("filename", "content_type", "_path", "_data", "_file", "resendable")

    def __init__(
        self,
        filename: str,
        content_type: str,
        path: str | None,
        data: bytes | None,
        file: IO[bytes] | None,
        resendable: bool,
    ) -> None:
        self.filename = filename
        self.content_type = content_type
        self._path = path
        self._data = data
        self._file = file
        self.resendable = resendable

    @classmethod
    def prepare(cls, file: object, filename: str | None, content_type: str | None) -> _Upload:
        if filename is not None:
            _required_str(filename, "filename")
            if any(c in filename for c in '\r\n"'):
                raise ValueError("filename must not contain quotes or line breaks")
        if content_type is not None:
            _required_str(content_type, "content_type")
            if any(c in content_type for c in "\r\n"):
                raise ValueError("content_type must not contain line breaks")
        if isinstance(file, (str, os.PathLike)):
            path = os.fspath(file)
            if not isinstance(path, str):
                raise TypeError("file paths must be str or os.PathLike[str]")
            if not os.path.isfile(path):
                raise FileNotFoundError(f"no such file to upload: {path!r}")
            name = filename or os.path.basename(path) or "upload"
            handle = open(path, "rb")  # noqa: SIM115 - closed by close(), after the request
            return cls(name, content_type or _guess_type(name), path, None, handle, True)
        if isinstance(file, (bytes, bytearray, memoryview)):
            name = filename or "upload"
            return cls(name, content_type or _guess_type(name), None, bytes(file), None, True)
        if isinstance(file, io.TextIOBase):
            raise TypeError("file objects must be opened in binary mode ('rb')")
        read = getattr(file, "read", None)
        if not callable(read):
            raise TypeError(
                f"file must be a path, bytes, or a binary file object, got {type(file).__name__}"
            )
        fobj = cast("IO[bytes]", file)
        given = getattr(fobj, "name", None)
        name = filename or (os.path.basename(given) if isinstance(given, str) else "") or "upload"
        seekable = getattr(fobj, "seekable", None)
        resendable = bool(seekable()) if callable(seekable) else False
        return cls(name, content_type or _guess_type(name), None, None, fobj, resendable)

    def size(self) -> int | None:
        """Bytes to upload, if known without reading (a duration hint), else None."""
        if self._data is not None:
            return len(self._data)
        fobj = self._file
        if fobj is None:
            return None
        try:
            return os.fstat(fobj.fileno()).st_size
        except (AttributeError, OSError, ValueError, io.UnsupportedOperation):
            pass
        if not self.resendable:  # cannot seek: the size is unknown until it is sent
            return None
        try:  # httpx rewinds the file before sending, so the position needn't be kept
            here = fobj.tell()
            end = fobj.seek(0, io.SEEK_END)
            fobj.seek(here)
            return end
        except (AttributeError, OSError, ValueError):
            return None

    def part(self) -> tuple[str, tuple[str, Any, str]]:
        body: Any = self._data if self._data is not None else self._file
        return ("media_file", (self.filename, body, self.content_type))

    async def reopen(self, parts: list[tuple[str, Any]]) -> list[tuple[str, Any]]:
        if self._path is not None:
            if self._file is not None:
                self._file.close()
            self._file = open(self._path, "rb")  # noqa: SIM115, ASYNC230 - a local file
        return [*parts, self.part()]

    def close(self) -> None:
        if self._path is not None and self._file is not None:
            self._file.close()
            self._file = None


def _guess_type(name: str) -> str:
    return mimetypes.guess_type(name)[0] or "application/octet-stream"
