"""Safe when busy (issue 16): overload is shed, one slow answer is not an outage, degraded answers still stop
the obvious attacks, and no answered decision is lost when the process dies.

Everything here runs against real parts: `risk-engine serve` processes or in-process servers on real
sockets, real Redis processes. The assertions are counts and decisions, never timings.
"""

from __future__ import annotations

import json
import re
import signal
import threading
import time
import uuid
from collections import Counter
from pathlib import Path

import grpc
import pytest
import redis

from engine.decision_log import read_records
from engine.service.pb import risk_pb2, risk_pb2_grpc
from engine.service.server import Running, start
from tests.support import RULES
from tests.support.faults import Server
from tests.support.redis import RedisProcess
from tests.support.requests import now_ms, request
from tests.support.served import make_config

pytestmark = [pytest.mark.redis, pytest.mark.server, pytest.mark.slow]

ALLOW, REVIEW, DENY = risk_pb2.DECISION_ALLOW, risk_pb2.DECISION_REVIEW, risk_pb2.DECISION_DENY


def metric(text: str, name: str) -> float:
    for line in text.splitlines():
        if line.startswith(name + " "):
            return float(line.rsplit(" ", 1)[1])
    raise AssertionError(f"{name} not in the metrics")


def attack_request(card: str, i: int, t0: int) -> risk_pb2.ScoreRequest:
    """One payment of a card-testing attack: 1.00 EUR on the same card, a new id each time."""
    return request(
        transaction_id=f"attack-{card}-{i}",
        card_id=card,
        user_id=f"u-{card}",
        device_id=f"d-{uuid.uuid4().hex[:8]}",
        amount_minor=100,
        event_time_ms=t0 + i,
    )


def burst(port: int, calls: int, attack_card: str, attack_every: int = 15) -> list[tuple[bool, object]]:
    """Send `calls` Score calls at once over 8 channels; every attack_every-th is a card-testing payment.

    Returns (is_attack, response or the error's status code) per call.
    """
    channels = [
        grpc.insecure_channel(f"127.0.0.1:{port}", options=[("grpc.use_local_subchannel_pool", 1)]) for _ in range(8)
    ]
    stubs = [risk_pb2_grpc.RiskEngineStub(c) for c in channels]
    t0 = now_ms()
    futures = []
    try:
        for i in range(calls):
            attack = i % attack_every == 0
            req = attack_request(attack_card, i, t0) if attack else request(card_id=f"c-{i}", user_id=f"u-{i}")
            futures.append((attack, stubs[i % len(stubs)].Score.future(req, timeout=60)))
        out: list[tuple[bool, object]] = []
        for attack, future in futures:
            try:
                out.append((attack, future.result()))
            except grpc.RpcError as exc:
                out.append((attack, exc.code()))
        return out
    finally:
        for c in channels:
            c.close()


@pytest.mark.parametrize(
    ("limit", "env"),
    [
        ("queue", {"RISK_MAX_QUEUE_MS": "5", "RISK_MAX_CONCURRENT_RPCS": "100000"}),
        ("in_flight", {"RISK_MAX_QUEUE_MS": "100000", "RISK_MAX_CONCURRENT_RPCS": "6"}),
    ],
)
def test_a_burst_beyond_capacity_is_shed_not_degraded_and_card_testing_is_still_stopped(
    trained_registry: Path, own_redis: RedisProcess, tmp_path: Path, limit: str, env: dict[str, str]
) -> None:
    # A Redis budget far above any scheduling delay: here Redis is healthy, only the process is busy.
    server = Server(
        tmp_path / "srv", RULES, trained_registry, own_redis.url, threads=2, env={**env, "RISK_REDIS_BUDGET_MS": "2000"}
    )
    server.start()
    try:
        answers = burst(server.port, 1200, attack_card=f"card-test-{uuid.uuid4().hex[:6]}")
        codes = Counter("OK" if isinstance(a, risk_pb2.ScoreResponse) else a.name for _, a in answers)  # type: ignore[attr-defined]
        scored = [a for _, a in answers if isinstance(a, risk_pb2.ScoreResponse)]
        attack = [a for is_attack, a in answers if is_attack and isinstance(a, risk_pb2.ScoreResponse)]
        assert set(codes) <= {"OK", "RESOURCE_EXHAUSTED"}, codes
        assert codes["RESOURCE_EXHAUSTED"] > 0, codes  # the burst was beyond capacity: some were shed
        assert codes["OK"] > 0, codes  # and the ones admitted were scored
        assert not [a for a in scored if a.degraded]  # a busy process sheds; it never answers unchecked
        # Card testing: the attack's admitted payments were counted; from the fifth on, each is denied.
        allowed = [a for a in attack if a.decision == ALLOW]
        assert len(allowed) <= 4, [a.features["card_count_10m"] for a in allowed]
        assert all(a.decision == DENY for a in attack if a.features["card_count_10m"] >= 5)
        text = server.metrics()
        # Every refusal is counted under its cause, and only under it.
        assert metric(text, f'risk_shed_total{{cause="{limit}"}}') == codes["RESOURCE_EXHAUSTED"]
        other = {"queue": "in_flight", "in_flight": "queue"}[limit]
        assert metric(text, f'risk_shed_total{{cause="{other}"}}') == 0
        assert metric(text, 'risk_degraded_total{cause="windows"}') == 0
        log = (server.workdir / "server.log").read_text().splitlines()
        shed_lines = [json.loads(line) for line in log if '"event": "shed"' in line or '"event":"shed"' in line]
        assert 1 <= len(shed_lines) <= 5  # logged at most once a second, with counts
    finally:
        server.kill()


