"""PollPolicy: when to poll a task again; the per-kind defaults; the deadline helpers.

The bottom of the polling layers: the handle, the scheduler and the adaptive policy build on it.
``PollPolicy.adaptive`` builds an ``AdaptivePollPolicy``, a subclass defined above this module;
that module registers the class here when it is imported (``camb_async`` imports it), so no
import runs upward.
"""

from __future__ import annotations

import itertools
import math
import random
from collections.abc import Mapping
from typing import TYPE_CHECKING

import anyio
import attrs
import backoff

from .._models import DurationHint, TaskKind
from .._validation import int_at_least, positive

if TYPE_CHECKING:
    from .._client import AsyncCambClient
    from ._adaptive import AdaptivePollPolicy

__all__ = ["DEFAULT_POLICIES", "PolicyArg", "PollPolicy", "final_poll_time", "next_poll_delay"]

_rng = random.Random()

#: ``AdaptivePollPolicy``, registered by ``polling._adaptive`` when it is imported.
_adaptive_type: type[AdaptivePollPolicy] | None = None


@attrs.frozen(kw_only=True, slots=True)
class PollPolicy:
    """When to poll a task again: exponential from ``initial`` by ``factor`` up to
    ``max_interval`` seconds, each interval scaled by a random factor in
    ``[1 - jitter, 1 + jitter]`` so that thousands of tasks created together spread out.

    ``max_errors`` is how many polls in a row may fail transiently (each after the client's
    own request retries) before the task is reported as failed. The schedule itself comes
    from ``backoff.expo`` (used as pure math; sleeping is anyio's).
    """

    initial: float = attrs.field(default=1.0, validator=positive("initial"))
    factor: float = attrs.field(default=2.0, validator=positive("factor"))
    max_interval: float = attrs.field(default=30.0, validator=positive("max_interval"))
    jitter: float = 0.1
    max_errors: int = attrs.field(default=5, validator=int_at_least("max_errors", 0))
    _schedule: tuple[float, ...] = attrs.field(init=False, repr=False, eq=False)

    def __attrs_post_init__(self) -> None:
        if self.factor < 1:
            raise ValueError(f"factor must be >= 1, got {self.factor}")
        if self.max_interval < self.initial:
            raise ValueError("max_interval must be >= initial")
        if not 0 <= self.jitter < 1:
            raise ValueError(f"jitter must be in [0, 1), got {self.jitter}")
        waits = backoff.expo(base=self.factor, factor=self.initial, max_value=self.max_interval)
        next(waits)  # prime: backoff's generators start with a bare yield
        schedule = list(itertools.islice(waits, 64))
        # Past the cap, or after 64 steps of a slow factor, the last value repeats forever.
        if self.max_interval in schedule:
            schedule = schedule[: schedule.index(self.max_interval) + 1]
        object.__setattr__(self, "_schedule", tuple(schedule))

    def next_interval(
        self, polls: int, age: float = 0.0, hint: DurationHint | None = None
    ) -> float:
        """Seconds to wait after the ``polls``-th poll (1-based) of a task ``age`` seconds old
        (``hint``: what is known of its input size; plain policies ignore it)."""
        schedule = self._schedule
        base = schedule[polls - 1] if polls <= len(schedule) else schedule[-1]
        if self.jitter:
            return base * (1.0 + self.jitter * (2.0 * _rng.random() - 1.0))
        return base

    @classmethod
    def for_kind(cls, kind: TaskKind) -> PollPolicy:
        """The default policy of a task kind (see ``DEFAULT_POLICIES``)."""
        return DEFAULT_POLICIES[TaskKind(kind)]

    @classmethod
    def adaptive(
        cls,
        max_delay: float = 30.0,
        *,
        request_cost: float | None = None,
        min_interval: float = 0.5,
        min_samples: int = 20,
        fallback: PollPolicy | None = None,
        tail: float = 0.01,
        jitter: float = 0.1,
        max_errors: int = 5,
        p95_delay: float | None = None,
        delay_quantile: float = 0.95,
    ) -> AdaptivePollPolicy:
        """A policy that learns each kind's durations (per client) and polls where
        completion is likely; see ``camb_async.AdaptivePollPolicy``.

        ``p95_delay=D`` switches to quantile mode: the fewest requests such that
        ``delay_quantile`` (0.95) of completions are seen within ``D`` seconds; the other 5 %
        are the tasks finishing in the kind's dead start or far tail, where polling every
        ``D`` would cost the most for the least (gaps there reach ``max(max_delay, D)``, and
        the first poll may wait longer). Both modes use a task's ``DurationHint``, once
        learned, to expect its duration from its size.

        ``max_delay`` bounds every gap between polls (so any completion is seen within it);
        ``request_cost`` (default ``max_delay / 15``: about the requests of a fixed
        ``max_delay`` sleep, for about half its mean delay) is the mean delay, in seconds, one
        request is worth. Until a kind has ``min_samples`` completions, ``fallback`` (default:
        the kind's default policy, capped at ``max_delay``) is used. ``tail`` (0.01) lets
        ``max_delay`` be exceeded with about that probability, so gaps may stretch where the
        task is unlikely to finish (a long job's first minutes); ``tail=0`` makes it hard.

        Args:
            max_delay: longest gap between polls, in seconds.
            request_cost: the mean delay (seconds) one request is worth.
            min_interval: shortest gap between polls.
            min_samples: completions a kind needs before its durations are used.
            fallback: the policy until then (default: the kind's, capped at ``max_delay``).
            tail: probability with which ``max_delay`` may be exceeded.
            jitter: relative random spread of each gap.
            max_errors: transient errors in a row tolerated per task.
            p95_delay: quantile mode: completions seen within this many seconds.
            delay_quantile: the share of completions ``p95_delay`` covers.
        """
        assert _adaptive_type is not None  # registered when camb_async is imported
        return _adaptive_type(
            initial=min(1.0, max_delay),
            factor=2.0,
            max_interval=max_delay,
            jitter=jitter,
            max_errors=max_errors,
            max_delay=max_delay,
            request_cost=request_cost,
            min_interval=min_interval,
            min_samples=min_samples,
            fallback=fallback,
            tail=tail,
            p95_delay=p95_delay,
            delay_quantile=delay_quantile,
        )

    # Hooks for policies that learn (``AdaptivePollPolicy``); plain policies learn nothing.

    def _bind(self, client: AsyncCambClient, kind: TaskKind) -> PollPolicy:
        """The policy to use for ``kind`` on ``client`` (adaptive ones attach its stats)."""
        return self

    def first_interval(self, age: float, hint: DurationHint | None = None) -> float:
        """Seconds to wait before the first poll of a task known to be ``age`` seconds old."""
        return 0.0

    def _previous_gap(self, polls: int, age: float, hint: DurationHint | None = None) -> float:
        """About how long before the ``polls``-th poll the previous one was (no jitter)."""
        schedule = self._schedule
        return schedule[polls - 2] if polls - 1 <= len(schedule) else schedule[-1]


