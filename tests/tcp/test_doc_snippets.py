"""Every ```python block in README.md and docs/ runs here, so the docs cannot drift from the code.

The convention the snippets are written to (say it in a page when it helps the reader):

* Each block is a complete program, run on its own in a fresh namespace (``__name__`` is
  ``"__main__"``) with a fresh temporary directory as the working directory.
* The environment is what a user sets: ``CAMB_API_KEY`` and ``CAMB_BASE_URL`` point at a
  ``FakeCambAPI`` served on a loopback port (uvicorn in a thread, real sockets), so a snippet
  that writes ``AsyncCambClient()`` talks to it. Any task id a snippet checks exists there:
  it has already ended ``SUCCESS``, unless the id contains ``fail`` (then it ended
  ``ERROR``). Created tasks succeed at once, as ``FakeCambAPI``'s unscripted creates do.
* ``REDIS_URL`` points at a throwaway redis-server for blocks that import
  ``camb_async.redis`` (those are marked ``redis``, like the other tests that need one).
* A block that defines parameterless ``test_*`` functions (the testing guide's examples of
  users' own tests) has each of them called after it runs; async ones under ``anyio.run``.
* Blocks that construct their own ``FakeCambAPI`` ignore the environment.

No block is skipped: a ```python fence this parser would miss fails
``test_every_python_block_is_collected``, and the summary line of the run gives the count.
"""

from __future__ import annotations

import importlib
import inspect
import re
import sys
from pathlib import Path
from typing import Any

import anyio
import pytest

from camb_async import TaskKind
from camb_async.testing import FakeCambAPI, serve_in_thread

ROOT = Path(__file__).resolve().parents[2]
DOC_FILES = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]
API_KEY = "docs-snippet-key"
_FENCE = re.compile(r"^(?P<indent> *)```python[ \t]*$")

#: Snippets run so far in this session (read by the summary hook in conftest.py).
EXECUTED: list[str] = []


class Snippet:
    def __init__(self, path: Path, line: int, code: str) -> None:
        self.path = path
        self.line = line  # 1-based line of the first code line
        self.code = code

    @property
    def name(self) -> str:
        return f"{self.path.relative_to(ROOT)}:{self.line}"


def collect(path: Path) -> list[Snippet]:
    snippets: list[Snippet] = []
    lines = path.read_text(encoding="utf-8").splitlines()
    i = 0
    while i < len(lines):
        match = _FENCE.match(lines[i])
        if match is None:
            i += 1
            continue
        indent = len(match["indent"])
        start = i + 1
        i += 1
        while i < len(lines) and lines[i].strip() != "```":
            i += 1
        if i == len(lines):
            raise ValueError(f"{path}:{start}: unclosed ```python block")
        body = [line[indent:] for line in lines[start:i]]
        snippets.append(Snippet(path, start + 1, "\n".join(body) + "\n"))
        i += 1
    return snippets


SNIPPETS = [s for path in DOC_FILES for s in collect(path)]


class DocsAPI(FakeCambAPI):
    """``FakeCambAPI`` where every task id a snippet asks about exists (see the module doc)."""

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "http" and scope["method"] == "GET":
            parts = scope["path"].split("/")
            if len(parts) == 3 and parts[1] in _KINDS and parts[2]:
                kind, task_id = TaskKind(parts[1]), parts[2]
                if (kind, task_id) not in self.tasks:
                    failed = "fail" in task_id
                    self.add_task(
                        kind,
                        task_id,
                        status="ERROR" if failed else "SUCCESS",
                        message="the media could not be processed" if failed else None,
                        exception_reason="BadMedia" if failed else None,
                    )
        await super().__call__(scope, receive, send)


_KINDS = {kind.value for kind in TaskKind}


def _params() -> list[Any]:
    return [
        pytest.param(
            s, id=s.name, marks=[pytest.mark.redis] if "camb_async.redis" in s.code else []
        )
        for s in SNIPPETS
    ]


