"""A typical user program, checked by mypy --strict and basedpyright (not run): every call
the public API types precisely, pinned with ``assert_type``. See tests/typing/README.md."""

from __future__ import annotations

from typing import Any

from typing_extensions import assert_type

from camb_async import (
    AdaptivePollPolicy,
    AsyncCambClient,
    CambError,
    DubbingOutcome,
    DubbingResult,
    DubResource,
    PollPolicy,
    StatusIterator,
    StatusResult,
    TaskHandle,
    TaskKind,
    TaskResource,
    TranscriptionResult,
    TranslationResult,
    TTSResource,
    TTSResult,
    gather_results,
    gather_statuses,
    iter_statuses,
)


async def main(ids: list[str], some_kind: TaskKind) -> None:
    async with AsyncCambClient(api_key="k", proxy="http://127.0.0.1:3128") as client:
        # create() -> TaskHandle[TheResult]; result() -> TheResult
        speech = await client.tts.create(
            text="hi",
            voice_id=1,
            language=1,
            extra_body={"new_field": 1},
            extra_headers={"x-trace": "1"},
            extra_query={"beta": "yes"},
        )
        assert_type(speech, TaskHandle[TTSResult])
        assert_type(await speech.result(), TTSResult)
        assert_type(
            await (await client.tts.create(text="x", voice_id=1, language=1)).result(), TTSResult
        )
        assert_type(await speech, StatusResult)
        assert_type(await speech.wait(timeout=5), StatusResult)
        assert_type(await speech.status(), StatusResult)
        assert_type(speech.task_id, str)
        assert_type(speech.kind, TaskKind)
        dubbing = await client.dub.create(
            video_url="https://x/v.mp4", source_language=1, target_language=2
        )
        assert_type(dubbing, TaskHandle[DubbingOutcome])
        assert_type(await client.dub.task("id").result(), DubbingResult | dict[str, DubbingResult])
        translated = await client.translation.create(
            texts=["a"], source_language=1, target_language=2
        )
        assert_type(await translated.result(), TranslationResult)
        transcribed = await client.transcription.create(language=1, media_url="https://x/a")
        assert_type(await transcribed.result(), TranscriptionResult)
        assert_type(
            await client.translation.task("t").result(extra_query={"a": 1}), TranslationResult
        )

        # resources and client.task(kind, id) per literal kind
        assert_type(client.dub, DubResource)
        assert_type(client.tts, TTSResource)
        assert_type(client.resource(TaskKind.TTS), TTSResource)
        assert_type(client.resource("dub"), DubResource)
        assert_type(client.task(TaskKind.TTS, "id"), TaskHandle[TTSResult])
        assert_type(client.task("translate", "id"), TaskHandle[TranslationResult])
        assert_type(client.task("transcribe", "id"), TaskHandle[TranscriptionResult])
        assert_type(client.task(TaskKind.DUB, "id"), TaskHandle[DubbingOutcome])
        assert_type(client.task(some_kind, "id"), TaskHandle[Any])
        assert_type(client.resource(some_kind), TaskResource[Any])

        # direct results, batches, audio
        assert_type(await client.tts.result(1), TTSResult)
        assert_type(await client.tts.results([1, 2], extra_body={"x": 1}), dict[int, TTSResult])
        assert_type(await client.dub.results([1]), dict[int, DubbingOutcome])
        assert_type(await client.tts.save_audio(1, "out.flac", extra_headers={"a": "b"}), int)
        async for chunk in client.tts.audio(1, extra_query={"q": 1}):
            assert_type(chunk, bytes)

        # bulk calls
        handles = [client.tts.task(i) for i in ids]
        assert_type(await gather_statuses(client, ids, kind="dub"), list[StatusResult])
        assert_type(
            await gather_statuses(client, handles, return_exceptions=False), list[StatusResult]
        )
        assert_type(
            await gather_statuses(client, ids, kind="dub", return_exceptions=True),
            list[StatusResult | CambError | ValueError],
        )
        assert_type(await client.gather_statuses(handles), list[StatusResult])
        assert_type(
            await client.gather_statuses(handles, return_exceptions=True),
            list[StatusResult | CambError | ValueError],
        )
        assert_type(iter_statuses(client, handles), StatusIterator[StatusResult])
        async for status in iter_statuses(client, ids, kind=TaskKind.TTS):
            assert_type(status, StatusResult)
            assert_type(status.run_id, "int | None")
        async with iter_statuses(client, handles, return_exceptions=True) as stream:
            async for item in stream:
                assert_type(item, StatusResult | CambError | ValueError)
        assert_type(await gather_results(client, handles), list[TTSResult])
        assert_type(
            await gather_results(client, handles, return_exceptions=True),
            list[TTSResult | CambError | ValueError],
        )
        assert_type(await gather_results(client, ids, kind="tts"), list[TTSResult])
        assert_type(
            await gather_results(client, ids, kind=TaskKind.DUB, return_exceptions=True),
            list[DubbingOutcome | CambError | ValueError],
        )
        assert_type(await gather_results(client, ids, kind="translate"), list[TranslationResult])
        assert_type(await gather_results(client, ids, kind=some_kind), list[Any])

        # per-request options
        fast = client.with_options(
            timeout=5, max_retries=0, max_retry_wait=1.0, max_response_bytes=1024
        )
        assert_type(fast, AsyncCambClient)
        assert_type(await fast.dub.status("id"), StatusResult)

        # errors carry what a support ticket needs
        try:
            await client.dub.status("id")
        except CambError as exc:
            from camb_async import APIError

            if isinstance(exc, APIError):
                assert_type(exc.request_id, "str | None")
                assert_type(exc.url, str)
                assert_type(exc.status_code, int)

        assert_type(PollPolicy.adaptive(), AdaptivePollPolicy)
