"""Typed results: single and batch fetches, handle.result(), gather_results (virtual time)."""

from __future__ import annotations

from typing import Any

import anyio
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from camb_async import (
    APIError,
    AsyncCambClient,
    AuthenticationError,
    DubbingResult,
    InternalServerError,
    NotFoundError,
    PollPolicy,
    RateBudget,
    TaskFailedError,
    TaskKind,
    TaskStatus,
    TranscriptionResult,
    TranscriptSegment,
    TranslationResult,
    TTSResult,
    WaitTimeoutError,
    gather_results,
)
from camb_async._models import (
    ModelError,
    parse_batch,
    parse_dubbing_result,
    parse_transcription_result,
    parse_translation_result,
    parse_tts_result,
)
from camb_async.testing import FakeCambAPI, FakeTask

from ..conftest import ClientFactory

pytestmark = pytest.mark.anyio

FAST = PollPolicy(initial=1.0, factor=1.0, max_interval=1.0, jitter=0.0)
BATCH_PATHS = {
    TaskKind.DUB: "/dubbing-results",
    TaskKind.TTS: "/tts-results",
    TaskKind.TRANSLATION: "/translation-results",
    TaskKind.TRANSCRIPTION: "/transcription-results",
}


def run_of(api: FakeCambAPI, kind: TaskKind, task_id: str) -> int:
    run_id = api.tasks[(kind, task_id)].run_id
    assert run_id is not None
    return run_id


# ------------------------------------------------------------------ single result


async def test_single_result_of_each_kind_is_typed(
    api: FakeCambAPI, client: AsyncCambClient
) -> None:
    runs = {kind: run_of(api, kind, api.add_task(kind)) for kind in TaskKind}

    dub = await client.dub.result(runs[TaskKind.DUB])
    assert isinstance(dub, DubbingResult)
    assert dub.audio_url.endswith("audio.mp3") and dub.video_url is not None
    assert all(isinstance(s, TranscriptSegment) for s in dub.transcript)
    assert dub.transcript[0].start == 0.0 and dub.transcript[0].speaker == "SPEAKER_0"

    tts = await client.tts.result(runs[TaskKind.TTS])
    assert tts == TTSResult(f"https://fake.camb.ai/tts/{runs[TaskKind.TTS]}/speech.flac")

    translation = await client.translation.result(runs[TaskKind.TRANSLATION])
    assert isinstance(translation, TranslationResult) and isinstance(translation.texts, tuple)

    transcription = await client.transcription.result(runs[TaskKind.TRANSCRIPTION])
    assert isinstance(transcription, TranscriptionResult)
    assert len(transcription.transcript) == 1 + runs[TaskKind.TRANSCRIPTION] % 3
    assert [r.path for r in api.requests("GET")] == [
        f"/dub-result/{runs[TaskKind.DUB]}",
        f"/tts-result/{runs[TaskKind.TTS]}",
        f"/translation-result/{runs[TaskKind.TRANSLATION]}",
        f"/transcription-result/{runs[TaskKind.TRANSCRIPTION]}",
    ]


async def test_tts_result_is_fetched_in_file_url_mode(
    api: FakeCambAPI, client: AsyncCambClient
) -> None:
    # The fake streams raw audio (not JSON) unless output_type=file_url is sent, like the API
    # (which also refuses the upper-case FILE_URL: tests/test_fake_strict.py).
    run_id = run_of(api, TaskKind.TTS, api.add_task("tts"))
    assert (await client.tts.result(run_id)).output_url.startswith("https://")
    assert api.log[-1].path == f"/tts-result/{run_id}" and api.log[-1].status == 200


async def test_dub_result_per_language_map(api: FakeCambAPI, client: AsyncCambClient) -> None:
    run_id = run_of(api, TaskKind.DUB, api.add_task("dub"))
    one = {"audio_url": "https://a/x.mp3", "transcript": []}
    api.set_result("dub", run_id, {"54": one, "76": {**one, "video_url": "https://v"}})
    result = await client.dub.result(run_id)
    assert result == {
        "54": DubbingResult("https://a/x.mp3", ()),
        "76": DubbingResult("https://a/x.mp3", (), "https://v"),
    }


