"""The demo's scripted tasks: realistic durations per kind, compressed by one factor."""

from __future__ import annotations

import random
from collections.abc import Sequence
from typing import Any

from .._models import TaskKind, TaskStatus
from ..polling._policy import PollPolicy

# ----------------------------------------------------------------------------- scripted tasks

#: Realistic durations in seconds (how long such jobs take on the real service, roughly):
#: TTS and translation are done in seconds, a transcription in a minute or few, a dub in
#: several minutes. The demo compresses these (and the polling schedules) by one factor.
REAL_DURATIONS: dict[TaskKind, tuple[float, float]] = {
    TaskKind.TTS: (4.0, 40.0),
    TaskKind.TRANSLATION: (4.0, 30.0),
    TaskKind.TRANSCRIPTION: (30.0, 240.0),
    TaskKind.DUB: (120.0, 900.0),
}
DEMO_MIX: dict[TaskKind, float] = {
    TaskKind.TTS: 0.3,
    TaskKind.TRANSLATION: 0.3,
    TaskKind.TRANSCRIPTION: 0.2,
    TaskKind.DUB: 0.2,
}
_ERROR_REASONS = (
    "source media could not be decoded",
    "no speech detected",
    "unsupported language pair",
)


def script_tasks(
    api: Any,
    n: int,
    *,
    scale: float,
    rng: random.Random,
    error_rate: float,
    timeout_rate: float,
    created_at: float | None,
    kinds: Sequence[TaskKind] | None = None,
) -> list[tuple[TaskKind, str, str]]:
    """Add ``n`` tasks to a FakeCambAPI; returns ``(kind, task_id, final_status)`` each."""
    mix = {k: w for k, w in DEMO_MIX.items() if kinds is None or k in kinds}
    population, weights = list(mix), list(mix.values())
    out = []
    for i in range(n):
        kind = (
            population[i % len(population)]
            if n <= len(population)
            else rng.choices(population, weights)[0]
        )
        low, high = REAL_DURATIONS[kind]
        after = rng.uniform(low, high) * scale
        draw = rng.random()
        if draw < error_rate:
            status, reason = TaskStatus.ERROR, rng.choice(_ERROR_REASONS)
        elif draw < error_rate + timeout_rate:
            status, reason = TaskStatus.TIMEOUT, "processing took too long"
        else:
            status, reason = TaskStatus.SUCCESS, None
        task_id = f"{kind.value}-{i + 1:05d}-{rng.getrandbits(32):08x}"
        api.add_task(
            kind,
            task_id,
            status=status,
            after=after,
            exception_reason=reason,
            created_at=created_at,
        )
        out.append((kind, task_id, status.value))
    return out


def scaled_policy(kind: TaskKind, scale: float) -> PollPolicy:
    """The kind's default polling schedule, compressed by ``scale`` like the demo's clock."""
    p = PollPolicy.for_kind(kind)
    return PollPolicy(
        initial=p.initial * scale,
        factor=p.factor,
        max_interval=p.max_interval * scale,
        jitter=p.jitter,
        max_errors=p.max_errors,
    )
