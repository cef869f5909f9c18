"""A caller's mistake in ``extra_headers``/``extra_body`` is a TypeError/ValueError before
any request, never a (transient, retried) APIConnectionError: the fake API sees nothing."""

from __future__ import annotations

from typing import Any

import pytest

from camb_async.testing import FakeCambAPI

from ..conftest import ClientFactory

pytestmark = pytest.mark.anyio

BAD_BODIES: list[tuple[dict[str, Any], type[Exception]]] = [
    ({"a": {1, 2}}, TypeError),
    ({"a": b"raw"}, TypeError),
    ({"a": float("nan")}, ValueError),
    ({"a": [float("inf")]}, ValueError),
    ({"a": "\udcff"}, ValueError),
]

BAD_HEADERS: list[dict[str, str]] = [
    {"X-A": "caf\u00e9\u20ac"},
    {"X-A": "caf\u00e9"},  # latin-1, but httpx sends str header values as ASCII
    {"X-A": "a\r\nX-Injected: 1"},
    {"X-A": "a\nb"},
    {"X-A": "a\0b"},
    {"X A": "v"},
    {"X-A:": "v"},
    {"": "v"},
    {"X-\u00e9": "v"},
]


@pytest.mark.parametrize(("body", "error"), BAD_BODIES)
async def test_unsendable_extra_body_is_refused_up_front(
    api: FakeCambAPI, make_client: ClientFactory, body: dict[str, Any], error: type[Exception]
) -> None:
    client = make_client(max_retries=4)
    with pytest.raises(error, match="extra_body field 'a'"):
        await client.tts.results([1], extra_body=body)
    with pytest.raises(error, match="extra_body field 'a'"):  # multipart create too
        await client.transcription.create(
            language=1, file=b"RIFF....", filename="a.wav", extra_body=body
        )
    assert api.log == []


@pytest.mark.parametrize("headers", BAD_HEADERS)
async def test_unsendable_extra_headers_are_refused_up_front(
    api: FakeCambAPI, make_client: ClientFactory, headers: dict[str, str]
) -> None:
    client = make_client(max_retries=4)
    with pytest.raises(ValueError, match="extra_headers"):
        await client.tts.results([1], extra_headers=headers)
    assert api.log == []


async def test_ascii_extra_header_and_json_extra_body_still_go_out(
    api: FakeCambAPI, make_client: ClientFactory
) -> None:
    client = make_client()
    await client.tts.results(
        [1], extra_headers={"X-Note": "cafe", "X_Odd~Name": "v"}, extra_body={"x": [1, None]}
    )
    assert len(api.log) == 1
