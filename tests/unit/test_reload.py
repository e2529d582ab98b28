"""Live reload under traffic: a bad rule set is refused and the old one keeps serving; a good one swaps in.

A real server on a socket (real Redis) serves the shipped rules copied to a
temporary folder while a client thread keeps scoring. The folder is then
broken in two ways (a syntax error, a failing rule test) and finally fixed;
every call must succeed throughout, answered by exactly one rule set
version at a time, and the health answers and metrics must say what happened.
SIGHUP is tested on the real `risk-engine serve` process.
"""

from __future__ import annotations

import datetime as dt
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from engine.service.pb import risk_pb2_grpc
from engine.service.server import Running, start
from tests.support import ROOT, RULES
from tests.support.redis import free_port
from tests.support.requests import request
from tests.support.served import health_metadata, make_config, wait_for


def set_version(folder: Path, version: str) -> None:
    path = folder / "engine.yaml"
    text = path.read_text()
    start_at = text.index('version: "')
    end = text.index('"', start_at + 10)
    path.write_text(text[:start_at] + f'version: "{version}"' + text[end + 1 :])


class Traffic:
    """A client thread that scores without pause and records every outcome."""

    def __init__(self, port: int) -> None:
        self.channel = grpc.insecure_channel(f"127.0.0.1:{port}")
        self.stub = risk_pb2_grpc.RiskEngineStub(self.channel)
        self.versions: list[str] = []
        self.errors: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.versions.append(self.stub.Score(request(), timeout=2).ruleset_version)
            except grpc.RpcError as exc:
                self.errors.append(f"{exc.code()}: {exc.details()}")

    def __enter__(self) -> Traffic:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(5)
        self.channel.close()

    def latest(self) -> str:
        return self.versions[-1] if self.versions else ""


@pytest.fixture
def rules_copy(tmp_path: Path) -> Path:
    folder = tmp_path / "rules"
    shutil.copytree(RULES, folder)
    return folder


@pytest.fixture
def live(trained_registry: Path, redis_url: tuple[str, str], rules_copy: Path) -> Iterator[Running]:
    running = start(make_config(trained_registry, redis_url, rules=rules_copy, reload_interval_s=0.1))
    yield running
    running.stop(0.5)


def metrics_text(running: Running) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{running.metrics_port}/metrics", timeout=5) as resp:
        return resp.read().decode()


def test_a_failed_reload_leaves_the_old_version_serving_under_live_traffic(live: Running, rules_copy: Path) -> None:
    channel = grpc.insecure_channel(f"127.0.0.1:{live.port}")
    old = health_metadata(channel)
    assert old["risk-ruleset-version"] == "2026.12.06-2" and old["risk-last-reload"] == "ok"
    with Traffic(live.port) as traffic:
        wait_for(lambda: len(traffic.versions) > 20, "traffic")

        # 1. A syntax error in a rule file: refused, with the file and line in the status.
        good_rules = (rules_copy / "rules.yaml").read_text()
        (rules_copy / "rules.yaml").write_text(good_rules.replace("action: deny", "action: [deny", 1))
        wait_for(lambda: health_metadata(channel)["risk-last-reload"].startswith("failed"), "the refusal")
        status = live.reloader.status.last_failure  # what admin Status says; the scoring port's health does not
        assert "rules.yaml:" in status and "invalid YAML" in status
        assert "rules.yaml" not in health_metadata(channel)["risk-last-reload"]
        assert health_metadata(channel)["risk-ruleset-version"] == "2026.12.06-2"
        seen = len(traffic.versions)
        wait_for(lambda: len(traffic.versions) > seen + 20, "traffic after the refusal")

        # 2. Valid YAML whose rule tests fail: refused too (the new version never serves).
        (rules_copy / "rules.yaml").write_text(good_rules.replace('"card_count_10m >= 5', '"card_count_10m >= 50'))
        set_version(rules_copy, "never-served")
        wait_for(lambda: "card testing burst is denied" in live.reloader.status.last_failure, "test refusal")
        seen = len(traffic.versions)
        wait_for(lambda: len(traffic.versions) > seen + 20, "traffic after the second refusal")

        # 3. A sound set swaps in between requests.
        (rules_copy / "rules.yaml").write_text(good_rules)
        set_version(rules_copy, "reload-3")
        wait_for(lambda: traffic.latest() == "reload-3", "the new version to serve")
        seen = len(traffic.versions)
        wait_for(lambda: len(traffic.versions) > seen + 20, "traffic after the swap")

    assert traffic.errors == []
    assert "never-served" not in traffic.versions
    switch = traffic.versions.index("reload-3")
    assert set(traffic.versions[:switch]) == {"2026.12.06-2"} and set(traffic.versions[switch:]) == {"reload-3"}
    meta = health_metadata(channel)
    assert meta["risk-ruleset-version"] == "reload-3" and meta["risk-last-reload"] == "ok"
    text = metrics_text(live)
    assert 'risk_reloads_total{result="failed"} 2.0' in text
    assert 'risk_reloads_total{result="ok"} 1.0' in text
    assert f'risk_ruleset_info{{digest="{meta["risk-ruleset-digest"]}",version="reload-3"}} 1.0' in text
    assert 'version="2026.12.06-2"' not in text
    assert "risk_last_reload_ok 1.0" in text
    channel.close()


