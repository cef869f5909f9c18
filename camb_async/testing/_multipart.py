"""A streaming multipart/form-data reader (python-multipart): text fields kept, file parts
reduced to their size and digest, so a 100 MB upload costs the fake no memory."""

from __future__ import annotations

import hashlib
from typing import Any

from ._asgi import Receive

_FORM_TEXT_LIMIT = 1 << 20  # longest non-file form field kept


async def _read_form(receive: Receive, content_type: str) -> dict[str, Any]:
    """Parse a multipart body as it streams in: text fields are kept (up to 1 MiB), file
    parts are reduced to ``{"filename", "content_type", "size", "sha256"}``.

    A malformed body leaves ``"__invalid__"`` in the form (the app answers 422) and is still
    read to its end."""
    reader = _FormReader(content_type)
    while True:
        message = await receive()
        reader.feed(message.get("body", b""))
        if not message.get("more_body"):
            return reader.finish()


class _FormReader:
    """python-multipart's callbacks, collecting one form."""

    def __init__(self, content_type: str) -> None:
        try:
            from python_multipart.multipart import MultipartParser, parse_options_header
        except ImportError as exc:  # pragma: no cover - a test extra
            raise RuntimeError(
                "FakeCambAPI needs python-multipart for multipart requests "
                "(pip install 'camb-async[test]')"
            ) from exc
        self._options = parse_options_header
        self.form: dict[str, Any] = {}
        self.part: dict[str, Any] = {}
        _, params = parse_options_header(content_type)
        boundary = params.get(b"boundary")
        self.parser: Any = None
        if not boundary:
            self.form["__invalid__"] = "no boundary"
            return
        self.parser = MultipartParser(
            boundary,
            {
                "on_part_begin": self.on_part_begin,
                "on_part_data": self.on_part_data,
                "on_part_end": self.on_part_end,
                "on_header_field": self.on_header_field,
                "on_header_value": self.on_header_value,
                "on_header_end": self.on_header_end,
                "on_headers_finished": self.on_headers_finished,
            },
        )

    def feed(self, chunk: bytes) -> None:
        if self.parser is not None and chunk:
            try:
                self.parser.write(chunk)
            except Exception as exc:  # malformed body: answer 422, keep draining
                self.form["__invalid__"] = str(exc)[:200]
                self.parser = None

    def finish(self) -> dict[str, Any]:
        if self.parser is not None:
            try:
                self.parser.finalize()
            except Exception as exc:
                self.form["__invalid__"] = str(exc)[:200]
        return self.form

    def on_part_begin(self) -> None:
        self.part = {
            "headers": {},
            "field": b"",
            "value": b"",
            "name": "",
            "file": None,
            "text": bytearray(),
        }

    def on_header_field(self, data: bytes, start: int, end: int) -> None:
        self.part["field"] += data[start:end]

    def on_header_value(self, data: bytes, start: int, end: int) -> None:
        self.part["value"] += data[start:end]

    def on_header_end(self) -> None:
        part = self.part
        part["headers"][part["field"].lower()] = part["value"]
        part["field"] = part["value"] = b""

    def on_headers_finished(self) -> None:
        part = self.part
        _, options = self._options(part["headers"].get(b"content-disposition", b""))
        part["name"] = options.get(b"name", b"").decode("utf-8", "replace")
        filename = options.get(b"filename")
        if filename is not None:
            part["file"] = {
                "filename": filename.decode("utf-8", "replace"),
                "content_type": part["headers"].get(b"content-type", b"").decode("latin-1"),
                "size": 0,
                "sha256": hashlib.sha256(),
            }

    def on_part_data(self, data: bytes, start: int, end: int) -> None:
        upload = self.part["file"]
        if upload is not None:
            upload["sha256"].update(data[start:end])
            upload["size"] += end - start
        elif len(self.part["text"]) < _FORM_TEXT_LIMIT:
            self.part["text"] += data[start:end]

    def on_part_end(self) -> None:
        upload = self.part["file"]
        if upload is not None:
            upload["sha256"] = upload["sha256"].hexdigest()
            self.form[self.part["name"]] = upload
        else:
            self.form[self.part["name"]] = bytes(self.part["text"]).decode("utf-8", "replace")