async def test_unknown_fields_are_ignored(api: FakeCambAPI, client: AsyncCambClient) -> None:
    run_id = run_of(api, TaskKind.TRANSCRIPTION, api.add_task("transcribe"))
    segment = {"start": 1, "end": 2.5, "text": "hi", "speaker": "A", "confidence": 0.9}
    api.set_result("transcribe", run_id, {"transcript": [segment], "language": "en"})
    result = await client.transcription.result(run_id)
    assert result == TranscriptionResult((TranscriptSegment(1.0, 2.5, "hi", "A"),))


@pytest.mark.parametrize(
    ("kind", "bad"),
    [
        (TaskKind.DUB, {"transcript": []}),  # no audio_url
        (TaskKind.TTS, "not a url"),
        (TaskKind.TRANSLATION, {"texts": "one string"}),
        (
            TaskKind.TRANSCRIPTION,
            {"transcript": [{"start": "0", "end": 1, "text": "x", "speaker": "A"}]},
        ),
    ],
)
async def test_malformed_result_is_an_api_error(
    api: FakeCambAPI, client: AsyncCambClient, kind: TaskKind, bad: Any
) -> None:
    run_id = run_of(api, kind, api.add_task(kind))
    api.set_result(kind, run_id, bad)
    with pytest.raises(APIError) as info:
        await client.resource(kind).result(run_id)
    assert info.value.status_code == 200 and "unexpected answer" in str(info.value)


async def test_unknown_run_is_not_found(client: AsyncCambClient) -> None:
    with pytest.raises(NotFoundError):
        await client.translation.result(424242)


async def test_result_of_unfinished_run_is_not_served(
    api: FakeCambAPI, client: AsyncCambClient
) -> None:
    task_id = api.add_task("tts", after=60)
    with pytest.raises(NotFoundError):
        await client.tts.result(run_of(api, TaskKind.TTS, task_id))


# ------------------------------------------------------------------ batch results


async def test_1000_results_in_10_requests(api: FakeCambAPI, client: AsyncCambClient) -> None:
    runs = [run_of(api, TaskKind.TRANSLATION, api.add_task("translate")) for _ in range(1000)]
    results = await client.translation.results(runs)
    assert list(results) == runs
    assert all(isinstance(r, TranslationResult) for r in results.values())
    batch = api.requests("POST", "/translation-results")
    assert len(api.log) == len(batch) == 10


@pytest.mark.parametrize("kind", list(TaskKind)[:4])
async def test_batch_results_for_each_kind(
    api: FakeCambAPI, client: AsyncCambClient, kind: TaskKind
) -> None:
    runs = [run_of(api, kind, api.add_task(kind)) for _ in range(7)]
    results = await client.resource(kind).results(runs, chunk_size=3)
    singles = [await client.resource(kind).result(r) for r in runs]
    assert [results[r] for r in runs] == singles
    assert len(api.requests("POST", BATCH_PATHS[kind])) == 3


async def test_batch_chunks_run_concurrently_within_the_budget(
    api: FakeCambAPI, make_client: ClientFactory
) -> None:
    client = make_client(budget=RateBudget(None, 4))
    runs = [run_of(api, TaskKind.DUB, api.add_task("dub")) for _ in range(1000)]
    api.inject(status=None, delay=10.0, path="/dubbing-results", count=10)
    start = anyio.current_time()
    results = await client.dub.results(runs)
    elapsed = anyio.current_time() - start
    assert len(results) == 1000
    # 10 chunks, 4 at a time, 10 s each: 3 rounds (sequential would take 100 s).
    assert 30.0 <= elapsed < 31.0
    arrivals = sorted(r.time - start for r in api.requests("POST", "/dubbing-results"))
    assert [round(t) for t in arrivals] == [0, 0, 0, 0, 10, 10, 10, 10, 20, 20]


