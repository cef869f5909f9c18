"""CompletionStats (one per client) and the DurationEstimator it keeps per task kind: what
is learned from completions, as censored intervals on a log-time grid (see ``_adaptive``)."""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from .._models import HINT_UNITS, DurationHint, TaskKind
from .._validation import is_number
from ._fit import (
    _MAX_PENDING_KEYS,
    _NEG,
    _POS,
    GRID,
    MAX_WEIGHT,
    DurationFit,
    _bin,
    _bins,
    _truncated_moments,
    _xbin,
    predictive_sigma,
)
from ._hints import HintModel

__all__ = ["CompletionStats", "DurationEstimator"]


class DurationEstimator:
    """Censored log-normal estimate of one kind's task durations. O(1) per observation."""

    __slots__ = (
        "_obs",
        "_weight",
        "_completions",
        "_unit",
        "_pending",
        "_pending_res",
        "_fit",
        "_fit_weight",
        "_fit_at",
        "_hinted",
    )

    def __init__(self) -> None:
        self._obs: dict[tuple[int, int], float] = {}
        self._weight = 0.0  # summed weight of every stored observation
        self._completions = 0.0  # summed weight of the ones with an upper bound
        self._unit = 1.0  # weight of one observation; stored ones are halved as they age
        self._pending: dict[int, int] = {}  # start-time bucket -> tasks being watched
        self._pending_res = 1.0  # seconds per start-time bucket
        self._fit: DurationFit | None = None
        self._fit_weight = 0.0
        self._fit_at = -math.inf
        self._hinted: dict[str, HintModel] = {}  # unit -> duration vs size, learned online

    def __repr__(self) -> str:
        return f"<DurationEstimator completions={self._completions:.0f} fit={self._fit!r}>"

    def hint_model(self, unit: str) -> HintModel:
        """The learned relation between duration and hinted size in ``unit``."""
        model = self._hinted.get(unit)
        if model is None:
            model = self._hinted[unit] = HintModel()
        return model

    def fit_for(
        self, now: float, hint: DurationHint | None, min_samples: float = 1.0
    ) -> DurationFit | None:
        """The fit for a task with ``hint``: conditional on its size once the kind's relation
        to that unit is learned (``min_samples`` hinted completions, sizes that vary), else
        the plain fit."""
        if hint is not None:
            model = self._hinted.get(hint.unit)
            if model is not None and model.completions >= min_samples:
                fit = model.fit_at(now, hint.size)
                if fit is not None:
                    return fit
        return self.fit(now)

    @property
    def completions(self) -> float:
        """Weighted count of observed completions (decayed once history is long)."""
        return self._completions

    @property
    def pending(self) -> int:
        """Tasks being watched right now (right-censored at their age in every fit)."""
        return sum(self._pending.values())

    # ------------------------------------------------------------ observations

    def observe(self, lo: float, hi: float | None, hint: DurationHint | None = None) -> None:
        """A task ran longer than ``lo`` seconds and at most ``hi`` (``None``: no bound).

        ``lo <= 0`` means nothing is known below (the first poll already saw it done).
        With a ``hint`` the observation also teaches the kind's duration-vs-size relation.
        """
        bins = _bins(lo, hi)
        if bins is None:
            return
        i_lo, i_hi = bins
        if i_hi != _POS:
            self._completions += self._unit
        if hint is not None:
            self.hint_model(hint.unit).observe(_xbin(hint), i_lo, i_hi)
        key = (i_lo, i_hi)
        self._obs[key] = self._obs.get(key, 0.0) + self._unit
        self._weight += self._unit
        if self._weight > MAX_WEIGHT:
            self._decay()

    def _decay(self) -> None:
        self._obs = {k: w * 0.5 for k, w in self._obs.items() if w > 1e-3}
        self._weight *= 0.5
        self._completions *= 0.5
        self._fit_weight *= 0.5

    def track(self, start: float, hint: DurationHint | None = None) -> None:
        """A task that started at ``start`` (event-loop clock) is pending and being watched."""
        if hint is not None:
            self.hint_model(hint.unit).track(start, _xbin(hint))
        key = math.floor(start / self._pending_res)
        pending = self._pending
        pending[key] = pending.get(key, 0) + 1
        if len(pending) > _MAX_PENDING_KEYS:
            self._pending_res *= 2.0
            merged: dict[int, int] = {}
            for k, n in pending.items():
                merged[k // 2] = merged.get(k // 2, 0) + n
            self._pending = merged

    def untrack(self, start: float, hint: DurationHint | None = None) -> None:
        """Undo one ``track`` (the task finished or was forgotten).

        Args:
            start: the task's start time.
            hint: its input size, if known.
        """
        if hint is not None:
            model = self._hinted.get(hint.unit)
            if model is not None:
                model.untrack(start, _xbin(hint))
        key = math.floor(start / self._pending_res)
        n = self._pending.get(key, 0)
        if n <= 1:
            self._pending.pop(key, None)
        else:
            self._pending[key] = n - 1

    # ------------------------------------------------------------ the fit

    def fit(self, now: float) -> DurationFit | None:
        """The current fit, refitted when the data moved enough; None before any completion."""
        if self._completions <= 0.0:
            return None
        fit = self._fit
        pending = self._pending
        if fit is not None:
            new = self._weight - self._fit_weight
            stale = new >= max(self._unit, self._weight / 16.0)
            # Pending tasks age without any new completion: their censoring points move.
            # Refit on that at most every 5 % of the median, so a steady stream of tasks
            # costs a refit now and then, not one per poll.
            if not stale and pending:
                stale = now - self._fit_at >= 0.05 * fit.median
            if not stale:
                return fit
        self._fit = fit = self._refit(now, fit)
        self._fit_weight = self._weight
        self._fit_at = now
        return fit

    def _refit(self, now: float, previous: DurationFit | None) -> DurationFit:
        rows: dict[tuple[int, int], float] = dict(self._obs)
        res = self._pending_res
        for key, n in self._pending.items():
            age = now - (key + 0.5) * res
            if age > 0.0:
                k = (_bin(age), _POS)
                rows[k] = rows.get(k, 0.0) + n * self._unit
        data = [
            ((-math.inf if a == _NEG else a * GRID), (math.inf if b == _POS else b * GRID), w)
            for (a, b), w in rows.items()
        ]
        total = sum(w for _, _, w in data)
        if previous is not None:
            mu, sigma = previous.mu, previous.sigma
        else:  # start from the bins' centres, completions only
            num = den = sq = 0.0
            for a, b, w in data:
                if b == math.inf:
                    continue
                y = b - 0.5 * GRID if a == -math.inf else 0.5 * (a + b)
                num += w * y
                sq += w * y * y
                den += w
            mu = num / den
            sigma = max(math.sqrt(max(sq / den - mu * mu, 0.0)), 0.2)
        for _ in range(60):  # warm-started from the last fit: a few steps usually do
            s1 = s2 = 0.0
            for a, b, w in data:
                ey, ey2 = _truncated_moments(a, b, mu, sigma)
                s1 += w * ey
                s2 += w * ey2
            new_mu = s1 / total
            new_sigma = max(math.sqrt(max(s2 / total - new_mu * new_mu, 0.0)), 0.02)
            done = abs(new_mu - mu) < 1e-4 and abs(new_sigma - sigma) < 1e-4
            mu, sigma = new_mu, new_sigma
            if done:
                break
        # The spread the next task is expected with: the fitted one, widened for what this
        # many completions leave uncertain (one fitted mean; see ``predictive_sigma``).
        count = self._completions
        return DurationFit(mu, predictive_sigma(sigma, count, 1, 1.0 / count), count)

    # ------------------------------------------------------------ persistence

    def to_dict(self) -> dict[str, Any]:
        """The observations as JSON-ready data (``load`` reads it back)."""
        rows = [
            [None if a == _NEG else a, None if b == _POS else b, round(w, 6)]
            for (a, b), w in sorted(self._obs.items())
        ]
        out: dict[str, Any] = {"bins": rows, "completions": round(self._completions, 6)}
        if self._fit is not None:
            out["fit"] = {"mu": self._fit.mu, "sigma": self._fit.sigma}
        hinted = {unit: m.to_rows() for unit, m in self._hinted.items() if m._obs}
        if hinted:
            out["hinted"] = hinted
        return out

    def load(self, data: Mapping[str, Any]) -> None:
        """Add exported observations to this estimator (weights add up)."""
        rows = data.get("bins", [])
        if not isinstance(rows, list):
            raise ValueError("bins must be a list of [lo, hi, weight]")
        for row in rows:
            if not (isinstance(row, (list, tuple)) and len(row) == 3):
                raise ValueError(f"bad bin row {row!r}")
            a, b, w = row
            if (a is not None and not isinstance(a, int)) or (
                b is not None and not isinstance(b, int)
            ):
                raise ValueError(f"bin bounds must be integers or null, got {row!r}")
            if not is_number(w) or not (math.isfinite(w) and w > 0):
                raise ValueError(f"bin weight must be a positive number, got {row!r}")
            i_lo = _NEG if a is None else a
            i_hi = _POS if b is None else b
            if i_hi <= i_lo or (i_lo == _NEG and i_hi == _POS):
                raise ValueError(f"empty or unbounded bin {row!r}")
            key = (i_lo, i_hi)
            weight = float(w) * self._unit
            self._obs[key] = self._obs.get(key, 0.0) + weight
            self._weight += weight
            if i_hi != _POS:
                self._completions += weight
        hinted = data.get("hinted", {})
        if not isinstance(hinted, Mapping):
            raise ValueError("hinted must be a mapping {unit: bins}")
        for unit, hrows in hinted.items():
            if unit not in HINT_UNITS:
                raise ValueError(f"unknown hint unit {unit!r}")
            self.hint_model(unit).load_rows(hrows)
        while self._weight > MAX_WEIGHT:
            self._decay()
        self._fit_weight = -math.inf  # refit on next use


class CompletionStats:
    """What one client has learned about how long each kind of task takes.

    Fed by every completion its poller and handles observe (whatever their policy), read by
    ``PollPolicy.adaptive``. ``to_dict()``/``from_dict()`` (plain JSON-able data) let a
    service warm-start after a restart: ``AsyncCambClient(..., completion_stats=...)``.
    """

    __slots__ = ("_kinds",)

    def __init__(self) -> None:
        self._kinds: dict[TaskKind, DurationEstimator] = {}

    def __repr__(self) -> str:
        parts = ", ".join(f"{k.value}={e.completions:.0f}" for k, e in self._kinds.items())
        return f"<CompletionStats {parts}>"

    def for_kind(self, kind: TaskKind) -> DurationEstimator:
        """The duration estimator of ``kind`` (made on first use).

        Args:
            kind: the task kind.
        """
        est = self._kinds.get(kind)
        if est is None:
            est = self._kinds[kind] = DurationEstimator()
        return est

    def fit(
        self, kind: TaskKind | str, now: float, hint: DurationHint | None = None
    ) -> DurationFit | None:
        """The current duration fit of ``kind`` at event-loop time ``now`` (for a task of
        size ``hint`` once the kind's relation to that unit is learned)."""
        return self.for_kind(TaskKind(kind)).fit_for(now, hint)

    # Reports from the poller and handles. ``start`` is the creation time if ``known_start``,
    # else the first-seen time; ``lo``/``hi`` are ages relative to it.

    def started(self, kind: TaskKind, start: float, hint: DurationHint | None = None) -> None:
        """Record that a task of ``kind`` is running.

        Args:
            kind: the task kind.
            start: its start time.
            hint: its input size, if known.
        """
        self.for_kind(kind).track(start, hint)

    def completed(
        self,
        kind: TaskKind,
        start: float,
        lo: float,
        hi: float,
        *,
        known_start: bool,
        tracked: bool,
        hint: DurationHint | None = None,
    ) -> None:
        """Record a completion seen between ages ``lo`` and ``hi``.

        Args:
            kind: the task kind.
            start: its start time.
            lo: the age at which it was last seen pending.
            hi: the age at which it was seen done.
            known_start: whether ``start`` is its creation time.
            tracked: whether ``started`` was called for it.
            hint: its input size, if known.
        """
        est = self.for_kind(kind)
        if tracked:
            est.untrack(start, hint)
        if known_start:
            est.observe(lo, hi, hint)
        elif lo > 0.0:
            # Started at some unknown time before we first saw it: it ran longer than we
            # watched it pending, and that is all we know.
            est.observe(lo, None, hint)

    def abandoned(
        self, kind: TaskKind, start: float, age: float, hint: DurationHint | None = None
    ) -> None:
        """Watching stopped while the task was pending (deadline, cancel): it ran > ``age``."""
        est = self.for_kind(kind)
        est.untrack(start, hint)
        est.observe(age, None, hint)

    def forget(self, kind: TaskKind, start: float, hint: DurationHint | None = None) -> None:
        """Watching stopped on an error: no duration information."""
        self.for_kind(kind).untrack(start, hint)

    # ------------------------------------------------------------ persistence

    def to_dict(self) -> dict[str, Any]:
        """Learned statistics as JSON-able data (pending tasks are not included)."""
        return {
            "version": 1,
            "grid": GRID,
            "kinds": {
                k.value: e.to_dict()
                for k, e in self._kinds.items()
                if e.completions > 0 or e._obs or e._hinted
            },
        }

    def load(self, data: Mapping[str, Any]) -> None:
        """Merge statistics exported by ``to_dict`` into these."""
        if not isinstance(data, Mapping) or data.get("version") != 1:
            raise ValueError("not camb-async completion statistics (version 1)")
        if data.get("grid") != GRID:
            raise ValueError(f"statistics use grid {data.get('grid')!r}, this version {GRID}")
        kinds = data.get("kinds", {})
        if not isinstance(kinds, Mapping):
            raise ValueError("kinds must be a mapping")
        for name, entry in kinds.items():
            if not isinstance(entry, Mapping):
                raise ValueError(f"statistics for {name!r} must be a mapping")
            self.for_kind(TaskKind(name)).load(entry)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> CompletionStats:
        """Statistics saved by ``to_dict`` (e.g. across a restart).

        Args:
            data: what ``to_dict`` returned.
        """
        stats = cls()
        stats.load(data)
        return stats
