"""The decision log: what a record holds, rotation, failures that never fail Score, and the export."""

from __future__ import annotations

import json
import shutil
import threading
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import IO

import grpc
import pyarrow.parquet as pq
import pytest

from engine.cli import main
from engine.decision_log import DecisionLog, files, read_records
from engine.offline.datasets import PRESETS, read_dataset
from engine.offline.export import export, parse_time
from engine.privacy import Pseudonyms, parse_key
from engine.service.pb import risk_pb2, risk_pb2_grpc
from engine.service.server import Running, start
from engine.transaction import Action, Channel, Reason, ReasonSource, ScoreResult, Transaction
from tests.support.requests import now_ms, request
from tests.support.served import make_config


def metrics_text(running: Running) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{running.metrics_port}/metrics", timeout=5) as resp:
        return str(resp.read().decode())


def metric(text: str, name: str) -> float:
    for line in text.splitlines():
        if line.startswith(name + " ") or line == name:
            return float(line.rsplit(" ", 1)[1])
    raise AssertionError(f"{name} not in the metrics")


@pytest.fixture
def logged(
    trained_registry: Path, redis_url: tuple[str, str], tmp_path: Path
) -> Iterator[tuple[Running, risk_pb2_grpc.RiskEngineStub]]:
    running = start(make_config(trained_registry, redis_url, decision_log=tmp_path / "decisions"))
    channel = grpc.insecure_channel(f"127.0.0.1:{running.port}")
    yield running, risk_pb2_grpc.RiskEngineStub(channel)
    channel.close()
    running.stop(0.5)


def txn(i: int, event_time_ms: int) -> Transaction:
    return Transaction(
        transaction_id=f"t-{i}",
        event_time_ms=event_time_ms,
        amount_minor=1000 + i,
        currency="EUR",
        card_id=f"c-{i % 3}",
        channel=Channel.WEB,
        attributes=(("mcc", "5812"),),
    )


def result(i: int, score: float = 0.1) -> ScoreResult:
    return ScoreResult(
        transaction_id=f"t-{i}",
        decision=Action.REVIEW,
        score=score,
        reasons=(Reason("R1", ReasonSource.RULE, "why", Action.REVIEW, rule_id="rule_one"),),
        ruleset_version="v1",
        model_version="m1",
        degraded=False,
        features={"amount": 10.0 + i, "card_count_1d": float("nan")},
        elapsed_us=100,
        shadow=(Reason("S1", ReasonSource.RULE, "shadow why", Action.DENY, rule_id="shadow_rule"),),
        ruleset_digest="0123456789abcdef",
        enrichment={"ip_country": "DE", "amount_base": f"{10 + i}.00", "base_currency": "EUR"},
    )


def test_every_scored_transaction_lands_in_the_log_with_its_content(
    logged: tuple[Running, risk_pb2_grpc.RiskEngineStub],
) -> None:
    running, stub = logged
    assert running.decisions is not None
    sent = [
        request(card_id="c-log", amount_minor=90_000, attributes={"mcc": "5812"}, ip="2001:DB8:0::1"),
        request(card_id="c-log", amount_minor=1_500),
    ]
    answers = [stub.Score(r, timeout=2) for r in sent]
    replay = stub.Score(sent[0], timeout=2)  # a retry answered from the record: not logged again
    assert replay.decision == answers[0].decision
    bad = request(currency="XYZ")
    with pytest.raises(grpc.RpcError):
        stub.Score(bad, timeout=2)  # refused: nothing was decided, nothing logged
    assert running.decisions.flush()
    records = list(read_records(running.decisions.folder))
    assert [r["transaction"]["transaction_id"] for r in records] == [r.transaction.transaction_id for r in sent]
    first, answer = records[0], answers[0]
    t = first["transaction"]
    # Ids as their pseudonyms under the key generated beside the log, the IP as its /48, and no attribute
    # the rule set does not keep (the shipped rules keep none): README, Data protection.
    keys = Pseudonyms(parse_key((running.decisions.folder / "pseudonym.key").read_text()))
    assert t["amount_minor"] == 90_000 and t["currency"] == "EUR" and t["card_id"] == keys.of("c-log")
    assert t["attributes"] == {} and t["channel"] == "app"
    assert t["ip"] == "2001:db8::"
    assert t["event_time_ms"] == sent[0].transaction.event_time.ToMilliseconds()
    assert first["decision"] == risk_pb2.Decision.Name(answer.decision).removeprefix("DECISION_").lower()
    assert first["score"] == pytest.approx(answer.score)
    assert first["ruleset_version"] == answer.ruleset_version and first["model_version"] == answer.model_version
    # The audit trail: the digest of the rule text that decided, and what enrichment found.
    assert first["ruleset_digest"] == answer.ruleset_digest == running.pipeline.snapshot.ruleset.digest
    assert first["enrichment"] == dict(answer.enrichment) == {"amount_base": "900.00", "base_currency": "EUR"}
    assert [r["code"] for r in first["reasons"]] == [r.code for r in answer.reasons]
    assert [r["rule_id"] for r in first["shadow"]] == [r.rule_id for r in answer.shadow_reasons]
    assert {k: v for k, v in first["features"].items() if v is not None} == pytest.approx(dict(answer.features))
    assert abs(first["decided_at_ms"] - now_ms()) < 60_000
    assert first["elapsed_us"] == answer.elapsed_us
    text = metrics_text(running)
    assert metric(text, 'risk_decision_log_records_total{result="written"}') == 2
    assert metric(text, 'risk_requests_total{code="OK",method="Score"}') == 3
    assert metric(text, 'risk_requests_total{code="INVALID_ARGUMENT",method="Score"}') == 1


