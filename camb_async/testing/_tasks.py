"""The records a FakeCambAPI keeps: scripted tasks, the request log, and the results a
finished task answers (scripted, or generated from its run id and create request)."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import attrs

from .._models import TaskKind, TaskStatus


@attrs.define(kw_only=True)
class FakeTask:
    """A scripted task: PENDING until ``after`` seconds or ``polls`` polls, then ``status``."""

    kind: TaskKind
    task_id: str
    status: str = TaskStatus.SUCCESS.value
    after: float = 0.0
    polls: int | None = None
    run_id: int | None = None
    message: str | dict[str, Any] | None = None
    exception_reason: str | None = None
    pending_status: str = TaskStatus.PENDING.value
    created_at: float | None = None
    seen: int = 0
    extra: dict[str, Any] = attrs.Factory(dict)
    #: What the create request asked for (JSON body, or form fields with uploads summarised
    #: as ``{"filename", "content_type", "size", "sha256"}``); None for ``add_task`` tasks.
    request: dict[str, Any] | None = None
    #: The result JSON for this task's run; None = generated from the run id and request.
    result: Any = None

    def is_done(self, now: float, epoch: float) -> bool:
        """Whether the task has finished.

        Args:
            now: the current time.
            epoch: when the fake API started.
        """
        if self.polls is not None:
            return self.seen > self.polls
        start = self.created_at if self.created_at is not None else epoch
        return now >= start + self.after

    def body(self, now: float, epoch: float) -> dict[str, Any]:
        """The status answer for the task.

        Args:
            now: the current time.
            epoch: when the fake API started.
        """
        if not self.is_done(now, epoch):
            return {"status": self.pending_status, "run_id": None}
        out: dict[str, Any] = {"status": self.status, "run_id": self.run_id}
        if self.message is not None:
            out["message"] = self.message
        if self.exception_reason is not None:
            out["exception_reason"] = self.exception_reason
        out.update(self.extra)
        return out


@attrs.frozen
class LoggedRequest:
    """One request the fake API received: when, what, and how it answered."""

    time: float
    method: str
    path: str
    status: int
    fault: str | None = None


def peak_per_window(times: Iterable[float], window: float = 1.0) -> int:
    """Most of ``times`` inside any half-open ``window``-second interval (sliding window)."""
    ordered = sorted(times)
    best = lo = 0
    for hi, t in enumerate(ordered):
        while t - ordered[lo] >= window:
            lo += 1
        best = max(best, hi - lo + 1)
    return best


def _segments(run_id: int, label: str) -> list[dict[str, Any]]:
    return [
        {
            "start": i * 2.0,
            "end": i * 2.0 + 1.5,
            "text": f"{label} run {run_id} segment {i + 1}",
            "speaker": f"SPEAKER_{i % 2}",
        }
        for i in range(1 + run_id % 3)
    ]


def _result_json(task: FakeTask) -> Any:
    """A task's result JSON: scripted, else generated from its run id and create request,
    so the same run always yields the same answer."""
    if task.result is not None:
        return task.result
    run_id = task.run_id
    assert run_id is not None
    request = task.request or {}
    base = f"https://fake.camb.ai/{task.kind.value}/{run_id}"
    if task.kind is TaskKind.DUB:

        def one(language: Any) -> dict[str, Any]:
            return {
                "audio_url": f"{base}/{language}/audio.mp3",
                "video_url": f"{base}/{language}/video.mp4",
                "transcript": _segments(run_id, f"dub[{language}]"),
            }

        targets = request.get("target_languages")
        if isinstance(targets, list) and len(targets) > 1:
            return {str(t): one(t) for t in targets}
        target = targets[0] if targets else request.get("target_language", "target")
        return one(target)
    if task.kind is TaskKind.TTS:
        return {"output_url": f"{base}/speech.flac"}
    if task.kind is TaskKind.TRANSLATION:
        texts = request.get("texts") or [f"text {run_id}"]
        target = request.get("target_language", "target")
        return {"texts": [f"[{target}] {text}" for text in texts]}
    return {"transcript": _segments(run_id, "transcription")}
