"""The ``camb-async`` command, run as a new user would: the installed entry point, subprocesses.

Synchronous tests (no event loop in the test itself); the fake API is ``camb-async
fake-server`` in its own process, so these also test that command.
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from camb_async import cli

from ..fake_server import FakeServer

BIN = Path(sys.executable).parent / "camb-async"
KEY = "sk-cli-test-5f2c9a"

pytestmark = pytest.mark.slow


def run(
    *args: str, key: str | None = KEY, timeout: float = 60, **env: str
) -> subprocess.CompletedProcess[str]:
    environ = {k: v for k, v in os.environ.items() if not k.startswith("CAMB_")}
    if key is not None:
        environ["CAMB_API_KEY"] = key
    environ.update(env)
    return subprocess.run(
        [str(BIN), *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=environ,
        stdin=subprocess.DEVNULL,
    )


@pytest.fixture(scope="module")
def quick_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FakeServer]:
    """Six TTS/translation tasks that all succeed within 0.5 s."""
    server = FakeServer.cli(
        tmp_path_factory.mktemp("quick"),
        KEY,
        "--tasks",
        "6",
        "--kinds",
        "tts,translate",
        "--max-duration",
        "0.5",
    )
    yield server
    server.stop()


@pytest.fixture(scope="module")
def failing_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FakeServer]:
    """Four tasks that all end ERROR or TIMEOUT within 1 s."""
    server = FakeServer.cli(
        tmp_path_factory.mktemp("failing"),
        KEY,
        "--tasks",
        "4",
        "--kinds",
        "tts",
        "--max-duration",
        "1",
        "--error-rate",
        "1",
    )
    yield server
    server.stop()


@pytest.fixture(scope="module")
def slow_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FakeServer]:
    """Tasks that take minutes, behind a server that faults half of the time (seeded)."""
    server = FakeServer.cli(
        tmp_path_factory.mktemp("slow"),
        KEY,
        "--tasks",
        "3",
        "--kinds",
        "dub",
        "--min-duration",
        "300",
        "--max-duration",
        "600",
        "--fault-rate",
        "0.5",
    )
    yield server
    server.stop()


def test_demo_plain_output_has_progress_and_summary() -> None:
    proc = run("demo", "--tasks", "40", "--duration", "3", "--seed", "1", key=None)
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    assert "FakeCambAPI on http://127.0.0.1:" in out
    assert re.search(r"as scripted\s+│ 40/40", out)
    assert "requests per task" in out and "peak req/s" in out and "wall time" in out


# ----------------------------------------------------------------------------- status


def test_status_table(quick_server: FakeServer) -> None:
    kind, task_id = quick_server.ids[0]
    proc = run("status", kind, task_id, "--base-url", quick_server.url)
    assert proc.returncode == 0, proc.stderr
    assert task_id in proc.stdout and kind in proc.stdout
    assert re.search(r"SUCCESS|PENDING", proc.stdout)
    assert KEY not in proc.stdout + proc.stderr


def test_status_json_reports_unknown_ids_with_exit_5(quick_server: FakeServer) -> None:
    kind, task_id = quick_server.ids[0]
    proc = run("status", kind, task_id, "no-such-task", "--json", "--base-url", quick_server.url)
    assert proc.returncode == 5, proc.stderr
    results = json.loads(proc.stdout)["results"]
    assert [r["task_id"] for r in results] == [task_id, "no-such-task"]
    assert results[0]["status"] in ("SUCCESS", "PENDING")
    assert results[1]["error"] == "NotFoundError"


def test_status_wrong_key_exits_3_without_echoing_it(quick_server: FakeServer) -> None:
    kind, task_id = quick_server.ids[0]
    proc = run("status", kind, task_id, "--base-url", quick_server.url, key="sk-wrong-key-77")
    assert proc.returncode == 3
    assert "authentication failed" in proc.stderr
    assert "sk-wrong-key-77" not in proc.stdout + proc.stderr


def test_missing_key_exits_3() -> None:
    proc = run("status", "dub", "x", "--base-url", "http://127.0.0.1:9", key=None)
    assert proc.returncode == 3
    assert "CAMB_API_KEY" in proc.stderr


def test_bad_kind_is_a_usage_error() -> None:
    proc = run("status", "podcast", "x")
    assert proc.returncode == 2
    assert "unknown task kind" in proc.stderr


# ----------------------------------------------------------------------------- watch


@pytest.mark.parametrize("backend", ["asyncio", "trio"])
def test_watch_from_file_json_all_succeed(quick_server: FakeServer, backend: str) -> None:
    proc = run(
        "watch",
        "--from-file",
        str(quick_server.ids_file),
        "--json",
        "--backend",
        backend,
        "--base-url",
        quick_server.url,
    )
    assert proc.returncode == 0, proc.stderr
    doc = json.loads(proc.stdout)
    assert [(r["kind"], r["task_id"]) for r in doc["results"]] == quick_server.ids
    assert all(r["status"] == "SUCCESS" and r["run_id"] is not None for r in doc["results"])
    assert doc["counts"] == {"SUCCESS": len(quick_server.ids)}
    assert doc["exit_code"] == 0 and doc["requests"] >= len(quick_server.ids)


def test_watch_plain_lines_when_not_a_tty(quick_server: FakeServer) -> None:
    kind, task_id = quick_server.ids[1]
    proc = run("watch", kind, task_id, "--base-url", quick_server.url)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert re.match(rf"SUCCESS\s+{kind}\s+{task_id} run_id=\d+", lines[0])
    assert lines[-1].endswith("| exit 0") and "1/1 done" in lines[-1]
    assert "\x1b[" not in proc.stdout  # no terminal control codes in a pipe


def test_watch_failed_tasks_exit_1(failing_server: FakeServer) -> None:
    proc = run(
        "watch",
        "--from-file",
        str(failing_server.ids_file),
        "--json",
        "--base-url",
        failing_server.url,
    )
    assert proc.returncode == 1, proc.stderr
    statuses = {r["status"] for r in json.loads(proc.stdout)["results"]}
    assert statuses <= {"ERROR", "TIMEOUT"} and statuses


def test_watch_timeout_exits_4_despite_faults(slow_server: FakeServer) -> None:
    proc = run(
        "watch",
        "--from-file",
        str(slow_server.ids_file),
        "--timeout",
        "1",
        "--json",
        "-v",
        "--base-url",
        slow_server.url,
    )
    assert proc.returncode == 4, proc.stderr
    doc = json.loads(proc.stdout)
    assert [r["status"] for r in doc["results"]] == ["PENDING"] * len(slow_server.ids)
    assert doc["elapsed"] < 10
    # -v: the camb_async logger reports the retries of the faulted requests, never the key.
    retries = [line for line in proc.stderr.splitlines() if "retrying GET /dub/" in line]
    assert len(retries) == doc["retries"] > 0
    assert KEY not in proc.stderr


def test_watch_unknown_task_exits_5(quick_server: FakeServer) -> None:
    proc = run("watch", "tts", "missing-id", "--json", "--base-url", quick_server.url)
    assert proc.returncode == 5, proc.stderr
    [result] = json.loads(proc.stdout)["results"]
    assert result == {
        "kind": "tts",
        "task_id": "missing-id",
        "error": "NotFoundError",
        "detail": result["detail"],
    }


def test_watch_auth_error_exits_3(quick_server: FakeServer) -> None:
    proc = run(
        "watch",
        "--from-file",
        str(quick_server.ids_file),
        "--base-url",
        quick_server.url,
        key="sk-nope",
    )
    assert proc.returncode == 3
    assert "sk-nope" not in proc.stdout + proc.stderr


def test_fake_server_prints_ids_to_stdout(tmp_path: Path) -> None:
    """Without --ids-file the 'KIND ID' lines go to stdout, ready for `watch --from-file -`."""
    proc = subprocess.Popen(
        [str(BIN), "fake-server", "--port", "0", "--tasks", "5", "--kinds", "dub,tts"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        stdin=subprocess.DEVNULL,
    )
    try:
        assert proc.stdout is not None and proc.stderr is not None
        lines = [proc.stdout.readline().split() for _ in range(5)]
        assert [kind for kind, _ in lines] == ["dub", "tts", "dub", "tts", "dub"]
        assert len({task_id for _, task_id in lines}) == 5
        assert "listening on http://127.0.0.1:" in proc.stderr.readline()
    finally:
        proc.terminate()
        proc.wait(timeout=10)


# ----------------------------------------------------------------------------- demo


class DemoRun:
    """``camb-async demo --json`` started when this module starts, so that its ~20 s overlap
    the other tests here (it mostly waits on its own schedule) instead of adding to them."""

    def __init__(self) -> None:
        environ = {k: v for k, v in os.environ.items() if not k.startswith("CAMB_")}
        # Not traced by coverage's subprocess patch (CI's coverage run): the demo's figures
        # and its time bound are about the library, not about a tracer in the same process.
        environ.pop("COVERAGE_PROCESS_CONFIG", None)
        self.started = time.monotonic()
        self.proc = subprocess.Popen(
            [str(BIN), "demo", "--json", "--seed", "7"],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=environ,
            stdin=subprocess.DEVNULL,
        )

    def result(self) -> tuple[int, str, str, float]:
        out, err = self.proc.communicate(timeout=90)
        return self.proc.returncode, out, err, time.monotonic() - self.started


@pytest.fixture(scope="module", autouse=True)
def demo_run() -> Iterator[DemoRun]:
    demo = DemoRun()
    yield demo
    if demo.proc.poll() is None:
        demo.proc.kill()
        demo.proc.wait()


def test_demo_runs_as_installed_and_its_figures_add_up(demo_run: DemoRun) -> None:
    """A new user's first command: no key, no network, ~500 tasks, done well within 60 s."""
    returncode, stdout, stderr, elapsed = demo_run.result()
    assert returncode == 0, stderr
    s = json.loads(stdout)
    assert s["tasks"] == 500
    # Every task accounted for, each with the final status the script gave it.
    assert sum(s["final_statuses"].values()) == s["tasks"]
    assert s["final_statuses"] == s["scripted_statuses"]
    assert s["matching_script"] == s["tasks"]
    assert {"ERROR", "TIMEOUT"} <= set(s["final_statuses"])  # a few failures among them
    # Request counts agree between the server's log and the client's hooks.
    assert s["requests"] == s["client_requests"] >= s["tasks"]
    assert s["requests_per_task"] == pytest.approx(s["requests"] / s["tasks"], abs=0.01)
    # The server never saw more than the budget in any 1-second window.
    assert s["budget_requests_per_second"] == 100
    assert 0 < s["peak_requests_per_second"] <= s["budget_requests_per_second"]
    assert s["wall_seconds"] < elapsed < 60