async def test_batch_drops_duplicates_and_leaves_out_unknown_runs(
    api: FakeCambAPI, client: AsyncCambClient
) -> None:
    runs = [run_of(api, TaskKind.TTS, api.add_task("tts")) for _ in range(3)]
    results = await client.tts.results([runs[0], runs[1], runs[0], 999_999, runs[2]])
    assert list(results) == runs
    assert len(api.requests("POST")) == 1


async def test_batch_ignores_runs_it_did_not_ask_for(
    api: FakeCambAPI, client: AsyncCambClient
) -> None:
    asked, other = (run_of(api, TaskKind.TTS, api.add_task("tts")) for _ in range(2))
    api.inject(
        status=None,
        path="/tts-results",
        body=(
            b'{"%d": {"output_url": "https://a"}, "%d": {"output_url": "https://b"}}'
            % (asked, other)
        ),
    )
    assert list(await client.tts.results([asked])) == [asked]


@pytest.mark.parametrize(
    ("run_ids", "chunk_size", "error"),
    [
        ("123", 100, TypeError),
        ([1, True], 100, TypeError),
        ([1, "2"], 100, TypeError),
        ([-1], 100, ValueError),
        ([1], 0, ValueError),
        ([1], 1001, ValueError),
        ([1], 2.5, ValueError),
    ],
)
async def test_batch_arguments_are_checked_before_any_request(
    api: FakeCambAPI, client: AsyncCambClient, run_ids: Any, chunk_size: Any, error: type[Exception]
) -> None:
    with pytest.raises(error):
        await client.dub.results(run_ids, chunk_size=chunk_size)
    assert api.log == []


async def test_failed_chunk_raises_one_plain_error(
    api: FakeCambAPI, make_client: ClientFactory
) -> None:
    client = make_client(max_retries=1)
    runs = [run_of(api, TaskKind.TTS, api.add_task("tts")) for _ in range(250)]
    api.inject(status=500, path="/tts-results", count=6)  # every attempt of all 3 chunks
    with pytest.raises(InternalServerError):  # not an ExceptionGroup
        await client.tts.results(runs)


async def test_transient_chunk_failure_is_retried(
    api: FakeCambAPI, client: AsyncCambClient
) -> None:
    runs = [run_of(api, TaskKind.TTS, api.add_task("tts")) for _ in range(150)]
    api.inject(status=503, path="/tts-results")
    assert len(await client.tts.results(runs)) == 150
    assert len(api.requests("POST", "/tts-results")) == 3


async def test_empty_batch_makes_no_request(api: FakeCambAPI, client: AsyncCambClient) -> None:
    assert await client.transcription.results([]) == {}
    assert api.log == []


# ------------------------------------------------------------------ handle.result()


async def test_handle_result_waits_then_fetches(api: FakeCambAPI, client: AsyncCambClient) -> None:
    task_id = api.add_task("translate", after=12)
    result = await client.translation.task(task_id).result(policy=FAST)
    assert isinstance(result, TranslationResult)
    assert anyio.current_time() - api.epoch >= 12  # type: ignore[operator]
    run_id = run_of(api, TaskKind.TRANSLATION, task_id)
    assert api.log[-1].path == f"/translation-result/{run_id}"


@pytest.mark.parametrize(
    "status", [TaskStatus.ERROR, TaskStatus.TIMEOUT, TaskStatus.PAYMENT_REQUIRED]
)
async def test_handle_result_raises_task_failed(
    api: FakeCambAPI, client: AsyncCambClient, status: TaskStatus
) -> None:
    task_id = api.add_task(
        "dub", status=status, after=3, message="source too long", exception_reason="SOURCE_TOO_LONG"
    )
    with pytest.raises(TaskFailedError) as info:
        await client.dub.task(task_id).result(policy=FAST)
    err = info.value
    assert err.status.status is status and err.status.task_id == task_id
    assert err.message == "source too long" and err.exception_reason == "SOURCE_TOO_LONG"
    assert not any("result" in r.path for r in api.log)  # no result request for a failure


