"""A streaming multipart/form-data reader (python-multipart): text fields kept, file parts
reduced to their size and digest, so a 100 MB upload costs the fake no memory."""

from __future__ import annotations

import hashlib
from typing import Any

from ._asgi import Receive

_FORM_TEXT_LIMIT = 1 << 20  # longest non-file form field kept


async def _read_form(receive: Receive, content_type: str) -> dict[str, Any]:
    """Parse a multipart body as it streams in: text fields are kept (up to 1 MiB), file
    parts are reduced to ``{"filename", "content_type", "size", "sha256"}``."""
    try:
        from python_multipart.multipart import MultipartParser, parse_options_header
    except ImportError as exc:  # pragma: no cover - a test extra
        raise RuntimeError("FakeCambAPI needs python-multipart for multipart requests "
                           "(pip install 'camb-async[test]')") from exc

    form: dict[str, Any] = {}
    part: dict[str, Any] = {}

    def on_part_begin() -> None:
        part.clear()
        part.update(headers={}, field=b"", value=b"", name="", file=None, text=bytearray())

    def on_header_field(data: bytes, start: int, end: int) -> None:
        part["field"] += data[start:end]

    def on_header_value(data: bytes, start: int, end: int) -> None:
        part["value"] += data[start:end]

    def on_header_end() -> None:
        part["headers"][part["field"].lower()] = part["value"]
        part["field"] = part["value"] = b""

    def on_headers_finished() -> None:
        _, options = parse_options_header(part["headers"].get(b"content-disposition", b""))
        part["name"] = options.get(b"name", b"").decode("utf-8", "replace")
        filename = options.get(b"filename")
        if filename is not None:
            part["file"] = {
                "filename": filename.decode("utf-8", "replace"),
                "content_type": part["headers"].get(b"content-type", b"").decode("latin-1"),
                "size": 0, "sha256": hashlib.sha256(),
            }

    def on_part_data(data: bytes, start: int, end: int) -> None:
        upload = part["file"]
        if upload is not None:
            upload["sha256"].update(data[start:end])
            upload["size"] += end - start
        elif len(part["text"]) < _FORM_TEXT_LIMIT:
            part["text"] += data[start:end]

    def on_part_end() -> None:
        upload = part["file"]
        if upload is not None:
            upload["sha256"] = upload["sha256"].hexdigest()
            form[part["name"]] = upload
        else:
            form[part["name"]] = bytes(part["text"]).decode("utf-8", "replace")

    _, params = parse_options_header(content_type)
    boundary = params.get(b"boundary")
    parser: Any = None
    if boundary:
        parser = MultipartParser(boundary, {
            "on_part_begin": on_part_begin, "on_part_data": on_part_data,
            "on_part_end": on_part_end, "on_header_field": on_header_field,
            "on_header_value": on_header_value, "on_header_end": on_header_end,
            "on_headers_finished": on_headers_finished,
        })
    else:
        form["__invalid__"] = "no boundary"
    while True:
        message = await receive()
        chunk = message.get("body", b"")
        if parser is not None and chunk:
            try:
                parser.write(chunk)
            except Exception as exc:  # malformed body: answer 422, keep draining
                form["__invalid__"] = str(exc)[:200]
                parser = None
        if not message.get("more_body"):
            break
    if parser is not None:
        try:
            parser.finalize()
        except Exception as exc:
            form["__invalid__"] = str(exc)[:200]
    return form