# ----------------------------------------------------------------------------- bad input

REFUSED = "http://127.0.0.1:9"  # never reached: every case below fails before any request

BAD_INPUT = {
    "undecodable id on argv": (["status", "dub", "ok-1", "a\udcff"], "not valid UTF-8"),
    "id with a slash": (["status", "dub", "a/b"], "invalid task id"),
    "non-UTF-8 ids file": (["status", "--from-file", "{latin1}"], "latin1.txt:2: not UTF-8"),
    "empty ids file": (["watch", "--from-file", "{empty}"], "no task ids in"),
    "missing ids file": (["status", "--from-file", "{missing}"], "cannot read"),
    "ids file with a bad id": (["status", "dub", "--from-file", "{badid}"], "badid.txt:1:"),
    "three fields": (["status", "--from-file", "{three}"], "got 'dub a b'"),
    "unparsable --base-url": (
        ["status", "dub", "x", "--base-url", "http://[::1"],
        "--base-url is not a valid URL",
    ),
    "empty --base-url": (["status", "dub", "x", "--base-url", ""], "--base-url is empty"),
    "negative watch --timeout": (["watch", "dub", "x", "--timeout", "-1"], "--timeout"),
    "nan watch --timeout": (["watch", "dub", "x", "--timeout", "nan"], "--timeout"),
    "bad --rate-limit": (["status", "dub", "x", "--rate-limit", "abc"], "--rate-limit"),
    "negative --rate-limit": (["status", "dub", "x", "--rate-limit", "-3"], "--rate-limit"),
    "negative --max-concurrency": (
        ["status", "dub", "x", "--max-concurrency", "-1"],
        "--max-concurrency",
    ),
    "unknown kind": (["status", "podcast", "x"], "unknown task kind 'podcast'"),
    "unknown kind in a file": (["status", "--from-file", "{podcast}"], "podcast.txt:1:"),
    "non-ASCII API key": (["status", "dub", "x", "--api-key", "ключ"], "non-ASCII"),
    "no command": ([], "required: COMMAND"),
    "unknown option": (["status", "dub", "x", "--frobnicate"], "--frobnicate"),
    "demo --max-concurrency 0": (["demo", "--max-concurrency", "0"], "--max-concurrency"),
    "fake-server --port 99999": (["fake-server", "--port", "99999"], "--port"),
    "fake-server --fault-rate 2": (["fake-server", "--fault-rate", "2"], "--fault-rate"),
    "fake-server unknown kind": (
        ["fake-server", "--port", "0", "--kinds", "dub,"],
        "unknown task kind",
    ),
}