def test_files_rotate_by_size_and_time_and_the_total_stays_bounded(tmp_path: Path) -> None:
    dlog = DecisionLog(tmp_path, max_file_bytes=4_000, max_total_bytes=12_000, rotate_s=3600)
    t0 = now_ms()
    for i in range(150):
        assert dlog.record(txn(i, t0 + i), result(i))
        if i % 10 == 0:
            assert dlog.flush()  # several batches, so that rotation happens between them
    assert dlog.flush()
    dlog.close()
    names = files(tmp_path)
    assert dlog.stats.files_rotated >= 5 and dlog.stats.files_deleted >= 1
    sizes = [p.stat().st_size for p in names]
    assert sum(sizes) <= 12_000 + 4_000  # the bound, plus the file being written
    assert all(size <= 4_000 for size in sizes[:-1]) or len(sizes) == 1
    kept = [r["transaction"]["transaction_id"] for r in read_records(tmp_path)]
    assert kept == [f"t-{i}" for i in range(150 - len(kept), 150)]  # the newest survive, in order
    assert dlog.stats.written == 150 and dlog.stats.write_failures == 0

    timed = DecisionLog(tmp_path / "timed", rotate_s=0.2)
    timed.record(txn(1, t0), result(1))
    assert timed.flush()
    time.sleep(0.8)  # the idle writer closes the old file; the next record opens a new one
    timed.record(txn(2, t0), result(2))
    assert timed.flush()
    timed.close()
    assert len(files(tmp_path / "timed")) == 2