def live_server(registry: Path, redis_proc: RedisProcess, prefix: str, **overrides: object) -> Running:
    return start(make_config(registry, (redis_proc.url, prefix), redis_budget_ms=50.0, **overrides))


def test_one_redis_timeout_degrades_that_call_only(trained_registry: Path, own_redis: RedisProcess) -> None:
    running = live_server(trained_registry, own_redis, "one-slow")
    channel = grpc.insecure_channel(f"127.0.0.1:{running.port}")
    stub = risk_pb2_grpc.RiskEngineStub(channel)
    client = redis.Redis(port=own_redis.port)
    card = f"c-{uuid.uuid4().hex[:6]}"
    try:
        assert not stub.Score(request(card_id=card), timeout=2).degraded
        stall = threading.Thread(target=lambda: client.execute_command("DEBUG", "SLEEP", "0.15"))
        stall.start()
        time.sleep(0.03)
        slow = stub.Score(request(card_id=card), timeout=2)  # Redis asleep: past the 50 ms budget
        assert slow.degraded
        stall.join()  # Redis answers again
        # The very next calls are scored normally: no store-wide cooldown after one timeout.
        for _ in range(20):
            assert not stub.Score(request(card_id=card), timeout=2).degraded
        assert running.store.breakers() == {f"127.0.0.1:{own_redis.port}": "closed"}
    finally:
        channel.close()
        client.close()
        running.stop(0.5)


def system_reason(resp: risk_pb2.ScoreResponse) -> str:
    return next(r.message for r in resp.reasons if r.code == "WINDOWS_UNAVAILABLE")


