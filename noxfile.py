"""Developer sessions: `nox -s tests lint typecheck`, `nox -s soak`, `nox -s bench`."""

from __future__ import annotations

import nox

nox.options.sessions = ["tests", "lint", "typecheck"]
nox.options.reuse_existing_virtualenvs = True


@nox.session(python="3.11")
def tests(session: nox.Session) -> None:
    session.install("-e", ".[test]")
    session.run("python", "-m", "pytest", *session.posargs)


@nox.session(python="3.11")
def lint(session: nox.Session) -> None:
    session.install("ruff")
    session.run("ruff", "check", "camb_async", "tests", "benchmarks", "examples")


@nox.session(python="3.11")
def typecheck(session: nox.Session) -> None:
    session.install("-e", ".[test,dev]")
    session.run("mypy", "camb_async")


@nox.session(python="3.11")
def soak(session: nox.Session) -> None:
    """10,000 tasks over loopback TCP with 20 % injected faults; prints its figures."""
    session.install("-e", ".[test]")
    session.run("python", "-m", "pytest", "-s", "-q", "tests/soak/", *session.posargs)