#: Per-kind defaults, from the API's own status pages: TTS is quick (the example polls every
#: 5 s); translation "1-2 s at first, doubling, capped at 10-15 s"; transcription "every 15 s,
#: growing to 60 s for long audio"; dubbing "exponential backoff" from a 15 s example sleep.
#: The first waits are shorter than the pages' fixed sleeps so short jobs are seen promptly;
#: the caps are the pages'.
DEFAULT_POLICIES: dict[TaskKind, PollPolicy] = {
    TaskKind.TTS: PollPolicy(initial=1.0, factor=1.5, max_interval=5.0),
    TaskKind.TRANSLATION: PollPolicy(initial=1.0, factor=2.0, max_interval=10.0),
    TaskKind.TRANSCRIPTION: PollPolicy(initial=5.0, factor=1.5, max_interval=60.0),
    TaskKind.DUB: PollPolicy(initial=10.0, factor=1.5, max_interval=60.0),
}


#: What ``policy=`` accepts in the bulk calls: one policy, or one per kind.
PolicyArg = PollPolicy | Mapping[TaskKind, PollPolicy] | Mapping[str, PollPolicy] | None


#: The last-chance poll before a caller's deadline goes out this long before it (at most a
#: tenth of the timeout), so that it lands in time: the deadline itself stays hard.
_FINAL_POLL_LEAD = 1.0


def final_poll_time(timeout: float | None, now: float) -> float:
    """When to poll a task one last time if its schedule would skip past the deadline of a
    ``timeout`` starting ``now``: without it, a dub task done at 0.3 s and a 10 s deadline
    would be reported PENDING because dub's next poll is due at ~10 s."""
    if timeout is None:
        return math.inf
    return now + timeout - min(_FINAL_POLL_LEAD, 0.1 * timeout)


def next_poll_delay(delay: float, final_at: float) -> float:
    """``delay``, or the wait until ``final_at`` if the poll would come after it."""
    if final_at != math.inf:
        now = anyio.current_time()
        if now + delay > final_at > now:
            return final_at - now
    return delay