def test_redis_down_degraded_answers_still_stop_card_testing_device_farms_and_ip_bursts(
    trained_registry: Path, own_redis: RedisProcess
) -> None:
    running = live_server(trained_registry, own_redis, "fallback")
    channel = grpc.insecure_channel(f"127.0.0.1:{running.port}")
    stub = risk_pb2_grpc.RiskEngineStub(channel)
    t = now_ms()
    try:
        # A card-testing run that began while Redis answered: the fallback counted it too.
        early = f"c-{uuid.uuid4().hex[:6]}"
        for i in range(3):
            assert stub.Score(attack_request(early, i, t), timeout=2).decision == ALLOW
        own_redis.stop()
        fourth = stub.Score(attack_request(early, 3, t), timeout=2)
        fifth = stub.Score(attack_request(early, 4, t), timeout=2)
        assert fourth.degraded and fourth.decision == ALLOW and fourth.features["card_count_10m"] == 4
        assert fifth.degraded and fifth.decision == DENY and "CARD_TESTING" in [r.code for r in fifth.reasons]
        # Card testing: five payments of 1 EUR on one card in minutes.
        card = f"c-{uuid.uuid4().hex[:6]}"
        decisions = []
        sent = [attack_request(card, i, t) for i in range(8)]
        for req in sent:
            resp = stub.Score(req, timeout=2)
            assert resp.degraded and "short window(s) read from this process" in system_reason(resp)
            decisions.append(resp.decision)
        assert decisions == [ALLOW] * 4 + [DENY] * 4
        # A retry of a payment during the outage is not counted twice; other content under its id is refused.
        assert stub.Score(sent[7], timeout=2).features["card_count_10m"] == 8
        with pytest.raises(grpc.RpcError) as reused:
            stub.Score(attack_request(card, 7, t), timeout=2)  # another device under the same id
        assert reused.value.code() == grpc.StatusCode.ALREADY_EXISTS
        # A device farm: one device, four cards within the hour.
        device = f"d-{uuid.uuid4().hex[:6]}"
        farm = [stub.Score(request(device_id=device, card_id=f"c-{i}-{device}", user_id=f"u-{i}", event_time_ms=t + i))
                for i in range(4)]  # fmt: skip
        assert [r.decision for r in farm] == [ALLOW, ALLOW, ALLOW, DENY]
        assert "DEVICE_CARD_BURST" in [r.code for r in farm[-1].reasons]
        # An IP paying with many cards.
        ip = f"198.51.100.{uuid.uuid4().int % 250 + 1}"
        many = [stub.Score(request(ip=ip, card_id=f"c-{i}-{ip}", device_id=f"d-{i}-{ip}", user_id=f"u-{i}-{ip}",
                                   event_time_ms=t + i)) for i in range(6)]  # fmt: skip
        assert many[-1].decision == REVIEW and "IP_MANY_CARDS" in [r.code for r in many[-1].reasons]
        # Rules on windows the fallback does not keep are skipped, and say so.
        assert "card_count_1d" not in many[-1].features
        assert (
            running.fallback is not None and running.fallback.used == 2 + 8 + 1 + 4 + 6
        )  # the refused one read nothing
    finally:
        channel.close()
        running.stop(0.5)


def test_no_answered_decision_is_lost_when_the_process_is_killed(
    trained_registry: Path, own_redis: RedisProcess, tmp_path: Path
) -> None:
    server = Server(tmp_path / "srv", RULES, trained_registry, own_redis.url, threads=8)
    server.start()
    answered: list[str] = []
    lock = threading.Lock()
    stop = threading.Event()

    def client(k: int) -> None:
        channel = grpc.insecure_channel(f"127.0.0.1:{server.port}", options=[("grpc.use_local_subchannel_pool", 1)])
        stub = risk_pb2_grpc.RiskEngineStub(channel)
        i = 0
        while not stop.is_set():
            tid = f"crash-{k}-{i}"
            i += 1
            try:
                stub.Score(request(transaction_id=tid, card_id=f"c-{k}-{i % 7}"), timeout=2)
            except grpc.RpcError:
                continue  # not answered (the process died under it, or it was shed)
            with lock:
                answered.append(tid)
        channel.close()

    workers = [threading.Thread(target=client, args=(k,)) for k in range(6)]
    for w in workers:
        w.start()
    try:
        deadline = time.monotonic() + 60
        while len(answered) < 600 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert server.proc is not None
        server.proc.send_signal(signal.SIGKILL)  # kill -9 under load
        server.proc.wait(10)
    finally:
        stop.set()
        for w in workers:
            w.join(10)
        server.kill()
    bad: list[int] = []
    logged = {r["transaction"]["transaction_id"] for r in read_records(server.workdir / "decisions", bad)}
    assert len(answered) >= 600
    assert not set(answered) - logged  # every answer the gateway got is in the log
    assert bad == []  # and no line was torn


def test_health_metrics_show_the_breaker_and_the_shed_causes_at_start(
    trained_registry: Path, own_redis: RedisProcess
) -> None:
    running = live_server(trained_registry, own_redis, "metrics-start")
    try:
        stub = risk_pb2_grpc.RiskEngineStub(grpc.insecure_channel(f"127.0.0.1:{running.port}"))
        stub.Score(request(), timeout=2)
        import urllib.request

        with urllib.request.urlopen(f"http://127.0.0.1:{running.metrics_port}/metrics", timeout=5) as resp:
            text = resp.read().decode()
        for cause in ("queue", "in_flight", "deadline"):
            assert metric(text, f'risk_shed_total{{cause="{cause}"}}') == 0
        assert re.search(r'risk_store_breaker_state\{target="127\.0\.0\.1:\d+"\} 0\.0', text)
        assert metric(text, "risk_fallback_answers_total") == 0
    finally:
        running.stop(0.5)
