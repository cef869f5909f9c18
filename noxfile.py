"""Developer sessions: `nox -s tests lint typecheck`, `nox -s docs`, `nox -s soak`, `nox -s bench`.

Sessions run on the Python that runs nox (no version is pinned, so none is missing on a
user's machine); `nox --force-python 3.13 -s tests` picks another installed one.
"""

from __future__ import annotations

import nox

nox.options.sessions = ["tests", "lint", "typecheck"]
nox.options.reuse_existing_virtualenvs = True


#: Branch coverage and its floor come with every pytest run (pyproject.toml addopts, [tool.coverage]).
@nox.session
def tests(session: nox.Session) -> None:
    session.install("-e", ".[test]")
    session.run("python", "-m", "pytest", *session.posargs)


@nox.session
def lint(session: nox.Session) -> None:
    """ruff and the import-linter layers: .ci/check, as CI runs it."""
    session.install("-e", ".[dev]")
    session.run(".ci/check", "lint", external=True, env={"PYTHON": "python"})


@nox.session
def typecheck(session: nox.Session) -> None:
    """mypy --strict over camb_async and tests: .ci/check, as CI runs it."""
    session.install("-e", ".[test,dev,redis]")
    session.run(".ci/check", "typecheck", external=True, env={"PYTHON": "python"})
    session.run("bash", ".ci/typing", f"{session.bin}/python", external=True)


@nox.session
def docs(session: nox.Session) -> None:
    """Build the documentation site into site/ (`-- serve` for a live preview instead)."""
    session.install("-e", ".[docs]")
    session.env["NO_MKDOCS_2_WARNING"] = "1"
    if session.posargs[:1] == ["serve"]:
        session.run("mkdocs", "serve", *session.posargs[1:])
    else:
        session.run("mkdocs", "build", "--strict", *session.posargs)


@nox.session
def soak(session: nox.Session) -> None:
    """10,000 tasks over loopback TCP with 20 % injected faults; prints its figures."""
    session.install("-e", ".[test]")
    session.run("python", "-m", "pytest", "--no-cov", "-s", "-q", "tests/soak/",
                *session.posargs)


@nox.session
def bench(session: nox.Session) -> None:
    """Every benchmark figure vs the official SDK and raw clients; rewrites benchmarks/README.md.

    Starts its own servers (loopback nginx, FakeCambAPI on uvicorn). nginx comes from apt:
    installed here when missing and running as root. `nox -s bench -- --quick` for a short run.
    """
    import os
    import shutil

    if shutil.which("nginx") is None and not any(
        os.path.exists(p) for p in ("/usr/sbin/nginx", "/usr/local/sbin/nginx")
    ):
        if os.geteuid() != 0:
            session.error("nginx is missing: apt-get install nginx (needs root)")
        env = {"DEBIAN_FRONTEND": "noninteractive"}
        session.run("apt-get", "update", "-qq", external=True, env=env)
        session.run("apt-get", "install", "-y", "-qq", "nginx", external=True, env=env)
    session.install("-e", ".[bench,test]")
    session.run("python", "benchmarks/run_all.py", *session.posargs)