def test_a_full_disk_loses_records_counted_and_logged_without_blocking(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    def full(_path: Path) -> IO[bytes]:
        return open("/dev/full", "ab")  # every write fails with ENOSPC

    lost: list[int] = []
    returned: list[bool] = []
    dlog = DecisionLog(tmp_path, opener=full, on_loss=lambda reason, n: lost.append(n), log_interval_s=60)
    with caplog.at_level("ERROR", logger="risk_engine.decision_log"):
        # Each record fails at once and says so: the calls go on (a hang would leave the thread alive).
        writer = threading.Thread(
            target=lambda: returned.extend(dlog.record(txn(i, now_ms()), result(i)) for i in range(50))
        )
        writer.start()
        writer.join(30)
        assert not writer.is_alive() and returned == [False] * 50
    dlog.close()
    assert dlog.stats.write_failures == 50 and dlog.stats.written == 0 and sum(lost) == 50
    errors = [r.getMessage() for r in caplog.records]
    assert len(errors) == 1 and "No space left on device" in errors[0]  # rate-limited: one line


def test_a_record_is_in_the_file_before_record_returns_even_on_a_stalled_disk(tmp_path: Path) -> None:
    """A call is answered only once its decision is written: a hung disk holds the call, it never drops the record."""
    release = threading.Event()

    def stalled(path: Path) -> IO[bytes]:
        release.wait(10)  # a disk that hangs
        return open(path, "ab", buffering=0)

    dlog = DecisionLog(tmp_path, opener=stalled)
    returned = threading.Event()
    writer = threading.Thread(target=lambda: (dlog.record(txn(1, now_ms()), result(1)), returned.set()))
    writer.start()
    assert not returned.wait(0.3)  # still waiting for the disk: not answered unrecorded
    release.set()
    assert returned.wait(5)
    writer.join()
    records = list(read_records(tmp_path))  # in the file as soon as record returned, before close
    assert [r["transaction"]["transaction_id"] for r in records] == ["t-1"]
    assert dlog.stats.written == 1 and dlog.stats.write_failures == 0
    dlog.close()


def test_files_and_folder_are_private_to_the_server(tmp_path: Path) -> None:
    folder = tmp_path / "decisions"
    dlog = DecisionLog(folder)
    dlog.record(txn(1, now_ms()), result(1))
    dlog.close()
    assert folder.stat().st_mode & 0o777 == 0o700
    assert [f.stat().st_mode & 0o777 for f in files(folder)] == [0o600]


def test_a_broken_log_folder_never_fails_score_and_is_counted(
    logged: tuple[Running, risk_pb2_grpc.RiskEngineStub],
) -> None:
    running, stub = logged
    dlog = running.decisions
    assert dlog is not None
    dlog.max_file_bytes = 1  # every batch opens a new file
    assert not stub.Score(request(), timeout=2).degraded
    assert dlog.flush()
    shutil.rmtree(dlog.folder)
    dlog.folder.write_text("not a folder any more")  # the file system under the log is gone
    for _ in range(10):
        resp = stub.Score(request(), timeout=2)
        assert resp.decision != risk_pb2.DECISION_UNSPECIFIED and not resp.degraded
        dlog.flush()
    assert dlog.flush()
    assert dlog.stats.write_failures == 10
    text = metrics_text(running)
    assert metric(text, 'risk_decision_log_records_total{result="write_error"}') == 10
    dlog.folder.unlink()
    dlog.folder.mkdir()  # the disk comes back: writing resumes on its own
    stub.Score(request(), timeout=2)
    assert dlog.flush() and dlog.stats.written == 2


def write_log(folder: Path, base_ms: int) -> None:
    dlog = DecisionLog(folder)
    for i in range(10):
        dlog.record(txn(i, base_ms + i * 3_600_000), result(i, score=i / 10))
    dlog.record(txn(3, base_ms + 3 * 3_600_000), result(3, score=0.99))  # scored again later: the last wins
    assert dlog.flush()
    dlog.close()


def test_export_filters_by_event_time_and_joins_labels(tmp_path: Path) -> None:
    base = parse_time("2026-03-01T00:00:00Z")
    write_log(tmp_path / "log", base)
    with (tmp_path / "log" / "decisions-99999999T000000.000Z-000001.jsonl").open("ab") as f:
        f.write(b'{"v": 1, "transaction": {"transaction_id": "torn"')  # a torn last line of a crash
    feedback = tmp_path / "feedback.csv"
    feedback.write_text("transaction_id,label,label_time\nt-3,1,2026-03-20T00:00:00Z\nt-4,0,\nt-99,1,\n")
    out = tmp_path / "train.parquet"
    code = main(
        [
            "decisions",
            "export",
            "--log",
            str(tmp_path / "log"),
            "--since",
            "2026-03-01T02:00:00Z",
            "--until",
            "2026-03-01T06:00:00Z",
            "--feedback",
            str(feedback),
            "--out",
            str(out),
        ]
    )
    assert code == 0
    table = pq.read_table(out)
    rows = table.to_pylist()
    assert [r["transaction_id"] for r in rows] == ["t-2", "t-3", "t-4", "t-5"]  # [since, until)
    by_id = {r["transaction_id"]: r for r in rows}
    assert by_id["t-3"]["label"] == 1.0 and by_id["t-3"]["score"] == 0.99  # the later record
    assert by_id["t-3"]["label_time_ms"] == parse_time("2026-03-20T00:00:00Z")
    assert by_id["t-4"]["label"] == 0.0 and by_id["t-2"]["label"] is None
    assert by_id["t-2"]["amount"] == 12.0 and by_id["t-2"]["card_count_1d"] is None  # features as columns
    assert by_id["t-2"]["rules_fired"] == ["rule_one"] and by_id["t-2"]["shadow_rules_fired"] == ["shadow_rule"]
    assert json.loads(by_id["t-2"]["attributes"]) == {"mcc": "5812"}
    assert by_id["t-2"]["ruleset_digest"] == "0123456789abcdef"
    assert json.loads(by_id["t-2"]["enrichment"]) == {
        "amount_base": "12.00",
        "base_currency": "EUR",
        "ip_country": "DE",
    }
    # Training-ready: the project's own reader takes it with the native mapping, labels included.
    data = read_dataset(out, PRESETS["native"])
    assert [t.transaction_id for t in data.transactions] == ["t-2", "t-3", "t-4", "t-5"]
    assert data.labels is not None and list(data.labels[1:3]) == [1.0, 0.0]

    summary = export(tmp_path / "log", tmp_path / "all.parquet")
    assert summary.rows == 10 and summary.duplicates == 1 and summary.bad_lines == 1 and summary.labeled == 0


def test_export_refuses_bad_input_with_a_clear_message(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "log").mkdir()
    assert main(["decisions", "export", "--log", str(tmp_path / "log"), "--since", "yesterday", "--out", "x"]) == 2
    assert "not a date or time: 'yesterday'" in capsys.readouterr().err
    bad = tmp_path / "fb.csv"
    bad.write_text("id,label\n1,1\n")
    args = ["decisions", "export", "--log", str(tmp_path / "log"), "--feedback", str(bad), "--out", "x"]
    assert main(args) == 2
    assert "no 'transaction_id' column" in capsys.readouterr().err


def test_a_record_keeps_pseudonyms_networks_and_only_the_kept_attributes() -> None:
    from engine.decision_log import RecordPolicy, to_record
    from engine.privacy import Pseudonyms
    from engine.transaction import Action, ScoreResult, Transaction

    keys = Pseudonyms(b"k" * 32)
    txn = Transaction(
        "t-1",
        1_700_000_000_000,
        100,
        "EUR",
        user_id="alice@example.com",
        card_id="tok 1",
        device_id="dev-1",
        ip="85.214.132.117",
        merchant_id="ACME Coffee",
        attributes=(("device_os", "ios"), ("note", "4111 1111 1111 1111"), ("email", "a@b.c")),
    )
    result = ScoreResult("t-1", Action.ALLOW, 0.1, (), "v", "m", False)
    policy = RecordPolicy(keys, lambda: frozenset({"device_os", "note"}))
    record = to_record(1.0, txn, result, policy, dry_run=True)
    t = record["transaction"]
    assert (t["user_id"], t["card_id"], t["device_id"]) == (
        keys.of("alice@example.com"),
        keys.of("tok 1"),
        keys.of("dev-1"),
    )
    assert t["ip"] == "85.214.132.0" and t["merchant_id"] == "ACME Coffee"
    assert t["attributes"] == {"device_os": "ios", "note": keys.of("4111111111111111")}  # email not kept
    assert record["ids"] == "pseudonyms" and record["dry_run"] is True
    clear = to_record(1.0, txn, result, RecordPolicy(None, None))
    assert clear["transaction"]["card_id"] == "tok 1" and clear["transaction"]["ip"] == "85.214.132.117"
    assert clear["transaction"]["attributes"]["note"] == "masked"  # never a card number, even in clear mode
    assert "ids" not in clear and "dry_run" not in clear


def test_a_rule_message_that_names_an_id_says_its_pseudonym_in_the_log() -> None:
    from engine.decision_log import RecordPolicy, to_record
    from engine.privacy import Pseudonyms

    keys = Pseudonyms(b"k" * 32)
    txn = Transaction("t-1", 1_700_000_000_000, 100, "EUR", card_id="tok 77", ip="85.214.132.117")
    said = Reason("R1", ReasonSource.RULE, "card tok 77 from 85.214.132.117", Action.REVIEW, rule_id="r1")
    result = ScoreResult("t-1", Action.REVIEW, 0.1, (said,), "v", "m", False)
    record = to_record(1.0, txn, result, RecordPolicy(keys, None))
    assert record["reasons"][0]["message"] == f"card {keys.of('tok 77')} from 85.214.132.0"
    assert "tok 77" not in json.dumps(record)
