"""The ``camb-async`` command, run as a new user would: the installed entry point, subprocesses.

Synchronous tests (no event loop in the test itself); the fake API is ``camb-async
fake-server`` in its own process, so these also test that command.
"""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from camb_async import cli

BIN = Path(sys.executable).parent / "camb-async"
KEY = "sk-cli-test-5f2c9a"

pytestmark = pytest.mark.slow


def run(*args: str, key: str | None = KEY, timeout: float = 60,
        **env: str) -> subprocess.CompletedProcess[str]:
    environ = {k: v for k, v in os.environ.items() if not k.startswith("CAMB_")}
    if key is not None:
        environ["CAMB_API_KEY"] = key
    environ.update(env)
    return subprocess.run([str(BIN), *args], capture_output=True, text=True, timeout=timeout,
                          env=environ, stdin=subprocess.DEVNULL)


class FakeServer:
    def __init__(self, tmp: Path, *args: str) -> None:
        self.ids_file = tmp / "ids.txt"
        self.log = tmp / "server.log"
        environ = {k: v for k, v in os.environ.items() if not k.startswith("CAMB_")}
        with self.log.open("w") as err:
            self.proc = subprocess.Popen(
                [str(BIN), "fake-server", "--port", "0", "--api-key", KEY,
                 "--ids-file", str(self.ids_file), *args],
                stdout=subprocess.DEVNULL, stderr=err, stdin=subprocess.DEVNULL, env=environ)
        deadline = time.monotonic() + 30
        while True:
            match = re.search(r"listening on (http://\S+)", self.log.read_text())
            if match:
                self.url = match.group(1)
                break
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"fake-server did not start: {self.log.read_text()}")
            time.sleep(0.05)
        self.ids = [tuple(line.split()) for line in self.ids_file.read_text().splitlines()]

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(timeout=10)


@pytest.fixture(scope="module")
def quick_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FakeServer]:
    """Six TTS/translation tasks that all succeed within 0.5 s."""
    server = FakeServer(tmp_path_factory.mktemp("quick"), "--tasks", "6", "--kinds",
                        "tts,translate", "--max-duration", "0.5")
    yield server
    server.stop()


@pytest.fixture(scope="module")
def failing_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FakeServer]:
    """Four tasks that all end ERROR or TIMEOUT within 1 s."""
    server = FakeServer(tmp_path_factory.mktemp("failing"), "--tasks", "4", "--kinds", "tts",
                        "--max-duration", "1", "--error-rate", "1")
    yield server
    server.stop()


@pytest.fixture(scope="module")
def slow_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FakeServer]:
    """Tasks that take minutes, behind a server that faults half of the time (seeded)."""
    server = FakeServer(tmp_path_factory.mktemp("slow"), "--tasks", "3", "--kinds", "dub",
                        "--min-duration", "300", "--max-duration", "600",
                        "--fault-rate", "0.5")
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
    proc = run("status", kind, task_id, "no-such-task", "--json", "--base-url",
               quick_server.url)
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
    proc = run("watch", "--from-file", str(quick_server.ids_file), "--json", "--backend",
               backend, "--base-url", quick_server.url)
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
    proc = run("watch", "--from-file", str(failing_server.ids_file), "--json", "--base-url",
               failing_server.url)
    assert proc.returncode == 1, proc.stderr
    statuses = {r["status"] for r in json.loads(proc.stdout)["results"]}
    assert statuses <= {"ERROR", "TIMEOUT"} and statuses


def test_watch_timeout_exits_4_despite_faults(slow_server: FakeServer) -> None:
    proc = run("watch", "--from-file", str(slow_server.ids_file), "--timeout", "1", "--json",
               "-v", "--base-url", slow_server.url)
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
    assert result == {"kind": "tts", "task_id": "missing-id", "error": "NotFoundError",
                      "detail": result["detail"]}


def test_watch_auth_error_exits_3(quick_server: FakeServer) -> None:
    proc = run("watch", "--from-file", str(quick_server.ids_file), "--base-url",
               quick_server.url, key="sk-nope")
    assert proc.returncode == 3
    assert "sk-nope" not in proc.stdout + proc.stderr


def test_fake_server_prints_ids_to_stdout(tmp_path: Path) -> None:
    """Without --ids-file the 'KIND ID' lines go to stdout, ready for `watch --from-file -`."""
    proc = subprocess.Popen([str(BIN), "fake-server", "--port", "0", "--tasks", "5",
                             "--kinds", "dub,tts"], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, stdin=subprocess.DEVNULL)
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
        self.started = time.monotonic()
        self.proc = subprocess.Popen([str(BIN), "demo", "--json", "--seed", "7"],
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                     text=True, env=environ, stdin=subprocess.DEVNULL)

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
            [str(BIN), "fake-server", "--port", "0", "--tasks", "2", "--kinds", "tts",
             "--max-duration", "0.3", "--ids-file", str(ids_file), *extra],
            stdout=subprocess.DEVNULL, stderr=err, stdin=subprocess.DEVNULL, env=environ)
    try:
        deadline = time.monotonic() + 30
        while not (match := re.search(r"^  try: (.+)$", log.read_text(), re.MULTILINE)):
            assert server.poll() is None and time.monotonic() < deadline, log.read_text()
            time.sleep(0.05)
        hint = match.group(1)
        if key_from == "environment":
            assert "sk-from-env-71" not in log.read_text()  # not printed, found in the env
        proc = subprocess.run(["sh", "-c", hint], capture_output=True, text=True, timeout=60,
                              env=environ, stdin=subprocess.DEVNULL, cwd=tmp_path)
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