@pytest.fixture
def ids_files(tmp_path: Path) -> dict[str, str]:
    files = {
        "latin1": b"dub ok-1\ndub caf\xe9\n",
        "empty": b"# nothing here\n\n",
        "badid": b"a\\b\n",
        "three": b"dub a b\n",
        "podcast": b"podcast x\n",
    }
    out = {"missing": str(tmp_path / "missing.txt")}
    for name, data in files.items():
        (tmp_path / f"{name}.txt").write_bytes(data)
        out[name] = str(tmp_path / f"{name}.txt")
    return out


def run_main(
    argv: list[str], capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> tuple[int, str, str]:
    for name in [k for k in os.environ if k.startswith("CAMB_")]:
        monkeypatch.delenv(name)
    monkeypatch.setenv("CAMB_API_KEY", KEY)
    code = cli.main(argv)
    out, err = capsys.readouterr()
    return code, out, err


def with_base_url(argv: list[str]) -> list[str]:
    if argv and argv[0] in ("status", "watch") and "--base-url" not in argv:
        return [*argv, "--base-url", REFUSED]
    return argv


@pytest.mark.parametrize("case", BAD_INPUT)
def test_bad_input_exits_2_with_one_line_and_no_traceback(
    case: str,
    ids_files: dict[str, str],
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    argv, expected = BAD_INPUT[case]
    argv = with_base_url([a.format(**ids_files) for a in argv])
    code, out, err = run_main(argv, capsys, monkeypatch)
    assert code == cli.EXIT_USAGE == 2
    assert out == ""
    assert len(err.splitlines()) == 1 and "error: " in err and expected in err, err
    assert "{line" not in err and KEY not in err


@pytest.mark.parametrize("case", [c for c in BAD_INPUT if not c.startswith("fake-server")])
def test_bad_input_with_json_is_one_json_object_on_stdout(
    case: str,
    ids_files: dict[str, str],
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    argv, expected = BAD_INPUT[case]
    argv = [*with_base_url([a.format(**ids_files) for a in argv]), "--json"]
    code, out, err = run_main(argv, capsys, monkeypatch)
    assert code == 2
    assert err == ""
    doc = json.loads(out)
    assert doc == {"error": "UsageError", "detail": doc["detail"], "exit_code": 2}
    assert expected in doc["detail"]


def test_plain_http_refusal_names_the_flag_and_the_flag_works(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    argv = ["status", "dub", "x", "--base-url", "http://camb.example.com"]
    code, _, err = run_main(argv, capsys, monkeypatch)
    assert code == 2
    assert "--allow-insecure" in err and "allow_insecure=True" not in err
    args = cli._parser().parse_args([*argv, "--allow-insecure"])
    client = cli._client(args, cli.RequestMeter())  # refused before the flag existed
    assert client.base_url == "http://camb.example.com"


def test_missing_key_with_json_is_a_json_object(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("CAMB_API_KEY", raising=False)
    code = cli.main(["status", "dub", "x", "--base-url", REFUSED, "--json"])
    out, err = capsys.readouterr()
    assert code == 3 and err == ""
    assert json.loads(out)["error"] == "MissingKeyError"


def test_an_internal_error_shows_its_traceback_and_exits_70(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    async def broken(args: object) -> int:
        raise RuntimeError("boom")

    monkeypatch.setattr(cli, "_cmd_status", broken)
    code, out, err = run_main(["status", "dub", "x", "--base-url", REFUSED], capsys, monkeypatch)
    assert code == cli.EXIT_INTERNAL == 70
    assert "Traceback" in err and "RuntimeError: boom" in err
    assert err.splitlines()[-1].startswith("camb-async status: internal error")
    code, out, err = run_main(
        ["status", "dub", "x", "--base-url", REFUSED, "--json"], capsys, monkeypatch
    )
    assert code == 70 and "Traceback" in err
    assert json.loads(out)["error"] == "InternalError"


def test_status_table_shows_ids_and_server_text_literally(quick_server: FakeServer) -> None:
    """Ids are not rich markup: '[bold]y' once showed as a bold 'y'."""
    proc = run("status", "tts", "[bold]y", "[italic]z", "--base-url", quick_server.url)
    assert proc.returncode == 5, proc.stderr
    assert "[bold]y" in proc.stdout and "[italic]z" in proc.stdout
    assert "Traceback" not in proc.stderr


def test_trio_missing_is_a_usage_error(tmp_path: Path) -> None:
    code = (
        "import sys; sys.modules['trio'] = None\n"
        "from camb_async.cli import main\n"
        f"sys.exit(main(['status', 'dub', 'x', '--backend', 'trio', '--base-url', "
        f"{REFUSED!r}]))\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "CAMB_API_KEY": KEY},
    )
    assert proc.returncode == 2
    assert proc.stderr == "camb-async status: error: needs trio: pip install trio\n"


# ----------------------------------------------------------------------------- Ctrl-C


@pytest.fixture(scope="module")
def faulting_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FakeServer]:
    """Every request answered with a transient fault: clients retry (and log it with -v)."""
    server = FakeServer.cli(
        tmp_path_factory.mktemp("faulting"),
        KEY,
        "--tasks",
        "2",
        "--kinds",
        "dub",
        "--min-duration",
        "300",
        "--max-duration",
        "600",
        "--fault-rate",
        "1",
    )
    yield server
    server.stop()


@pytest.mark.parametrize("backend", ["asyncio", "trio"])
@pytest.mark.parametrize("json_output", [False, True], ids=["text", "json"])
def test_ctrl_c_exits_130_on_both_backends(
    faulting_server: FakeServer, backend: str, json_output: bool
) -> None:
    environ = {k: v for k, v in os.environ.items() if not k.startswith("CAMB_")}
    proc = subprocess.Popen(
        [
            str(BIN),
            "watch",
            "--from-file",
            str(faulting_server.ids_file),
            "-v",
            "--plain",
            "--backend",
            backend,
            "--base-url",
            faulting_server.url,
            *(["--json"] if json_output else []),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        stdin=subprocess.DEVNULL,
        env={**environ, "CAMB_API_KEY": KEY},
    )
    try:
        assert proc.stderr is not None
        # A logged retry means the poller is running, inside main's handlers.
        for line in proc.stderr:
            if "retrying GET /dub/" in line:
                break
        else:
            pytest.fail("watch never retried")
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == cli.EXIT_INTERRUPTED == 130, err
    assert "Traceback" not in err and "ExceptionGroup" not in err
    if json_output:
        assert json.loads(out) == {
            "error": "KeyboardInterrupt",
            "detail": "interrupted",
            "exit_code": 130,
        }
    else:
        assert err.splitlines()[-1] == "camb-async watch: interrupted"


# ----------------------------------------------------------------------------- fake-server


@pytest.mark.parametrize("key_from", ["default", "option", "environment"])
def test_fake_server_hint_works_when_pasted(tmp_path: Path, key_from: str) -> None:
    environ = {k: v for k, v in os.environ.items() if not k.startswith("CAMB_")}
    environ["PATH"] = f"{BIN.parent}{os.pathsep}{environ.get('PATH', '')}"
    extra: list[str] = []
    if key_from == "option":
        extra = ["--api-key", "it's a $key"]  # the hint must quote it for the shell
    elif key_from == "environment":
        environ["CAMB_API_KEY"] = "sk-from-env-71"
    ids_file = tmp_path / "my ids.txt"
    log = tmp_path / "server.log"
    with log.open("w") as err:
        server = subprocess.Popen(
            [
                str(BIN),
                "fake-server",
                "--port",
                "0",
                "--tasks",
                "2",
                "--kinds",
                "tts",
                "--max-duration",
                "0.3",
                "--ids-file",
                str(ids_file),
                *extra,
            ],
            stdout=subprocess.DEVNULL,
            stderr=err,
            stdin=subprocess.DEVNULL,
            env=environ,
        )
    try:
        deadline = time.monotonic() + 30
        while not (match := re.search(r"^  try: (.+)$", log.read_text(), re.MULTILINE)):
            assert server.poll() is None and time.monotonic() < deadline, log.read_text()
            time.sleep(0.05)
        hint = match.group(1)
        if key_from == "environment":
            assert "sk-from-env-71" not in log.read_text()  # not printed, found in the env
        proc = subprocess.run(
            ["sh", "-c", hint],
            capture_output=True,
            text=True,
            timeout=60,
            env=environ,
            stdin=subprocess.DEVNULL,
            cwd=tmp_path,
        )
        assert proc.returncode == 0, (hint, proc.stderr)
        assert "2/2 done" in proc.stdout
    finally:
        server.terminate()
        server.wait(timeout=10)


def test_fake_server_connections_have_tcp_nodelay() -> None:
    """Without it every keep-alive answer after the first waited ~40 ms (Nagle vs delayed
    ACK); measured in benchmarks/bench_fake_server_latency.py, not asserted here."""
    listener = cli._listen_socket("127.0.0.1", 0)
    with listener:
        assert listener.proto == socket.IPPROTO_TCP  # asyncio sets TCP_NODELAY only then
        listener.listen()
        with socket.create_connection(listener.getsockname()[:2]):
            accepted, _ = listener.accept()
            with accepted:
                assert accepted.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) != 0


# ----------------------------------------------------------------------------- exit codes


def test_exit_codes_in_docs_help_and_code_agree() -> None:
    table = dict(cli.EXIT_CODES)
    assert set(table) == {
        cli.EXIT_OK,
        cli.EXIT_FAILED,
        cli.EXIT_USAGE,
        cli.EXIT_AUTH,
        cli.EXIT_TIMEOUT,
        cli.EXIT_ERRORS,
        cli.EXIT_INTERRUPTED,
        cli.EXIT_INTERNAL,
    }
    assert (
        cli.EXIT_OK,
        cli.EXIT_FAILED,
        cli.EXIT_USAGE,
        cli.EXIT_AUTH,
        cli.EXIT_TIMEOUT,
        cli.EXIT_ERRORS,
        cli.EXIT_INTERRUPTED,
        cli.EXIT_INTERNAL,
    ) == (0, 1, 2, 3, 4, 5, 130, 70)
    page = (Path(__file__).parents[2] / "docs" / "cli.md").read_text()
    section = page[page.index("## Exit codes") :]
    rows = re.findall(r"^\| `(\d+)` \| (.+) \|$", section.split("\n\n", 3)[2], re.MULTILINE)
    assert [(int(code), text.replace("`", "")) for code, text in rows] == list(table.items())
    help_text = run("--help", key=None).stdout
    epilog = help_text[help_text.index("exit codes") :]
    listed = re.findall(r"^  (\d+)\s+(.+)$", epilog, re.MULTILINE)
    assert [(int(code), text) for code, text in listed] == list(table.items())
    doc_codes = re.findall(r"^\s*(\d+)\s{3,}\S", cli.__doc__ or "", re.MULTILINE)
    assert sorted(int(c) for c in doc_codes) == sorted(table)
