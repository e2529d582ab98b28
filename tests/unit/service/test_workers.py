"""`risk-engine serve --workers N`: real processes on one port with a real Redis.

Two workers both answer `Score` (each one's own /metrics port counts calls),
a killed worker is restarted, SIGTERM stops them all, a server already on
the port is detected, and more than one worker without Redis is refused.
"""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from engine.config import ConfigError, ServeConfig
from engine.service.pb import risk_pb2_grpc
from tests.support import ROOT
from tests.support.redis import RedisProcess, free_port
from tests.support.requests import request

#: Every test here runs server processes.
pytestmark = [pytest.mark.server, pytest.mark.slow]


def free_port_pair() -> int:
    """A port p with p and p + 1 both free (the metrics ports of two workers)."""
    for _ in range(50):
        base = free_port()
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", base + 1))
            except OSError:
                continue
        return base
    raise RuntimeError("no two consecutive free ports")


class Served:
    """A `risk-engine serve --workers N` process whose output is collected line by line."""

    def __init__(self, args: list[str], env: dict[str, str]) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "engine.cli", "serve", *args],
            cwd=ROOT,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        self.lines: list[str] = []
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.append(line)

    def output(self) -> str:
        return "".join(self.lines)

    def worker_pids(self) -> dict[int, list[int]]:
        """Worker index -> pids it was started with, in order (from the supervisor's log)."""
        out: dict[int, list[int]] = {}
        for m in re.finditer(r"worker (\d+) started: pid (\d+)", self.output()):
            out.setdefault(int(m.group(1)), []).append(int(m.group(2)))
        return out

    def wait_for(self, what: str, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        while what not in self.output():
            assert self.proc.poll() is None, f"exited {self.proc.returncode}:\n{self.output()}"
            assert time.monotonic() < deadline, f"no {what!r} within {timeout} s:\n{self.output()}"
            time.sleep(0.1)


def requests_counted(metrics_port: int) -> float:
    text = urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=5).read().decode()
    return sum(
        float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith("risk_requests_total{") and 'method="Score"' in line
    )


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def score_until_both_count(port: int, metrics_base: int, timeout: float = 30.0) -> tuple[float, float]:
    """Score on fresh connections (the kernel spreads connections, not calls) until both workers counted one."""
    deadline = time.monotonic() + timeout
    counts = (0.0, 0.0)
    n = 0
    while time.monotonic() < deadline:
        with grpc.insecure_channel(f"127.0.0.1:{port}", options=[("grpc.use_local_subchannel_pool", 1)]) as channel:
            response = risk_pb2_grpc.RiskEngineStub(channel).Score(request(card_id=f"c-w{n}"), timeout=5)
            assert not response.degraded
        n += 1
        counts = (requests_counted(metrics_base), requests_counted(metrics_base + 1))
        if all(c > 0 for c in counts):
            return counts
    raise AssertionError(f"after {n} calls the workers counted {counts}")


def test_two_workers_share_the_port_restart_and_stop(trained_registry: Path, own_redis: RedisProcess) -> None:
    port = free_port()
    metrics = free_port_pair()
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    served = Served(
        [
            *("--workers", "2", "--port", str(port), "--model", str(trained_registry)),
            *("--redis-url", own_redis.url, "--metrics-port", str(metrics), "--admin-port", "off"),
            *("--log-format", "text", "--reload-interval", "0"),
        ],
        env,
    )
    try:
        served.wait_for("with 2 workers")
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            status = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=5).status
            assert status == health_pb2.HealthCheckResponse.SERVING
        pids = served.worker_pids()
        assert set(pids) == {0, 1} and pids[0][0] != pids[1][0] != served.proc.pid
        # RISK_CPU_AFFINITY (on by default): each worker on a core of its own when a core is left for
        # Redis and the rest; with as many workers as cores, none pinned. The supervisor never is.
        allowed = os.sched_getaffinity(0)
        cores = [os.sched_getaffinity(pids[i][0]) for i in (0, 1)]
        if len(allowed) > 2:
            assert all(len(c) == 1 for c in cores) and cores[0] != cores[1], cores
        else:
            assert cores == [allowed, allowed]
        assert os.sched_getaffinity(served.proc.pid) == allowed
        score_until_both_count(port, metrics)

        # A killed worker is restarted (a new pid, its metrics port serving again) and serves.
        first = pids[0][0]
        os.kill(first, signal.SIGKILL)
        served.wait_for("worker 0 (pid")
        deadline = time.monotonic() + 30
        while len(served.worker_pids().get(0, [])) < 2:
            assert time.monotonic() < deadline, served.output()
            time.sleep(0.1)
        second = served.worker_pids()[0][1]
        assert second != first and alive(second) and not alive(first)
        deadline = time.monotonic() + 60
        while True:
            try:
                requests_counted(metrics)
                break
            except OSError:
                assert time.monotonic() < deadline, served.output()
                time.sleep(0.2)
        score_until_both_count(port, metrics)

        # SIGTERM stops every worker, then the supervisor, cleanly.
        workers = [second, pids[1][0]]
        served.proc.send_signal(signal.SIGTERM)
        assert served.proc.wait(30) == 0, served.output()
        assert not any(alive(pid) for pid in workers)
        assert "stopping 2 workers" in served.output()
    finally:
        if served.proc.poll() is None:
            served.proc.kill()
            served.proc.wait()
        for pids_of in served.worker_pids().values():
            for pid in pids_of:
                if alive(pid):
                    os.kill(pid, signal.SIGKILL)