def test_rule_hits_are_counted_by_mode(live: Running) -> None:
    channel = grpc.insecure_channel(f"127.0.0.1:{live.port}")
    stub = risk_pb2_grpc.RiskEngineStub(channel)
    # A night-time event (hour <= 6 UTC, the shipped time zone) within the accepted event age.
    now = dt.datetime.now(dt.UTC)
    if 1 <= now.hour <= 6:
        night = now - dt.timedelta(minutes=1)
    else:  # the last 03:00, between 4 and 22 hours ago
        night = now.replace(hour=3, minute=0, second=0, microsecond=0)
        if night > now:
            night -= dt.timedelta(days=1)
    t_ms = int(night.timestamp() * 1000)
    for i in range(3):  # three cards: one card paying three times at once would fire card_repeat_within_30s too
        resp = stub.Score(
            request(
                channel=2,
                card_id=f"c-night-{i}-{time.monotonic_ns()}",
                device_id="",
                amount_minor=25_000,
                event_time_ms=t_ms,
                ip="81.2.69.160",
            ),
            timeout=5,
        )
        assert [r.rule_id for r in resp.shadow_reasons] == ["unknown_device_at_night"]
        assert "NIGHT_NO_DEVICE" not in {r.code for r in resp.reasons}
    text = metrics_text(live)
    assert 'risk_rule_hits_total{mode="shadow",rule_id="unknown_device_at_night"} 3.0' in text
    # every fresh Score is timed step by step
    for step in ("prepare", "windows", "model", "rules", "record"):
        count = next(
            float(line.rsplit(" ", 1)[1])
            for line in text.splitlines()
            if line.startswith(f'risk_step_duration_seconds_count{{step="{step}"}}')
        )
        assert count >= 3, step
    channel.close()


