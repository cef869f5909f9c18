"""Lines a type checker must reject: each carries the ignore comment that silences exactly
that error, and mypy --strict (warn_unused_ignores) and basedpyright
(reportUnnecessaryTypeIgnoreComment) fail if any of them is no longer an error."""

from __future__ import annotations

from camb_async import AsyncCambClient, gather_results, gather_statuses, iter_statuses


async def main(ids: list[str]) -> None:
    async with AsyncCambClient(api_key="k") as client:
        speech = await client.tts.create(text="hi", voice_id=1, language=1)
        result = await speech.result()
        print(result.outptu_url)  # type: ignore[attr-defined]  # pyright: ignore[reportAttributeAccessIssue]
        done = await speech
        print(done.statuz)  # type: ignore[attr-defined]  # pyright: ignore[reportAttributeAccessIssue]
        statuses = await gather_statuses(client, ids, kind="dub")
        print(statuses[0].is_sucess)  # type: ignore[attr-defined]  # pyright: ignore[reportAttributeAccessIssue]
        translated = await client.task("translate", "id").result()
        print(translated.text)  # type: ignore[attr-defined]  # pyright: ignore[reportAttributeAccessIssue]
        results = await gather_results(client, [client.tts.task(i) for i in ids])
        print(results[0].output_uri)  # type: ignore[attr-defined]  # pyright: ignore[reportAttributeAccessIssue]
        async for status in iter_statuses(client, ids, kind="tts"):
            print(status.runid)  # type: ignore[attr-defined]  # pyright: ignore[reportAttributeAccessIssue]
        by_id = await gather_results(client, ids, kind="transcribe")
        print(by_id[0].transcrpit)  # type: ignore[attr-defined]  # pyright: ignore[reportAttributeAccessIssue]
        mixed = await gather_statuses(client, ids, kind="dub", return_exceptions=True)
        print(mixed[0].status)  # type: ignore[union-attr]  # pyright: ignore[reportAttributeAccessIssue]
        client.with_options(timeout="5")  # type: ignore[arg-type]  # pyright: ignore[reportArgumentType]
        await client.tts.create(text="hi", voice_id=1)  # type: ignore[call-arg]  # pyright: ignore[reportCallIssue]
