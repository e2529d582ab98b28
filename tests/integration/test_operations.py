"""Running it in production: TLS and mutual TLS, the admin port, config errors, JSON logs without secrets, metrics."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from dataclasses import replace
from pathlib import Path

import grpc
import pytest
import redis

from engine.config import ConfigError, ServeConfig
from engine.service.pb import admin_pb2, admin_pb2_grpc, risk_pb2_grpc
from engine.service.server import Running, start
from engine.windows.redis_store import RedisStore
from tests.support import ROOT
from tests.support.certs import make_certs
from tests.support.redis import RedisProcess, free_port
from tests.support.requests import request, wait_serving
from tests.support.served import make_config

pytestmark = [pytest.mark.server]


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A CA, a server and a client certificate it signed, and a rogue CA with its own client."""
    return make_certs(tmp_path_factory.mktemp("certs"))


def tls_channel(port: int, certs: Path, client: str | None = None) -> grpc.Channel:
    creds = grpc.ssl_channel_credentials(
        root_certificates=(certs / "ca.pem").read_bytes(),
        private_key=(certs / f"{client}.key").read_bytes() if client else None,
        certificate_chain=(certs / f"{client}.pem").read_bytes() if client else None,
    )
    return grpc.secure_channel(f"127.0.0.1:{port}", creds)


def score_code(channel: grpc.Channel) -> grpc.StatusCode:
    try:
        risk_pb2_grpc.RiskEngineStub(channel).Score(request(), timeout=3)
        return grpc.StatusCode.OK
    except grpc.RpcError as exc:
        return exc.code()
    finally:
        channel.close()


def test_tls_serves_only_tls_clients(trained_registry: Path, certs: Path) -> None:
    running = start(make_config(trained_registry, tls_cert=certs / "server.pem", tls_key=certs / "server.key"))
    try:
        assert score_code(tls_channel(running.port, certs)) == grpc.StatusCode.OK
        assert score_code(grpc.insecure_channel(f"127.0.0.1:{running.port}")) == grpc.StatusCode.UNAVAILABLE
    finally:
        running.stop(0.5)


def test_mutual_tls_requires_a_client_certificate_from_the_configured_ca(trained_registry: Path, certs: Path) -> None:
    running = start(
        make_config(
            trained_registry,
            tls_cert=certs / "server.pem",
            tls_key=certs / "server.key",
            tls_client_ca=certs / "ca.pem",
        )
    )
    try:
        assert score_code(tls_channel(running.port, certs, "client")) == grpc.StatusCode.OK
        assert score_code(tls_channel(running.port, certs)) == grpc.StatusCode.UNAVAILABLE  # no client cert
        assert score_code(tls_channel(running.port, certs, "rogue-client")) == grpc.StatusCode.UNAVAILABLE
        assert score_code(grpc.insecure_channel(f"127.0.0.1:{running.port}")) == grpc.StatusCode.UNAVAILABLE
    finally:
        running.stop(0.5)


def test_tls_files_that_are_missing_or_not_pem_stop_the_start(trained_registry: Path, certs: Path) -> None:
    with pytest.raises(ConfigError, match=r"--tls-key / RISK_TLS_KEY .*nope.key: no such file"):
        start(make_config(trained_registry, tls_cert=certs / "server.pem", tls_key=certs / "nope.key"))
    with pytest.raises(ConfigError, match="go together"):
        start(make_config(trained_registry, tls_cert=certs / "server.pem"))
    with pytest.raises(ConfigError, match="--tls-key: not a PEM private key"):
        start(make_config(trained_registry, tls_cert=certs / "server.pem", tls_key=certs / "server.ext"))


# -- the admin port ----------------------------------------------------------


def test_admin_actions_live_on_their_own_port_never_the_gateways(trained_registry: Path) -> None:
    config = make_config(trained_registry, admin_port=0)
    running = start(config)
    try:
        assert running.admin_port is not None and running.admin_port != running.port
        admin = grpc.insecure_channel(f"127.0.0.1:{running.admin_port}")
        stub = admin_pb2_grpc.AdminStub(admin)
        token = (("authorization", f"Bearer {config.admin_token_path.read_text().strip()}"),)
        status = stub.Status(admin_pb2.StatusRequest(), timeout=5, metadata=token)
        assert status.ruleset_version == running.reloader.status.ruleset_version
        assert status.model_version and status.store == "memory" and status.last_reload_ok
        # Nothing changed on disk: nothing is reloaded, and the answer says so.
        reloaded = stub.Reload(admin_pb2.ReloadRequest(), timeout=30, metadata=token)
        assert not reloaded.reloaded and reloaded.status.reloads_ok == 0 and reloaded.status.last_reload_ok
        admin.close()
        # The gateway's port does not know the admin service (nor does its reflection list it).
        gateway = grpc.insecure_channel(f"127.0.0.1:{running.port}")
        with pytest.raises(grpc.RpcError) as refused:
            admin_pb2_grpc.AdminStub(gateway).Reload(admin_pb2.ReloadRequest(), timeout=5)
        assert refused.value.code() == grpc.StatusCode.UNIMPLEMENTED
        # And the admin port does not score.
        assert score_code(grpc.insecure_channel(f"127.0.0.1:{running.admin_port}")) == grpc.StatusCode.UNIMPLEMENTED
        gateway.close()
    finally:
        running.stop(0.5)