async def test_handle_result_timeout(api: FakeCambAPI, client: AsyncCambClient) -> None:
    task_id = api.add_task("tts", after=100)
    with pytest.raises(WaitTimeoutError) as info:
        await client.tts.task(task_id).result(timeout=10, policy=FAST)
    assert info.value.last is not None and info.value.last.status is TaskStatus.PENDING


async def test_handle_result_success_without_run_id(
    api: FakeCambAPI, client: AsyncCambClient
) -> None:
    api.tasks[(TaskKind.TTS, "odd")] = FakeTask(kind=TaskKind.TTS, task_id="odd")
    with pytest.raises(APIError, match="no run_id"):
        await client.tts.task("odd").result()


# ------------------------------------------------------------------ gather_results


async def test_gather_results_mixed_kinds_in_input_order(
    api: FakeCambAPI, client: AsyncCambClient
) -> None:
    handles = []
    for i in range(120):
        kind = list(TaskKind)[i % 4]
        handles.append(client.task(kind, api.add_task(kind, after=float(i % 7))))
    handles.append(handles[5])  # a repeat fills both slots
    results = await gather_results(client, handles, policy=FAST)
    assert len(results) == 121 and results[-1] == results[5]
    for handle, result in zip(handles, results, strict=True):
        run_id = run_of(api, handle.kind, handle.task_id)
        assert result == await client.resource(handle.kind).result(run_id)
    # 30 runs a kind -> one batch request a kind
    for kind, path in BATCH_PATHS.items():
        assert len(api.requests("POST", path)) == 1, kind


async def test_gather_results_1000_ids_costs_10_result_requests(
    api: FakeCambAPI, client: AsyncCambClient
) -> None:
    ids = [api.add_task("transcribe") for _ in range(1000)]
    results = await gather_results(client, ids, kind="transcribe", policy=FAST)
    assert all(isinstance(r, TranscriptionResult) for r in results)
    assert len(api.requests("POST", "/transcription-results")) == 10
    assert not api.requests("GET", "/transcription-result/")


async def test_gather_results_failed_slots(api: FakeCambAPI, client: AsyncCambClient) -> None:
    ok = api.add_task("tts", after=2)
    failed = api.add_task("tts", status="ERROR", after=1, message="boom")
    slow = api.add_task("tts", after=500)
    results = await gather_results(
        client, [ok, failed, slow], kind="tts", timeout=60, policy=FAST, return_exceptions=True
    )
    assert isinstance(results[0], TTSResult)
    assert isinstance(results[1], TaskFailedError) and results[1].message == "boom"
    assert results[1].task_id == failed
    assert isinstance(results[2], WaitTimeoutError) and results[2].task_id == slow
    assert results[2].last is not None and results[2].last.status is TaskStatus.PENDING


async def test_gather_results_fails_fast_on_the_first_failure(
    api: FakeCambAPI, client: AsyncCambClient
) -> None:
    ids = [
        api.add_task("translate"),
        api.add_task("translate", status="PAYMENT_REQUIRED", after=9),
        api.add_task("translate", status="ERROR", after=1),
        api.add_task("translate", after=600),
    ]
    start = anyio.current_time()
    with pytest.raises(TaskFailedError) as info:
        await gather_results(client, ids, kind="translate", policy=FAST)
    assert info.value.status.status is TaskStatus.ERROR and info.value.task_id == ids[2]
    assert anyio.current_time() - start < 9  # raised when seen, polling stopped
    assert not api.requests("POST")  # the one success was still queued for its batch
    polls = len(api.log)
    await anyio.sleep(60)
    assert len(api.log) == polls  # nothing left running


async def test_gather_results_fetches_full_batches_while_polling(
    api: FakeCambAPI, client: AsyncCambClient
) -> None:
    early = [api.add_task("tts", after=1) for _ in range(200)]
    late = [api.add_task("tts", after=300) for _ in range(50)]
    start = anyio.current_time()
    results = await gather_results(
        client,
        early + late,
        kind="tts",
        chunk_size=100,
        policy=PollPolicy(initial=1.0, max_interval=60.0),
    )
    assert all(isinstance(r, TTSResult) for r in results)
    fetched_at = [r.time - start for r in api.requests("POST", "/tts-results")]
    assert len(fetched_at) == 3
    assert sorted(fetched_at)[1] < 100 <= sorted(fetched_at)[2]  # 2 full batches early