@pytest.mark.parametrize("snippet", _params())
def test_snippet_runs(
    snippet: Snippet,
    request: pytest.FixtureRequest,
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
) -> None:
    monkeypatch.chdir(tmp_path)
    if "camb_async.redis" in snippet.code:
        monkeypatch.setenv("REDIS_URL", request.getfixturevalue("redis_server").url)
    api = DocsAPI(api_key=API_KEY)
    # Line numbers in tracebacks are the page's own: the code is padded to its first line.
    code = compile("\n" * (snippet.line - 1) + snippet.code, str(snippet.path), "exec")
    namespace: dict[str, Any] = {"__name__": "__main__", "__file__": str(snippet.path)}
    with serve_in_thread(api) as url:
        monkeypatch.setenv("CAMB_API_KEY", API_KEY)
        monkeypatch.setenv("CAMB_BASE_URL", url)
        exec(code, namespace)
        for name, func in list(namespace.items()):
            if (
                name.startswith("test_")
                and callable(func)
                and not inspect.signature(func).parameters
            ):
                if inspect.iscoroutinefunction(func):
                    anyio.run(func)
                else:
                    func()
    EXECUTED.append(snippet.name)


def test_every_python_block_is_collected() -> None:
    """Nothing that looks like a Python block escapes the collector."""
    fences = 0
    for path in DOC_FILES:
        text = path.read_text(encoding="utf-8")
        fences += len(re.findall(r"^ *```python\b", text, flags=re.M))
        odd = re.findall(r"^ *```(py|pycon|python3|ipython)\b.*$", text, flags=re.M)
        assert not odd, f"{path}: use ```python (run by this module) for Python code: {odd}"
    assert fences == len(SNIPPETS) > 0


def test_the_cli_page_matches_the_parser() -> None:
    """docs/cli.md covers every command and exit code the parser and the code define."""
    from camb_async import cli

    sys.path.insert(0, str(ROOT / "docs"))
    try:
        hooks = importlib.import_module("hooks")  # docs/hooks.py, the mkdocs hook
    finally:
        sys.path.remove(str(ROOT / "docs"))
    page = (ROOT / "docs" / "cli.md").read_text(encoding="utf-8")
    commands = hooks._subparsers()
    for command in commands:
        assert f"<!-- cli-options: {command} -->" in page, command
        assert hooks.options_table(command).count("\n") >= 2
    documented = {int(code) for code in re.findall(r"^\| `(\d+)` \|", page, flags=re.M)}
    codes = set(dict(cli.EXIT_CODES))
    assert documented == codes


def test_readme_links_point_at_files() -> None:
    """The README's links into docs/ (and to LICENSE, CHANGELOG.md) name files that exist."""
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    targets = re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", readme)
    local = [t for t in targets if "://" not in t]
    assert local
    missing = [t for t in local if not (ROOT / t).exists()]
    assert not missing


def test_the_api_reference_covers_the_public_names() -> None:
    """Every public class and function has a ``:::`` entry in docs/reference/."""
    import camb_async
    import camb_async.testing
    from camb_async import CambError

    reference = "\n".join(
        p.read_text(encoding="utf-8") for p in sorted((ROOT / "docs" / "reference").glob("*.md"))
    )
    documented = set(re.findall(r"^::: ([\w.]+)$", reference, flags=re.M))
    wanted = {f"camb_async.{name}" for name in camb_async.__all__ if name != "__version__"}
    wanted |= {f"camb_async.testing.{name}" for name in camb_async.testing.__all__}
    wanted |= {"camb_async.redis.RedisRateBudget", "camb_async.redis.RedisBudgetUnavailableError"}
    assert wanted - documented == set()
    errors = {
        f"camb_async.{name}"
        for name in camb_async.__all__
        if isinstance(getattr(camb_async, name), type)
        and issubclass(getattr(camb_async, name), CambError)
    }
    assert errors <= documented and len(errors) >= 12
