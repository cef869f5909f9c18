"""Hostile callers: every bad argument is a clear ValueError/TypeError before any request.

A task id comes from user data (a web form, a queue message) and ends up in a URL path, so
ids that could reach another route or task (traversal, CR/LF, NUL, encoded tricks) must be
refused or encoded as exactly one path segment, on every entry point. The checks happen
before the first request: after each refusal the fake API's log is still empty.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import aclosing
from typing import Any, cast

import pytest

from camb_async import (
    AsyncCambClient,
    ClientClosedError,
    PollPolicy,
    RateBudget,
    StatusResult,
    TaskKind,
    TaskStatus,
    gather_results,
    gather_statuses,
    iter_statuses,
)
from camb_async.testing import FakeCambAPI

from ..conftest import ClientFactory

pytestmark = pytest.mark.anyio

REFUSED_IDS: list[Any] = [
    "..",
    ".",
    "../dub/victim",
    "a/../../b",
    "/etc/passwd",
    "a/b",
    "a\\b",
    "..\\x",
    "a\r\nX-Injected: 1",
    "a\rb",
    "a\nb",
    "\r\n",
    "a\x00b",
    "\x00",
    "a\x7fb",
    "a\x85b",
    "a\tb",
    "",
    " ",
    "\t\n",
    "x" * 10_240,
    "y" * 513,
    "\udcff",
    "a\ud800b",
    "task-\udc80\udcff",  # lone surrogates: undecodable argv/file bytes
]
NON_STRING_IDS: list[Any] = [
    None,
    0,
    12,
    1.5,
    b"abc",
    bytearray(b"abc"),
    ["a"],
    ("a",),
    {"id": "a"},
    object(),
    TaskKind.DUB.__class__,
]
ALLOWED_IDS = [
    "%2F",
    "%2f",
    "%2e%2e",
    "%2e%2e%2fvictim",
    "?x",
    "#x",
    "a?b=c#d",
    "a;b",
    "a%00b",
    "%0d%0a",
    "...",
    "a..b",
    "ünïcødé",
    "a b",
    "%",
    "+",
    "x" * 512,
    "@evil.example",
    "http:",
    "~user",
    "a&b=c",
]


def bad_id_calls(client: AsyncCambClient, task_id: Any) -> list[Callable[[], Any]]:
    """Every public way to put ``task_id`` towards a URL; each must refuse it up front."""

    async def gather_ids() -> Any:
        return await gather_statuses(client, ["fine-1", task_id, "fine-2"], kind="dub")

    async def gather_snapshot() -> Any:
        return await client.gather_statuses(["fine-1", task_id], kind="tts", wait=False)

    async def iterate() -> Any:
        async with aclosing(iter_statuses(client, ["fine-1", task_id], kind="translate")) as it:
            return [r async for r in it]

    async def status() -> Any:
        return await client.dub.status(task_id)

    async def resource_status() -> Any:
        return await client.resource("transcribe").status(task_id)

    return [
        status,
        resource_status,
        lambda: client.tts.task(task_id),
        lambda: client.task("dub", task_id),
        lambda: client.task(TaskKind.TRANSCRIPTION, task_id),
        gather_ids,
        gather_snapshot,
        iterate,
    ]


async def _call(fn: Callable[[], Any]) -> None:
    result = fn()
    if hasattr(result, "__await__"):
        await result


@pytest.mark.parametrize("task_id", REFUSED_IDS, ids=lambda v: repr(v)[:20])
async def test_hostile_ids_are_value_errors_before_any_request(
    api: FakeCambAPI, client: AsyncCambClient, task_id: str
) -> None:
    api.add_task("dub", "fine-1")
    for call in bad_id_calls(client, task_id):
        with pytest.raises(ValueError) as info:
            await _call(call)
        # The message is short and never echoes a 10 KB id in full.
        assert len(str(info.value)) < 200
    assert api.log == []


@pytest.mark.parametrize("task_id", NON_STRING_IDS, ids=lambda v: type(v).__name__)
async def test_non_string_ids_are_type_errors_before_any_request(
    api: FakeCambAPI, client: AsyncCambClient, task_id: object
) -> None:
    for call in bad_id_calls(client, task_id):
        with pytest.raises(TypeError):
            await _call(call)
    assert api.log == []


@pytest.mark.parametrize("task_id", ALLOWED_IDS, ids=lambda v: repr(v)[:20])
async def test_allowed_odd_ids_arrive_as_exactly_that_one_id(
    api: FakeCambAPI, client: AsyncCambClient, task_id: str
) -> None:
    api.add_task("dub", task_id, status="ERROR")
    api.add_task("dub", "victim", status="SUCCESS")  # what a traversal would reach
    api.add_task("tts", task_id, status="TIMEOUT")
    assert (await client.dub.status(task_id)).status is TaskStatus.ERROR
    results = await gather_statuses(
        client, [client.dub.task(task_id), client.tts.task(task_id)], wait=False
    )
    assert [(r.task_id, r.status) for r in results] == [
        (task_id, TaskStatus.ERROR),
        (task_id, TaskStatus.TIMEOUT),
    ]
    # Each request was one path segment under its kind, and only the task's own was counted.
    assert [r.path.split("/")[1] for r in api.log] == ["dub", "dub", "tts"]
    assert all(r.path.count("/") == 2 and r.status == 200 for r in api.log)
    assert api.tasks[(TaskKind.DUB, "victim")].seen == 0


@pytest.mark.parametrize(
    ("kwargs", "error"),
    [
        ({"rate_limit": 0}, ValueError),
        ({"rate_limit": -1}, ValueError),
        ({"rate_limit": -0.001}, ValueError),
        ({"rate_limit": float("nan")}, ValueError),
        ({"rate_limit": float("inf")}, ValueError),
        ({"rate_limit": "20"}, TypeError),
        ({"rate_limit": True}, TypeError),
        ({"max_concurrency": 0}, ValueError),
        ({"max_concurrency": -5}, ValueError),
        ({"max_concurrency": 1.5}, TypeError),
        ({"max_concurrency": "4"}, TypeError),
        ({"max_concurrency": None}, TypeError),
        ({"timeout": 0}, ValueError),
        ({"timeout": -1}, ValueError),
        ({"timeout": float("nan")}, ValueError),
        ({"timeout": float("inf")}, ValueError),
        ({"max_retry_wait": float("nan")}, ValueError),
        ({"max_retry_wait": float("inf")}, ValueError),
        ({"max_retry_wait": -1}, ValueError),
        ({"max_retries": -1}, ValueError),
        ({"max_retries": 1.5}, ValueError),
        ({"budget": object()}, TypeError),
        ({"base_url": "ftp://example.com"}, ValueError),
        ({"base_url": "not a url"}, ValueError),
        ({"api_key": ""}, ValueError),
        ({"api_key": "key\r\nX-Evil: 1"}, ValueError),
        ({"api_key": "key\x00"}, ValueError),
    ],
    ids=lambda v: repr(v)[:40] if isinstance(v, dict) else v.__name__,
)
async def test_bad_client_settings_are_refused_at_construction(
    api: FakeCambAPI, make_client: ClientFactory, kwargs: dict[str, Any], error: type[Exception]
) -> None:
    with pytest.raises(error):
        make_client(**kwargs)
    assert api.log == []


@pytest.mark.parametrize(
    ("rate", "concurrency", "error"),
    [
        (0, 4, ValueError),
        (-3, 4, ValueError),
        (5, 0, ValueError),
        (5, -1, ValueError),
        (5, 2.0, TypeError),
        ("5", 4, TypeError),
    ],
)
def test_bad_rate_budget_settings(rate: Any, concurrency: Any, error: type[Exception]) -> None:
    with pytest.raises(error):
        RateBudget(rate, concurrency)


@pytest.mark.parametrize(
    "name", ["window", "margin", "min_rate", "default_pause", "max_pause", "recovery", "burst"]
)
@pytest.mark.parametrize("value", [float("nan"), float("inf"), -1.0])
def test_rate_budget_float_settings_must_be_finite(name: str, value: float) -> None:
    """Before, NaN passed every ``<= 0`` check (and then waited forever or never)."""
    with pytest.raises(ValueError, match=name):
        RateBudget(5, 4, **{name: value})


async def test_handle_from_another_client_is_refused_before_any_request(
    api: FakeCambAPI, make_client: ClientFactory
) -> None:
    mine, other = make_client(), make_client()
    ok = api.add_task("dub", "mine")
    api.add_task("dub", "theirs")
    foreign = other.dub.task("theirs")
    mixes: list[list[Any]] = [[foreign], [mine.dub.task(ok), foreign], [ok, foreign]]
    for tasks in mixes:
        with pytest.raises(ValueError, match="another AsyncCambClient"):
            await gather_statuses(mine, tasks, kind="dub")
        with pytest.raises(ValueError, match="another AsyncCambClient"):
            await mine.gather_statuses(tasks, kind="dub", wait=False)
        with pytest.raises(ValueError, match="another AsyncCambClient"):
            async with aclosing(iter_statuses(mine, tasks, kind="dub")) as it:
                async for _ in it:
                    pass
    await other.aclose()  # a closed client's handle is still someone else's
    with pytest.raises(ValueError, match="another AsyncCambClient"):
        await gather_statuses(mine, [mine.dub.task(ok), foreign])
    assert api.log == []


async def test_closed_client_refuses_every_call_before_any_request(
    api: FakeCambAPI, make_client: ClientFactory
) -> None:
    client = make_client()
    task_id = api.add_task("tts")
    handle = client.tts.task(task_id)
    await client.aclose()
    with pytest.raises(ClientClosedError):
        await gather_statuses(client, [handle])
    with pytest.raises(ClientClosedError):
        await client.tts.status(task_id)
    with pytest.raises(ClientClosedError):
        await handle.wait()
    with pytest.raises(ClientClosedError):
        async with aclosing(handle.watch()) as it:
            async for _ in it:
                pass
    with pytest.raises(ClientClosedError):
        async with aclosing(iter_statuses(client, [task_id], kind="tts")) as it2:
            async for _ in it2:
                pass
    with pytest.raises(ClientClosedError):
        async with client:
            pass
    assert api.log == []


@pytest.mark.parametrize(
    "call",
    [
        lambda c: gather_statuses(c, "one-string-not-a-list", kind="dub"),
        lambda c: gather_statuses(c, cast(Any, [b"bytes-id"]), kind="dub"),
        lambda c: gather_statuses(c, ["id"]),  # ids need a kind
        lambda c: gather_statuses(c, ["id"], kind="sing"),
        lambda c: gather_statuses(c, ["id"], kind="dub", timeout=-1),
        lambda c: gather_statuses(c, ["id"], kind="dub", timeout=cast(Any, "5")),
        lambda c: gather_statuses(c, ["id"], kind="dub", policy=cast(Any, {"initial": 1})),
        lambda c: gather_statuses(c, cast(Any, [42]), kind="dub"),
        lambda c: gather_statuses(c, cast(Any, [None]), kind="dub"),
    ],
    ids=[
        "str",
        "bytes",
        "no-kind",
        "bad-kind",
        "neg-timeout",
        "str-timeout",
        "dict-policy",
        "int-id",
        "none-id",
    ],
)
async def test_bad_bulk_arguments_are_refused_before_any_request(
    api: FakeCambAPI, client: AsyncCambClient, call: Callable[[AsyncCambClient], Any]
) -> None:
    api.add_task("dub", "id")
    with pytest.raises((ValueError, TypeError)):
        await call(client)
    assert api.log == []


@pytest.mark.parametrize(
    "kwargs",
    [
        {"initial": 0},
        {"initial": -1},
        {"max_interval": 0},
        {"factor": 0.5},
        {"initial": float("nan")},
        {"initial": "1"},
        {"jitter": 1.5},
        {"max_errors": -1},
    ],
)
def test_bad_poll_policies(kwargs: dict[str, Any]) -> None:
    with pytest.raises((ValueError, TypeError)):
        PollPolicy(**kwargs)


async def test_bad_wait_timeout_is_refused(api: FakeCambAPI, client: AsyncCambClient) -> None:
    handle = client.dub.task(api.add_task("dub"))
    with pytest.raises((ValueError, TypeError)):
        await handle.wait(timeout=-1)
    with pytest.raises((ValueError, TypeError)):
        await handle.wait(timeout="10")  # type: ignore[arg-type]
    assert api.log == []


@pytest.mark.parametrize("bad_id", ["\udcff", "a\ud800b", "..", "a/b", "a\r\nb"], ids=repr)
async def test_a_bad_id_is_a_per_slot_value_error_with_return_exceptions(
    api: FakeCambAPI, client: AsyncCambClient, bad_id: str
) -> None:
    """With ``return_exceptions=True`` a bad id's slot holds its ValueError, it is never sent,
    and the other tasks are polled as usual, in every bulk call."""
    good = [api.add_task("dub", "fine-1"), api.add_task("dub", "fine-2")]
    tasks = [good[0], bad_id, good[1], bad_id]

    def check(out: list[Any]) -> None:
        assert [type(x) for x in out][::2] == [StatusResult, StatusResult]
        assert [x.task_id for x in out[::2]] == good
        for error in out[1::2]:
            assert isinstance(error, ValueError) and cast(Any, error).task_id == bad_id
            assert len(str(error)) < 200

    check(await gather_statuses(client, tasks, kind="dub", return_exceptions=True))
    check(await client.gather_statuses(tasks, kind="dub", wait=False, return_exceptions=True))
    for mode in ("bare", "with"):
        it = iter_statuses(client, tasks, kind="dub", return_exceptions=True)
        if mode == "with":
            async with it:
                items = [r async for r in it]
        else:
            items = [r async for r in it]
        by_id = {getattr(x, "task_id", None): x for x in items}
        assert len(items) == 3 and isinstance(by_id[bad_id], ValueError)
    results = await gather_results(client, tasks, kind="dub", return_exceptions=True)
    assert isinstance(results[1], ValueError) and results[1] is results[3]
    assert not isinstance(results[0], BaseException)
    assert {r.path for r in api.log} <= {"/dub/fine-1", "/dub/fine-2", "/dubbing-results"}
    # Without return_exceptions the whole call is refused before any request, as before.
    api.log.clear()
    with pytest.raises(ValueError):
        await gather_results(client, tasks, kind="dub")
    assert api.log == []