def test_the_admin_port_leaves_localhost_only_with_mutual_tls(trained_registry: Path, certs: Path) -> None:
    with pytest.raises(ConfigError, match="not a loopback address"):
        make_config(trained_registry, admin_host="0.0.0.0", admin_port=0).check()
    make_config(
        trained_registry,
        admin_host="0.0.0.0",
        admin_port=0,
        tls_cert=certs / "server.pem",
        tls_key=certs / "server.key",
        tls_client_ca=certs / "ca.pem",
    ).check()


def test_admin_stubs_are_current(tmp_path: Path) -> None:
    subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "gen_proto.py"), str(tmp_path)], check=True, capture_output=True
    )
    committed = ROOT / "engine" / "service" / "pb"
    for name in ("admin_pb2.py", "admin_pb2.pyi", "admin_pb2_grpc.py"):
        assert (tmp_path / name).read_text() == (committed / name).read_text(), f"{name} is stale: run `make proto`"


# -- config -----------------------------------------------------------------


def test_every_bad_setting_is_named_at_once_and_secrets_are_not_shown() -> None:
    env = {
        "RISK_PORT": "fifty",
        "RISK_REDIS_BUDGET_MS": "fast",
        "RISK_THREADS": "1.5",
        "RISK_METRICS_PORT": "on",
        "RISK_GRACE_S": "nan",
    }
    with pytest.raises(ConfigError) as bad:
        ServeConfig.from_env(env)
    assert bad.value.problems == [
        "RISK_PORT='fifty': not an integer",
        "RISK_REDIS_BUDGET_MS='fast': not a number",
        "RISK_THREADS='1.5': not an integer",
        "RISK_GRACE_S='nan': not a finite number",
        "RISK_METRICS_PORT='on': not a port number or 'off'",
    ]
    config = replace(
        ServeConfig.from_env({"REDIS_URL": "http://admin:hunter2@cache:6379/0"}),
        port=70000,
        threads=0,
        log_format="xml",
        rules=Path("/nonexistent"),
    )
    with pytest.raises(ConfigError) as bad:
        config.check()
    text = str(bad.value)
    assert "hunter2" not in text and "http://admin:***@cache:6379/0" in text
    for named in ("--port / RISK_PORT", "--threads / RISK_THREADS", "RISK_LOG_FORMAT", "--rules / RISK_RULES"):
        assert named in text