def test_sighup_reloads_the_running_server(trained_registry: Path, rules_copy: Path) -> None:
    port = free_port()
    env = {k: v for k, v in os.environ.items() if k != "REDIS_URL"}
    env["PYTHONPATH"] = str(ROOT)
    proc = subprocess.Popen(
        [
            *(sys.executable, "-m", "engine.cli", "serve", "--port", str(port), "--rules", str(rules_copy)),
            *("--model", str(trained_registry), "--reload-interval", "0", "--metrics-port", "off"),
        ],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    channel = grpc.insecure_channel(f"127.0.0.1:{port}")
    try:

        def serving() -> bool:
            try:
                return bool(health_metadata(channel))
            except grpc.RpcError:
                assert proc.poll() is None, "the server exited"
                return False

        wait_for(serving, "the server to serve", 30)
        set_version(rules_copy, "after-sighup")
        time.sleep(0.3)
        assert health_metadata(channel)["risk-ruleset-version"] == "2026.12.06-2"  # the watcher is off
        proc.send_signal(signal.SIGHUP)
        wait_for(lambda: health_metadata(channel)["risk-ruleset-version"] == "after-sighup", "the SIGHUP reload")
        stub = risk_pb2_grpc.RiskEngineStub(channel)
        assert stub.Score(request(), timeout=5).ruleset_version == "after-sighup"
    finally:
        channel.close()
        proc.send_signal(signal.SIGTERM)
        out = proc.communicate(timeout=20)[0].decode()
    assert proc.returncode == 0, out
    assert "SIGHUP: reloading the rule set" in out and "reloaded: rule set after-sighup" in out


def test_a_refused_set_is_retried_when_its_missing_file_appears(trained_registry: Path, rules_copy: Path) -> None:
    from engine.model.predictor import load_model
    from engine.pipeline import Pipeline
    from engine.reload import Reloader
    from engine.rules import load_ruleset
    from engine.windows.memory import MemoryStore

    ruleset = load_ruleset(rules_copy)
    pipeline = Pipeline(ruleset, load_model(trained_registry, ruleset), MemoryStore())
    reloader = Reloader(pipeline, rules_copy, trained_registry, interval_s=0.01)
    lists = rules_copy / "lists.yaml"
    lists.write_text(lists.read_text() + "  vip_cards: {kind: string, file: lists/vip_cards.txt}\n")
    set_version(rules_copy, "with-vip")
    assert reloader.poll() is None  # changed: wait one interval for it to settle
    assert reloader.poll() is False  # refused: the list file is missing
    assert "vip_cards.txt" in reloader.status.last_failure
    assert reloader.poll() is None  # the same broken files are not retried
    (rules_copy / "lists" / "vip_cards.txt").write_text("card-vip-1\n")
    assert reloader.poll() is None
    assert reloader.poll() is True
    assert pipeline.snapshot.ruleset.version == "with-vip" and "vip_cards" in pipeline.snapshot.ruleset.lists


def test_files_changed_during_a_load_are_loaded_again(
    trained_registry: Path, rules_copy: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import engine.reload
    from engine.model.predictor import load_model
    from engine.pipeline import Pipeline
    from engine.reload import Reloader
    from engine.rules import load_ruleset
    from engine.windows.memory import MemoryStore

    ruleset = load_ruleset(rules_copy)
    pipeline = Pipeline(ruleset, load_model(trained_registry, ruleset), MemoryStore())
    reloader = Reloader(pipeline, rules_copy, trained_registry, interval_s=0.01)
    calls: list[str] = []

    def load_while_an_analyst_saves(path: Path) -> object:
        result = load_ruleset(path)
        calls.append(result.version)
        if len(calls) == 1:  # the analyst saves the next version while the first is loading
            time.sleep(0.02)
            set_version(rules_copy, "v3")
        return result

    monkeypatch.setattr(engine.reload, "load_ruleset", load_while_an_analyst_saves)
    set_version(rules_copy, "v2")
    assert reloader.reload_now() is True
    assert calls == ["v2", "v3"]
    assert pipeline.snapshot.ruleset.version == "v3"
    assert reloader.poll() is None  # nothing left behind on disk


def test_every_served_set_is_archived_and_every_answer_names_its_digest(
    trained_registry: Path, redis_url: tuple[str, str], rules_copy: Path, tmp_path: Path
) -> None:
    """Two rule texts under one version: two digests on the answers, both texts in the archive beside
    the decision log, and `rules diff` between them shows the change."""
    from engine.cli import main
    from engine.rules.archive import FILES, find

    log = tmp_path / "decisions"
    running = start(make_config(trained_registry, redis_url, rules=rules_copy, reload_interval_s=0.1, decision_log=log))
    channel = grpc.insecure_channel(f"127.0.0.1:{running.port}")
    stub = risk_pb2_grpc.RiskEngineStub(channel)
    try:
        first = stub.Score(request(), timeout=2)
        assert first.ruleset_digest == health_metadata(channel)["risk-ruleset-digest"]
        assert len(first.ruleset_digest) == 16
        archive = log / "rulesets"
        assert (find(archive, first.ruleset_digest) / FILES / "rules.yaml").read_bytes() == (
            rules_copy / "rules.yaml"
        ).read_bytes()
        rules = rules_copy / "rules.yaml"
        rules.write_text(rules.read_text().replace('"card_since_previous_1h < 30"', '"card_since_previous_1h < 20"'))
        wait_for(lambda: health_metadata(channel)["risk-ruleset-digest"] != first.ruleset_digest, "the reload")
        second = stub.Score(request(), timeout=2)
        assert second.ruleset_version == first.ruleset_version  # the same version: the digest tells them apart
        assert second.ruleset_digest not in ("", first.ruleset_digest)
        assert sorted(p.name for p in archive.iterdir()) == sorted([first.ruleset_digest, second.ruleset_digest])
        assert main(["rules", "diff", first.ruleset_digest, second.ruleset_digest, "--archive", str(archive)]) == 1
    finally:
        channel.close()
        running.stop(0.5)
