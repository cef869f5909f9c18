"""HintModel: how one kind's durations grow with one unit of input size."""

from __future__ import annotations

import math
from typing import Any

from .._validation import is_int, is_number
from ._fit import (
    _MAX_HINT_PENDING_KEYS,
    _NEG,
    _POS,
    GRID,
    MAX_WEIGHT,
    XGRID,
    DurationFit,
    _bin,
    _truncated_moments,
    predictive_sigma,
)


class HintModel:
    """How one kind's durations grow with one unit of input size: the censored log-linear
    model ``ln T = a + b * ln(size) + N(0, s**2)``, fitted like the plain estimator (EM with
    truncated-normal moments) on a sparse histogram over (size bin, duration interval), so it
    is O(1) per observation and bounded in memory. Pending hinted tasks are right-censored
    at their age, per size bin. A task's expected distribution (``fit_at``) has the
    prediction spread, not the fitted ``s``: widened for the ~n completions behind the fit
    and for how far the task's size lies from the sizes seen (``predictive_sigma``)."""

    __slots__ = (
        "_obs",
        "_weight",
        "_completions",
        "_pending",
        "_pending_res",
        "_fit",
        "_fit_weight",
        "_fit_at",
        "_fit_span",
        "_sizes",
    )

    def __init__(self) -> None:
        self._obs: dict[tuple[int, int, int], float] = {}  # (size bin, lo bin, hi bin)
        self._weight = 0.0
        self._completions = 0.0
        self._pending: dict[tuple[int, int], int] = {}  # (start bucket, size bin) -> tasks
        self._pending_res = 1.0
        self._fit: tuple[float, float, float] | None = None  # a, b, s
        self._fit_weight = 0.0
        self._fit_at = -math.inf
        self._fit_span = math.inf  # refit pending tasks' censoring after this long
        self._sizes = (0.0, 1.0)  # mean and variance of ln(size) behind the fit

    def __repr__(self) -> str:
        return f"<HintModel completions={self._completions:.0f} fit={self._fit!r}>"

    @property
    def completions(self) -> float:
        return self._completions

    def observe(self, xbin: int, i_lo: int, i_hi: int) -> None:
        """Count one completion of size bin ``xbin`` seen between bins ``i_lo`` and ``i_hi``.

        Args:
            xbin: the size bin.
            i_lo: the duration bin it was last seen pending in.
            i_hi: the duration bin it was seen done in.
        """
        key = (xbin, i_lo, i_hi)
        self._obs[key] = self._obs.get(key, 0.0) + 1.0
        self._weight += 1.0
        if i_hi != _POS:
            self._completions += 1.0
        if self._weight > MAX_WEIGHT:
            self._obs = {k: w * 0.5 for k, w in self._obs.items() if w > 1e-3}
            self._weight *= 0.5
            self._completions *= 0.5
            self._fit_weight *= 0.5

    def track(self, start: float, xbin: int) -> None:
        """Count one task of size bin ``xbin`` started at ``start`` as running.

        Args:
            start: its start time.
            xbin: its size bin.
        """
        key = (math.floor(start / self._pending_res), xbin)
        pending = self._pending
        pending[key] = pending.get(key, 0) + 1
        if len(pending) > _MAX_HINT_PENDING_KEYS:
            self._pending_res *= 2.0
            merged: dict[tuple[int, int], int] = {}
            for (k, x), n in pending.items():
                merged[k // 2, x] = merged.get((k // 2, x), 0) + n
            self._pending = merged

    def untrack(self, start: float, xbin: int) -> None:
        """Undo one ``track`` (the task finished or was forgotten).

        Args:
            start: its start time.
            xbin: its size bin.
        """
        key = (math.floor(start / self._pending_res), xbin)
        n = self._pending.get(key, 0)
        if n <= 1:
            self._pending.pop(key, None)
        else:
            self._pending[key] = n - 1

    def coefficients(self, now: float) -> tuple[float, float, float] | None:
        """``(a, b, s)``, refitted when the data moved enough; None until completions of
        more than one size are known."""
        if self._completions <= 0.0:
            return None
        fit = self._fit
        if self._fit_at != -math.inf:
            stale = self._weight - self._fit_weight >= max(1.0, self._weight / 16.0)
            # Pending tasks age: refit on that at most every 5 % of a typical duration.
            if not stale and fit is not None and self._pending:
                stale = now - self._fit_at >= self._fit_span
            if not stale:
                return fit
        self._fit = fit = self._refit(now, fit)
        self._fit_weight = self._weight
        self._fit_at = now
        return fit

    def fit_at(self, now: float, size: float) -> DurationFit | None:
        """The duration distribution expected for a task of ``size``, or ``None`` while unknown.

        Args:
            now: the current time (running tasks count as censored).
            size: the task's input size.
        """
        coef = self.coefficients(now)
        if coef is None:
            return None
        a, b, sd = coef
        x = math.log(size)
        n = self._completions
        x_mean, x_var = self._sizes
        leverage = (1.0 + (x - x_mean) ** 2 / x_var) / n
        return DurationFit(a + b * x, predictive_sigma(sd, n, 2, leverage), n)

    def _refit(
        self, now: float, previous: tuple[float, float, float] | None
    ) -> tuple[float, float, float] | None:
        rows: dict[tuple[int, int, int], float] = dict(self._obs)
        res = self._pending_res
        for (key, xb), n in self._pending.items():
            age = now - (key + 0.5) * res
            if age > 0.0:
                k = (xb, _bin(age), _POS)
                rows[k] = rows.get(k, 0.0) + n
        data = [
            (
                (x + 0.5) * XGRID,
                (-math.inf if a == _NEG else a * GRID),
                (math.inf if b == _POS else b * GRID),
                w,
            )
            for (x, a, b), w in rows.items()
        ]
        total = sum(w for _, _, _, w in data)
        sw = sx = sxx = 0.0
        for x, _, _, w in data:
            sw += w
            sx += w * x
            sxx += w * x * x
        var_x = sxx / sw - (sx / sw) ** 2
        if var_x < XGRID * XGRID:
            return None  # one size only: nothing to learn about the slope
        self._sizes = (sx / sw, var_x)
        if previous is not None:
            a0, b0, sd = previous
        else:  # least squares on the completions' bin centres
            cw = cx = cy = cxx = cxy = cyy = 0.0
            for x, lo, hi, w in data:
                if hi == math.inf:
                    continue
                y = hi - 0.5 * GRID if lo == -math.inf else 0.5 * (lo + hi)
                cw += w
                cx += w * x
                cy += w * y
                cxx += w * x * x
                cxy += w * x * y
                cyy += w * y * y
            den = cw * cxx - cx * cx
            b0 = (cw * cxy - cx * cy) / den if den > 1e-12 else 0.0
            a0 = (cy - b0 * cx) / cw
            resid = (
                cyy / cw
                - 2 * a0 * cy / cw
                - 2 * b0 * cxy / cw
                + a0 * a0
                + 2 * a0 * b0 * cx / cw
                + b0 * b0 * cxx / cw
            )
            sd = max(math.sqrt(max(resid, 0.0)), 0.2)
        den = sw * sxx - sx * sx
        moments = [(0.0, 0.0)] * len(data)
        for _ in range(60):
            sy = sxy = 0.0
            for i, (x, lo, hi, w) in enumerate(data):
                ey, ey2 = _truncated_moments(lo, hi, a0 + b0 * x, sd)
                moments[i] = (ey, ey2)
                sy += w * ey
                sxy += w * x * ey
            b1 = (sw * sxy - sx * sy) / den
            a1 = (sy - b1 * sx) / sw
            ss = 0.0
            for (x, _, _, w), (ey, ey2) in zip(data, moments, strict=True):
                m = a1 + b1 * x
                ss += w * (ey2 - 2.0 * m * ey + m * m)
            sd1 = max(math.sqrt(max(ss / total, 0.0)), 0.02)
            done = abs(a1 - a0) + abs(b1 - b0) * 3.0 < 1e-4 and abs(sd1 - sd) < 1e-4
            a0, b0, sd = a1, b1, sd1
            if done:
                break
        self._fit_span = 0.05 * math.exp(a0 + b0 * sx / sw)
        return a0, b0, sd

    def to_rows(self) -> list[list[Any]]:
        """The observations as JSON-ready rows ``[size, lo, hi, weight]``."""
        return [
            [x, None if a == _NEG else a, None if b == _POS else b, round(w, 6)]
            for (x, a, b), w in sorted(self._obs.items())
        ]

    def load_rows(self, rows: Any) -> None:
        """Add rows written by ``to_rows``.

        Args:
            rows: a list of ``[size, lo, hi, weight]``.
        """
        if not isinstance(rows, list):
            raise ValueError("hinted bins must be a list of [size, lo, hi, weight]")
        for row in rows:
            if not (isinstance(row, (list, tuple)) and len(row) == 4):
                raise ValueError(f"bad hinted bin row {row!r}")
            x, a, b, w = row
            if not is_int(x):
                raise ValueError(f"size bin must be an integer, got {row!r}")
            i_lo, i_hi = _check_bin_row(a, b, w, row)
            key = (x, i_lo, i_hi)
            self._obs[key] = self._obs.get(key, 0.0) + float(w)
            self._weight += float(w)
            if i_hi != _POS:
                self._completions += float(w)
        while self._weight > MAX_WEIGHT:
            self._obs = {k: v * 0.5 for k, v in self._obs.items() if v > 1e-3}
            self._weight *= 0.5
            self._completions *= 0.5
        self._fit = None
        self._fit_at = -math.inf


def _check_bin_row(a: Any, b: Any, w: Any, row: Any) -> tuple[int, int]:
    if (a is not None and (not is_int(a))) or (b is not None and (not is_int(b))):
        raise ValueError(f"bin bounds must be integers or null, got {row!r}")
    if not is_number(w) or not (math.isfinite(w) and w > 0):
        raise ValueError(f"bin weight must be a positive number, got {row!r}")
    i_lo = _NEG if a is None else a
    i_hi = _POS if b is None else b
    if i_hi <= i_lo or (i_lo == _NEG and i_hi == _POS):
        raise ValueError(f"empty or unbounded bin {row!r}")
    return i_lo, i_hi