def test_serve_exits_2_naming_every_bad_variable(tmp_path: Path) -> None:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "RISK_PORT": "x", "RISK_THREADS": "y", "RISK_TYPO": "1"}
    env["REDIS_URL"] = "redis://:s3cr3t-pw@127.0.0.1:1/0"
    proc = subprocess.run(
        [sys.executable, "-m", "engine.cli", "serve"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 2
    assert "RISK_PORT='x': not an integer" in proc.stderr and "RISK_THREADS='y': not an integer" in proc.stderr
    assert "s3cr3t-pw" not in proc.stderr + proc.stdout


# -- logs --------------------------------------------------------------------


def test_json_logs_one_line_per_event_and_no_redis_password(trained_registry: Path, own_redis: RedisProcess) -> None:
    password = "s3cr3t-pw-0451"
    client = redis.Redis(port=own_redis.port)
    client.config_set("requirepass", password)
    client.close()
    port = free_port()
    env = {**os.environ, "PYTHONPATH": str(ROOT), "REDIS_URL": f"redis://:{password}@127.0.0.1:{own_redis.port}/0"}
    env.pop("RISK_LOG_FORMAT", None)
    proc = subprocess.Popen(
        [
            *(sys.executable, "-m", "engine.cli", "serve", "--port", str(port), "--model", str(trained_registry)),
            *("--metrics-port", "off", "--admin-port", "off", "--reload-interval", "0"),
        ],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    try:
        channel = grpc.insecure_channel(f"127.0.0.1:{port}")
        wait_serving(channel, proc)
        stub = risk_pb2_grpc.RiskEngineStub(channel)
        assert not stub.Score(request(card_id="tok_4f9a"), timeout=5).degraded  # the password works
        own_redis.stop()
        assert stub.Score(request(card_id="tok_4f9a"), timeout=5).degraded
        proc.send_signal(signal.SIGHUP)
        time.sleep(1.0)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(20) == 0
        channel.close()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    output = proc.stdout.read().decode() if proc.stdout else ""
    assert password not in output
    lines = [json.loads(line) for line in output.splitlines() if line.strip()]  # every line is JSON
    events = [line["event"] for line in lines]
    for event in ("start", "degraded", "reload", "stop"):
        assert event in events, events
    started = next(line for line in lines if line["event"] == "start")
    assert started["config"]["redis"] == f"redis://:***@127.0.0.1:{own_redis.port}/0"
    assert started["model_version"] and started["ruleset_version"] and started["ts"].endswith("Z")
    # The windows call that found Redis gone (a record still being written then is reported too).
    degraded = next(line for line in lines if line["event"] == "degraded" and line["cause"] == "windows")
    assert degraded["level"] == "warning" and "windows unavailable" in degraded["msg"]
    assert "tok_4f9a" not in output  # no card id (nor any other request data) in the log


def test_redaction_of_urls_and_key_values() -> None:
    from engine.logs import redact

    assert (
        redact("Error connecting to redis://user:p%40ss@h:1/0 now") == "Error connecting to redis://user:***@h:1/0 now"
    )
    assert redact("rediss://:pw@[::1]:6380") == "rediss://:***@[::1]:6380"
    assert redact("dsn host=x password=abc&x=1") == "dsn host=x password=***&x=1"
    assert redact("redis://127.0.0.1:6379/0") == "redis://127.0.0.1:6379/0"


# -- metrics -----------------------------------------------------------------


def metrics_text(running: Running) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{running.metrics_port}/metrics", timeout=5) as resp:
        return str(resp.read().decode())


def sample(text: str, name: str) -> float:
    for line in text.splitlines():
        if line.startswith(name + " "):
            return float(line.rsplit(" ", 1)[1])
    raise AssertionError(f"{name} not in the metrics")


def test_metrics_count_requests_latency_degraded_causes_and_redis_errors(
    trained_registry: Path, own_redis: RedisProcess
) -> None:
    running = start(make_config(trained_registry, (own_redis.url, "met")))
    channel = grpc.insecure_channel(f"127.0.0.1:{running.port}")
    stub = risk_pb2_grpc.RiskEngineStub(channel)
    try:
        assert not stub.Score(request(), timeout=2).degraded
        store = running.store
        assert isinstance(store, RedisStore) and store.flush(5.0)  # its record (written behind) is in first
        text = metrics_text(running)
        assert sample(text, 'risk_retry_records_total{result="written"}') == 1
        assert sample(text, 'risk_retry_records_total{result="lost"}') == 0
        assert sample(text, "risk_retry_record_queue") == 0
        with pytest.raises(grpc.RpcError) as refused:
            stub.Score(request(), timeout=0.02)  # too short for the Redis budget: shed
        assert refused.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        own_redis.stop()
        for _ in range(5):
            assert stub.Score(request(), timeout=2).degraded
        with pytest.raises(grpc.RpcError):
            stub.Score(request(currency="XYZ"), timeout=2)
        text = metrics_text(running)
        assert sample(text, 'risk_requests_total{code="OK",method="Score"}') == 6
        assert sample(text, 'risk_requests_total{code="INVALID_ARGUMENT",method="Score"}') == 1
        assert sample(text, 'risk_requests_total{code="RESOURCE_EXHAUSTED",method="Score"}') == 1
        assert sample(text, 'risk_shed_total{cause="deadline"}') == 1
        assert sample(text, 'risk_shed_total{cause="queue"}') == 0
        assert sample(text, "risk_queue_wait_seconds_count") == 8
        assert sample(text, 'risk_request_duration_seconds_count{method="Score"}') == 8
        assert sample(text, 'risk_request_duration_seconds_bucket{le="0.05",method="Score"}') >= 7
        assert sample(text, 'risk_degraded_total{cause="windows"}') == 5
        assert sample(text, 'risk_degraded_total{cause="model"}') == 0
        connection = sample(text, 'risk_store_errors_total{kind="connection"}')
        fast = sample(text, 'risk_store_errors_total{kind="open"}')
        assert connection == 5 and fast == 0  # 5 failures open the breaker: none failed fast yet
        assert sample(text, 'risk_store_breaker_state{target="' + f'127.0.0.1:{own_redis.port}"' + "}") == 2
        assert (
            sample(
                text,
                'risk_store_breaker_transitions_total{state="open",target="' + f'127.0.0.1:{own_redis.port}"' + "}",
            )
            == 1
        )
        assert sample(text, "risk_fallback_answers_total") == 5
        assert sample(text, 'risk_decisions_total{decision="allow",degraded="true"}') >= 1
    finally:
        channel.close()
        running.stop(0.5)