@pytest.mark.parametrize("foreign_reuseport", [False, True])
def test_a_server_already_on_the_port_is_detected(
    trained_registry: Path, own_redis: RedisProcess, foreign_reuseport: bool
) -> None:
    foreign = socket.socket()
    if foreign_reuseport:  # even one that allows sharing the port
        foreign.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    foreign.bind(("127.0.0.1", 0))
    foreign.listen()
    port = foreign.getsockname()[1]
    try:
        proc = subprocess.run(
            [
                *(sys.executable, "-m", "engine.cli", "serve", "--workers", "2", "--port", str(port)),
                *("--model", str(trained_registry), "--redis-url", own_redis.url),
                *("--metrics-port", "off", "--admin-port", "off"),
            ],
            cwd=ROOT,
            env={**os.environ, "PYTHONPATH": str(ROOT)},
            capture_output=True,
            text=True,
            timeout=60,
        )
    finally:
        foreign.close()
    assert proc.returncode != 0
    assert f"cannot listen on 127.0.0.1:{port}" in proc.stderr + proc.stdout
    assert "worker 0 started" not in proc.stderr + proc.stdout


def test_more_than_one_worker_needs_redis(trained_registry: Path) -> None:
    with pytest.raises(ConfigError, match="needs Redis"):
        ServeConfig(model=trained_registry, workers=2).check()
    ServeConfig(model=trained_registry, workers=1).check()
    with pytest.raises(ConfigError, match="at least 1"):
        ServeConfig(model=trained_registry, workers=0, redis_url="redis://localhost:6379/0").check()
    env = {**os.environ, "PYTHONPATH": str(ROOT), "RISK_WORKERS": "3"}
    env.pop("REDIS_URL", None)
    proc = subprocess.run(
        [sys.executable, "-m", "engine.cli", "serve", "--model", str(trained_registry)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 2
    assert "--workers / RISK_WORKERS 3 needs Redis" in proc.stderr


def test_cpu_affinity_is_a_setting() -> None:
    assert ServeConfig().cpu_affinity
    assert not ServeConfig.from_env({"RISK_CPU_AFFINITY": "off"}).cpu_affinity
    with pytest.raises(ConfigError, match="RISK_CPU_AFFINITY='one': expected on or off"):
        ServeConfig.from_env({"RISK_CPU_AFFINITY": "one"})


@pytest.mark.parametrize(("index", "processes", "setting"), [(0, 1, "on"), (1, 1, "on"), (0, 1, "off"), (1, 99, "on")])
def test_a_server_process_pins_itself_to_one_core(index: int, processes: int, setting: str) -> None:
    """In a child process (pinning pytest itself would slow the rest of the suite)."""
    code = (
        "import os\n"
        "from engine.config import ServeConfig\n"
        "from engine.service.server import pin_to_one_core\n"
        f"config = ServeConfig.from_env({{'RISK_CPU_AFFINITY': '{setting}'}})\n"
        f"core = pin_to_one_core({index}, {processes}) if config.cpu_affinity else None\n"
        "print(core, sorted(os.sched_getaffinity(0)))\n"
    )
    out = (
        subprocess.run(
            [sys.executable, "-c", code],
            capture_output=True,
            text=True,
            check=True,
            cwd=ROOT,
            env={**os.environ, "PYTHONPATH": str(ROOT)},
        )
        .stdout.strip()
        .split(maxsplit=1)
    )
    allowed = sorted(os.sched_getaffinity(0))
    assert len(allowed) >= 2, "this test needs a machine with two cores or more"
    if setting == "off" or processes >= len(allowed):  # off, or no core would be left unpinned
        assert out == ["None", str(allowed)]
    else:
        want = allowed[index % len(allowed)]
        assert out == [str(want), str([want])]