async def test_gather_results_fetches_singly_what_a_batch_left_out(
    api: FakeCambAPI, client: AsyncCambClient
) -> None:
    good = api.add_task("dub")
    # A task whose status names a run the result endpoints do not know.
    api.tasks[(TaskKind.DUB, "ghost")] = FakeTask(
        kind=TaskKind.DUB, task_id="ghost", run_id=None, extra={"run_id": 777}
    )
    results = await gather_results(client, [good, "ghost"], kind="dub", return_exceptions=True)
    assert isinstance(results[0], DubbingResult)
    assert isinstance(results[1], NotFoundError)
    assert [r.path for r in api.requests("GET", "/dub-result/")] == ["/dub-result/777"]
    with pytest.raises(NotFoundError):
        await gather_results(client, [good, "ghost"], kind="dub")


async def test_gather_results_batch_error_fills_slots(
    api: FakeCambAPI, make_client: ClientFactory
) -> None:
    client = make_client(max_retries=0)
    ids = [api.add_task("tts") for _ in range(3)]
    api.inject(status=500, path="/tts-results")
    results = await gather_results(client, ids, kind="tts", return_exceptions=True)
    assert all(isinstance(r, InternalServerError) for r in results)


async def test_gather_results_reports_updates(api: FakeCambAPI, client: AsyncCambClient) -> None:
    seen: list[TaskStatus] = []
    ids = [api.add_task("tts", after=2.5)]
    await gather_results(
        client, ids, kind="tts", policy=FAST, on_update=lambda r: seen.append(r.status)
    )
    assert seen[-1] is TaskStatus.SUCCESS and TaskStatus.PENDING in seen


async def test_gather_results_checks_chunk_size_first(
    api: FakeCambAPI, client: AsyncCambClient
) -> None:
    with pytest.raises(ValueError):
        await gather_results(client, [api.add_task("tts")], kind="tts", chunk_size=0)
    assert api.log == []


# ------------------------------------------------------------------ hostile batch answers

JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=8),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=6), inner, max_size=4)
    ),
    max_leaves=12,
)


@settings(max_examples=120, deadline=None)
@given(
    answer=st.dictionaries(st.sampled_from(["1", "2", "x", "-1", "01", " 2"]), JSON, max_size=4)
    | JSON
)
def test_parse_batch_fails_only_with_model_error(answer: Any) -> None:
    for parse in (
        parse_dubbing_result,
        parse_tts_result,
        parse_translation_result,
        parse_transcription_result,
    ):
        try:
            out = parse_batch(answer, {1, 2}, parse)
        except ModelError:
            continue
        assert set(out) <= {1, 2}


@pytest.mark.parametrize(
    "answer",
    [b"[]", b'"x"', b'{"1": {"texts": "abc"}}', b'{"x": {"texts": []}}', b"not json", b'{"1": 5}'],
)
async def test_hostile_batch_answer_is_an_api_error(
    api: FakeCambAPI, client: AsyncCambClient, answer: bytes
) -> None:
    api.inject(status=None, path="/translation-results", body=answer)
    with pytest.raises(APIError):
        await client.translation.results([1])


async def test_null_entry_counts_as_missing(api: FakeCambAPI, client: AsyncCambClient) -> None:
    run_id = run_of(api, TaskKind.TRANSLATION, api.add_task("translate"))
    api.inject(status=None, path="/translation-results", body=b'{"%d": null}' % run_id)
    assert await client.translation.results([run_id]) == {}


async def test_gather_results_auth_error_always_raises(
    api: FakeCambAPI, client: AsyncCambClient
) -> None:
    ids = [api.add_task("dub") for _ in range(3)]
    api.inject(status=401, path="/dubbing-results")
    with pytest.raises(AuthenticationError):
        await gather_results(client, ids, kind="dub", return_exceptions=True)
