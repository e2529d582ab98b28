"""Label feedback and label windows, derived features, and replay with delayed labels.

Real stores (in-process and a real Redis), the real pipeline, a real gRPC
server over a socket, and the import command against it.
"""

from __future__ import annotations

import uuid
from dataclasses import replace
from pathlib import Path

import grpc
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from google.protobuf.timestamp_pb2 import Timestamp

from engine.cli import main as cli_main
from engine.offline.datasets import PRESETS, table_to_dataset
from engine.offline.replay import label_events, replay
from engine.pipeline import IdempotencyConflict, InvalidTransaction, Pipeline
from engine.rules.errors import RuleSetInvalid
from engine.rules.loader import load_ruleset
from engine.service.pb import risk_pb2, risk_pb2_grpc
from engine.service.server import Running
from engine.transaction import Action, Channel, Feedback, Transaction
from engine.windows.memory import MemoryStore
from engine.windows.redis_cluster import RedisClusterStore
from engine.windows.store import WindowStore
from tests.support.cluster import LocalCluster
from tests.support.requests import now_ms, request

DAY = 86_400_000
T0 = 1_767_225_600_000  # 2026-01-01T00:00:00Z

ENGINE = """\
version: "fb-1"
data_mapping: native
label_delay: 2d
currency: {base: EUR, rates: {USD: 0.92}}
windows:
  - {name: merchant_count_7d, entity: merchant_id, aggregate: count, duration: 7d}
  - {name: merchant_count_7d_delayed, entity: merchant_id, aggregate: count, duration: 7d, delay: 2d}
  - {name: merchant_frauds_known_7d, entity: merchant_id, source: feedback, label: fraud, aggregate: count,
     duration: 7d}
  - {name: merchant_fraud_amount_known_7d, entity: merchant_id, source: feedback, label: fraud, aggregate: sum,
     field: amount, duration: 7d}
  - {name: merchant_labels_known_7d, entity: merchant_id, source: feedback, aggregate: count, duration: 7d}
  - {name: card_frauds_known_1d, entity: card_id, source: feedback, label: fraud, aggregate: count, duration: 1d}
features:
  - {name: merchant_fraud_ratio_7d, value: "merchant_frauds_known_7d / merchant_count_7d_delayed"}
  - {name: merchant_risky, value: "if_missing(merchant_fraud_ratio_7d, 0) >= 0.5"}
rules:
  - id: risky_merchant
    condition: "merchant_risky == 1 and amount > 10"
    action: review
    reason_code: MERCHANT_KNOWN_FRAUD
    message: half or more of the merchant's recent labeled transactions were fraud
"""


def rules_dir(tmp_path: Path, text: str = ENGINE) -> Path:
    folder = tmp_path / "rules"
    folder.mkdir(exist_ok=True)
    (folder / "engine.yaml").write_text(text)
    return folder


def txn(i: int, t: int, merchant: str = "m1", card: str = "c1", amount: int = 5_000) -> Transaction:
    return Transaction(
        transaction_id=f"tx-{i}",
        event_time_ms=t,
        amount_minor=amount,
        currency="EUR",
        user_id="u1",
        card_id=card,
        device_id="",
        ip="",
        country="",
        merchant_id=merchant,
        channel=Channel.WEB,
    )


def pipeline(folder: Path, store: WindowStore) -> Pipeline:
    return Pipeline(load_ruleset(folder), None, store, check_clock=False, record=True)


# --------------------------------------------------------------------------- the rule language


def test_label_windows_and_features_load(tmp_path: Path) -> None:
    ruleset = load_ruleset(rules_dir(tmp_path))
    assert ruleset.windows.labels == {"fraud", "genuine"}  # the 'any' window needs both
    assert [name for name, _, _ in ruleset.features] == ["merchant_fraud_ratio_7d", "merchant_risky"]
    assert ruleset.catalog["merchant_fraud_ratio_7d"] == "number"
    assert ruleset.data_mapping == ("native",)
    assert ruleset.label_delay_ms == 2 * DAY
    # A rule on a feature derived from windows is skipped when the windows are missing.
    assert ruleset.rules[0].uses_windows


@pytest.mark.parametrize(
    ("window_or_feature", "line", "message"),
    [
        ("  - {name: w, entity: card_id, aggregate: count, duration: 1d, label: fraud}", 3, "'label' needs"),
        ("  - {name: w, entity: card_id, aggregate: count, duration: 1d, source: labels}", 3, "'source' must be"),
        (
            "  - {name: w, entity: card_id, aggregate: count, duration: 1d, source: feedback, label: chargeback}",
            3,
            "'label' must be one of fraud, genuine, any",
        ),
    ],
)
def test_label_window_errors_have_lines(tmp_path: Path, window_or_feature: str, line: int, message: str) -> None:
    text = f'version: "x"\nwindows:\n{window_or_feature}\n'
    with pytest.raises(RuleSetInvalid) as err:
        load_ruleset(rules_dir(tmp_path, text))
    assert len(err.value.errors) == 1
    e = err.value.errors[0]
    assert (e.line, message in e.message) == (line, True), str(e)


@pytest.mark.parametrize(
    ("value", "message", "column"),
    [
        ('"card_count_1d / card_cnt_7d"', "card_cnt_7d", 37),  # unknown name, with a hint
        ('"channel"', "must be a number", 29),
        ('"score * 2"', "may not read the model score", 29),
        ('"later + 1"', "later", 29),  # features see only the ones defined before them
    ],
)
def test_feature_errors_have_line_and_column(tmp_path: Path, value: str, message: str, column: int) -> None:
    text = (
        'version: "x"\n'
        "windows:\n"
        "  - {name: card_count_1d, entity: card_id, aggregate: count, duration: 1d}\n"
        "features:\n"
        f"  - {{name: f1, value: {value}}}\n"
        '  - {name: later, value: "1"}\n'
    )
    with pytest.raises(RuleSetInvalid) as err:
        load_ruleset(rules_dir(tmp_path, text))
    e = err.value.errors[0]
    assert e.line == 5 and message in e.message + e.hint, str(e)
    assert e.column >= column - 8  # points into the expression, not at the line's start


# --------------------------------------------------------------------------- feedback through the pipeline


def test_feedback_counts_from_the_time_it_is_known(tmp_path: Path, store: WindowStore) -> None:
    p = pipeline(rules_dir(tmp_path), store)
    for i in range(4):
        p.score(txn(i, T0 + i * 1000))
    # tx-0 and tx-1 are fraud, learned on day 3; tx-2 genuine.
    known = T0 + 3 * DAY
    for i, outcome in ((0, "fraud"), (1, "fraud"), (2, "genuine")):
        result = p.feedback(Feedback(txn(i, T0 + i * 1000), outcome, known))
        assert not result.duplicate and result.series_updated == (4 if outcome == "fraud" else 1)

    before = p.score(txn(10, known - 1)).fields
    assert before["merchant_frauds_known_7d"] == 0 and before["merchant_labels_known_7d"] == 0
    at = p.score(txn(11, known)).fields
    assert at["merchant_frauds_known_7d"] == 2
    assert at["merchant_fraud_amount_known_7d"] == pytest.approx(100.0)  # 2 x 50.00 EUR
    assert at["merchant_labels_known_7d"] == 3
    assert at["card_frauds_known_1d"] == 2
    # 4 transactions of day 0 lie in the window delayed by 2 days (t - 9d, t - 2d].
    assert at["merchant_count_7d_delayed"] == 4
    assert at["merchant_fraud_ratio_7d"] == pytest.approx(0.5)
    scored = p.score(txn(12, known + 1))
    assert scored.result.decision == Action.REVIEW
    assert [r.code for r in scored.result.reasons] == ["MERCHANT_KNOWN_FRAUD"]
    # Another merchant sees nothing; the label leaves the 1-day card window after a day.
    assert p.score(txn(13, known + 2, merchant="m2", card="c9")).fields["merchant_frauds_known_7d"] == 0
    later = p.score(txn(14, known + DAY + 1, merchant="m2")).fields
    assert later["card_frauds_known_1d"] == 0
    assert p.score(txn(15, known + 7 * DAY + 1)).fields["merchant_frauds_known_7d"] == 0


def test_feedback_is_idempotent_and_refuses_a_different_outcome(tmp_path: Path, store: WindowStore) -> None:
    p = pipeline(rules_dir(tmp_path), store)
    t = txn(1, T0)
    p.score(t)
    fb = Feedback(t, "fraud", T0 + DAY)
    assert not p.feedback(fb).duplicate
    again = p.feedback(fb)
    assert again.duplicate and again.series_updated == 4
    with pytest.raises(IdempotencyConflict):
        p.feedback(replace(fb, outcome="genuine"))
    # A retry whose known_at differs (e.g. left to the server's clock) is the same feedback.
    assert p.feedback(replace(fb, known_at_ms=T0 + 2 * DAY)).known_at_ms == T0 + DAY
    assert p.score(txn(2, T0 + DAY + 5)).fields["merchant_frauds_known_7d"] == 1  # counted once


def test_feedback_without_records_still_counts_once(tmp_path: Path) -> None:
    """Replay keeps no records: the label event's id keeps a repeat from counting twice."""
    p = Pipeline(load_ruleset(rules_dir(tmp_path)), None, MemoryStore(remember_responses=False), check_clock=False)
    t = txn(1, T0)
    for _ in range(3):
        p.feedback(Feedback(t, "fraud", T0 + DAY))
    assert p.score(txn(2, T0 + DAY)).fields["merchant_frauds_known_7d"] == 1


@pytest.mark.parametrize(
    ("fb", "field"),
    [
        (Feedback(txn(1, T0), "chargeback", T0), "outcome"),
        (Feedback(txn(1, T0), "fraud", T0 - 1), "known_at"),
        (Feedback(replace(txn(1, T0), currency="XXX"), "fraud", T0), "currency"),
        (Feedback(replace(txn(1, T0), transaction_id=""), "fraud", T0), "transaction_id"),
    ],
)
def test_bad_feedback_names_the_field(tmp_path: Path, fb: Feedback, field: str) -> None:
    p = pipeline(rules_dir(tmp_path), MemoryStore())
    with pytest.raises(InvalidTransaction) as err:
        p.feedback(fb)
    assert err.value.field == field


def test_feedback_from_the_future_is_refused_live(tmp_path: Path) -> None:
    p = Pipeline(load_ruleset(rules_dir(tmp_path)), None, MemoryStore(), clock=lambda: T0 / 1000)
    with pytest.raises(InvalidTransaction) as err:
        p.feedback(Feedback(txn(1, T0 - DAY), "fraud", T0 + 3_600_000))
    assert err.value.field == "known_at"
    p.feedback(Feedback(txn(1, T0 - DAY), "fraud", T0))  # now is fine


# --------------------------------------------------------------------------- replay with delayed labels


def _labeled_table(rows: list[tuple[int, int, str, str, float]]) -> pa.Table:
    return pa.Table.from_pylist(
        [
            {
                "transaction_id": f"tx-{i}",
                "event_time_ms": t,
                "amount_minor": 5_000,
                "currency": "EUR",
                "user_id": "u1",
                "card_id": card,
                "device_id": "",
                "ip": "",
                "country": "",
                "merchant_id": merchant,
                "merchant_category": "",
                "channel": "web",
                "label": label,
            }
            for i, t, card, merchant, label in rows
        ]
    )


def test_replay_feeds_labels_when_they_become_known_and_matches_live(tmp_path: Path) -> None:
    folder = rules_dir(tmp_path)
    ruleset = load_ruleset(folder)
    rows = [
        (0, T0, "c1", "m1", 1.0),
        (1, T0 + 1000, "c2", "m1", 1.0),
        (2, T0 + 2000, "c3", "m1", 0.0),
        (3, T0 + 3000, "c4", "m1", float("nan")),  # unlabeled: no feedback
        (4, T0 + 2 * DAY - 1, "c5", "m1", 0.0),  # just before tx-0's label is known (label_delay 2d)
        (5, T0 + 2 * DAY, "c6", "m1", 0.0),  # exactly when it is known: counted
        (6, T0 + 2 * DAY + 1000, "c7", "m1", 0.0),
        (7, T0 + 3 * DAY, "c8", "m1", 0.0),
    ]
    dataset = table_to_dataset(_labeled_table(rows), PRESETS["native"])
    events = label_events(dataset.transactions, dataset.labels, dataset.label_times_ms, ruleset)
    assert [(k - T0, i, o) for k, i, o in events][:3] == [
        (2 * DAY, 0, "fraud"),
        (2 * DAY + 1000, 1, "fraud"),
        (2 * DAY + 2000, 2, "genuine"),
    ]
    assert len(events) == 7

    offline = {i: s.fields for i, s in replay(dataset.transactions, ruleset, None, labels=events, batch_size=3)}
    assert offline[4]["merchant_frauds_known_7d"] == 0
    assert offline[5]["merchant_frauds_known_7d"] == 1
    assert offline[6]["merchant_frauds_known_7d"] == 2 and offline[6]["merchant_labels_known_7d"] == 2
    assert offline[7]["merchant_labels_known_7d"] == 3

    # The same stream through a live pipeline (labels sent as they become known) gives the same features.
    live = Pipeline(ruleset, None, MemoryStore(), check_clock=False)
    pending = list(events)
    for i, t in enumerate(dataset.transactions):
        while pending and pending[0][0] <= t.event_time_ms:
            known, index, outcome = pending.pop(0)
            live.feedback(Feedback(dataset.transactions[index], outcome, known))
        fields = live.score(t).fields
        for name in ruleset.numeric_features:
            assert fields[name] == pytest.approx(offline[i][name], nan_ok=True), (i, name)


def test_label_time_column_is_used_when_present(tmp_path: Path) -> None:
    ruleset = load_ruleset(rules_dir(tmp_path))
    table = _labeled_table([(0, T0, "c1", "m1", 1.0), (1, T0 + 10, "c1", "m1", 1.0)])
    table = table.append_column("label_time_ms", pa.array([T0 + 5 * DAY, None], pa.int64()))
    mapping = replace(PRESETS["native"], label_time="label_time_ms")
    dataset = table_to_dataset(table, mapping)
    events = label_events(dataset.transactions, dataset.labels, dataset.label_times_ms, ruleset)
    # Row 1 has no label time: the rule set's label_delay (2d) applies.
    assert [(k - T0, i) for k, i, _ in events] == [(2 * DAY + 10, 1), (5 * DAY, 0)]


# --------------------------------------------------------------------------- the rpc and the import command


def _feedback_request(
    transaction: risk_pb2.Transaction, outcome: int, known_ms: int | None = None
) -> risk_pb2.FeedbackRequest:
    req = risk_pb2.FeedbackRequest(transaction=transaction, outcome=outcome)
    if known_ms is not None:
        req.known_at.CopyFrom(Timestamp(seconds=known_ms // 1000, nanos=(known_ms % 1000) * 1_000_000))
    return req


def test_feedback_rpc_over_a_socket(stub: risk_pb2_grpc.RiskEngineStub) -> None:
    """The shipped rules count a merchant's known frauds; a real server and a real Redis."""
    merchant = f"m-fb-{uuid.uuid4().hex[:8]}"
    first = request(merchant_id=merchant, event_time_ms=now_ms() - 60_000).transaction
    stub.Score(risk_pb2.ScoreRequest(transaction=first))
    answer = stub.Feedback(_feedback_request(first, risk_pb2.OUTCOME_FRAUD))
    assert (answer.transaction_id, answer.duplicate) == (first.transaction_id, False)
    assert answer.series_updated >= 1 and answer.ruleset_version
    # A retry (known_at again left to the server's clock) counts nothing twice.
    assert stub.Feedback(_feedback_request(first, risk_pb2.OUTCOME_FRAUD)).duplicate
    later = stub.Score(request(merchant_id=merchant, card_id="c-other"))
    assert later.features["merchant_frauds_known_7d"] == 1

    with pytest.raises(grpc.RpcError) as err:
        stub.Feedback(_feedback_request(first, risk_pb2.OUTCOME_GENUINE))
    assert err.value.code() == grpc.StatusCode.ALREADY_EXISTS
    assert "transaction.transaction_id" in err.value.details()
    assert stub.Score(request(merchant_id=merchant)).features["merchant_frauds_known_7d"] == 1


def test_feedback_retry_is_a_duplicate(stub: risk_pb2_grpc.RiskEngineStub) -> None:
    t = request(event_time_ms=now_ms() - 3_600_000).transaction
    known = now_ms() - 1000
    assert not stub.Feedback(_feedback_request(t, risk_pb2.OUTCOME_FRAUD, known)).duplicate
    assert stub.Feedback(_feedback_request(t, risk_pb2.OUTCOME_FRAUD, known)).duplicate


@pytest.mark.parametrize(
    ("build", "details"),
    [
        (lambda t: risk_pb2.FeedbackRequest(outcome=risk_pb2.OUTCOME_FRAUD), "transaction: is required"),
        (lambda t: _feedback_request(t, risk_pb2.OUTCOME_UNSPECIFIED), "outcome: must be OUTCOME_FRAUD"),
        (lambda t: _feedback_request(t, 7), "outcome:"),
        (lambda t: _feedback_request(t, risk_pb2.OUTCOME_FRAUD, t.event_time.seconds * 1000 - 1000), "known_at:"),
        (lambda t: _feedback_request(t, risk_pb2.OUTCOME_FRAUD, now_ms() + 3_600_000), "known_at: lies more"),
        (
            lambda t: _feedback_request(risk_pb2.Transaction(transaction_id="x", currency="EUR"), 1),
            "transaction.event_time: is required",
        ),
    ],
)
def test_bad_feedback_rpc_is_invalid_argument(stub: risk_pb2_grpc.RiskEngineStub, build, details: str) -> None:  # type: ignore[no-untyped-def]
    t = request(event_time_ms=now_ms() - 60_000).transaction
    with pytest.raises(grpc.RpcError) as err:
        stub.Feedback(build(t))
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert details in err.value.details()


def test_garbage_feedback_bytes_are_invalid_argument(server: Running) -> None:
    channel = grpc.insecure_channel(f"127.0.0.1:{server.port}")
    call = channel.unary_unary("/risk.v1.RiskEngine/Feedback")
    with pytest.raises(grpc.RpcError) as err:
        call(b"\xff\xff\xff", timeout=5)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "FeedbackRequest" in err.value.details()
    channel.close()


def test_feedback_import_command(server: Running, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    merchant = f"m-imp-{uuid.uuid4().hex[:8]}"
    start_ms = now_ms() - 5 * DAY
    rows = [(i, start_ms + i * 1000, f"c{i}", merchant, label) for i, label in enumerate([1.0, 1.0, 0.0, float("nan")])]
    table = _labeled_table(rows)
    table = table.set_column(0, "transaction_id", pa.array([f"imp-{merchant}-{i}" for i in range(4)]))
    path = tmp_path / "labels.parquet"
    pq.write_table(table, path)
    argv = ["feedback", "import", "--data", str(path), "--target", f"127.0.0.1:{server.port}", "--label-delay", "2d"]
    assert cli_main(argv) == 0
    out = capsys.readouterr().out
    assert "sent 3 labels" in out and "3 recorded" in out and "1 unlabeled" in out
    assert cli_main(argv) == 0  # a second import counts nothing twice
    assert "3 already recorded" in capsys.readouterr().out
    channel = grpc.insecure_channel(f"127.0.0.1:{server.port}")
    stub = risk_pb2_grpc.RiskEngineStub(channel)
    assert stub.Score(request(merchant_id=merchant)).features["merchant_frauds_known_7d"] == 2
    channel.close()


def test_feedback_import_of_a_file_without_labels_fails_clearly(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "nolabels.parquet"
    pq.write_table(_labeled_table([(0, T0, "c1", "m1", 1.0)]).drop(["label"]), path)
    assert cli_main(["feedback", "import", "--data", str(path), "--target", "127.0.0.1:1"]) == 2
    assert "label" in capsys.readouterr().err


def test_feedback_on_a_redis_cluster(tmp_path: Path, redis_cluster: LocalCluster) -> None:
    """Label windows on a real local Redis Cluster: the same counts, once, as in the in-process store."""
    store = RedisClusterStore(redis_cluster.url, prefix=f"fb-{uuid.uuid4().hex[:10]}", budget_s=2.0)
    try:
        cluster, memory = pipeline(rules_dir(tmp_path), store), pipeline(rules_dir(tmp_path), MemoryStore())
        for p in (cluster, memory):
            for i in range(3):
                p.score(txn(i, T0 + i * 1000, card=f"c{i}"))
            for i in (0, 1):
                assert not p.feedback(Feedback(txn(i, T0 + i * 1000, card=f"c{i}"), "fraud", T0 + DAY)).duplicate
            assert p.feedback(Feedback(txn(0, T0, card="c0"), "fraud", T0 + DAY)).duplicate
        for i, t in enumerate((T0 + DAY - 1, T0 + DAY, T0 + 2 * DAY)):
            got = cluster.score(txn(10 + i, t, card="c0")).fields
            want = memory.score(txn(10 + i, t, card="c0")).fields
            for name in ("merchant_frauds_known_7d", "merchant_labels_known_7d", "card_frauds_known_1d"):
                assert got[name] == want[name], (t, name)
        assert got["merchant_frauds_known_7d"] == 2 and got["card_frauds_known_1d"] == 0
    finally:
        store.close()


def test_feedback_calls_have_their_own_request_metrics(server: Running, stub: risk_pb2_grpc.RiskEngineStub) -> None:
    import urllib.request

    t = request(event_time_ms=now_ms() - 60_000).transaction
    stub.Feedback(_feedback_request(t, risk_pb2.OUTCOME_FRAUD))
    with pytest.raises(grpc.RpcError):
        stub.Feedback(_feedback_request(t, risk_pb2.OUTCOME_UNSPECIFIED))
    with urllib.request.urlopen(f"http://127.0.0.1:{server.metrics_port}/metrics", timeout=5) as resp:
        lines = resp.read().decode().splitlines()

    def value(name: str) -> float:
        return next(float(line.rsplit(" ", 1)[1]) for line in lines if line.startswith(name + " "))

    assert value('risk_requests_total{code="OK",method="Feedback"}') == 1
    assert value('risk_requests_total{code="INVALID_ARGUMENT",method="Feedback"}') == 1
    assert value('risk_request_duration_seconds_count{method="Feedback"}') == 2
    assert not any(line.startswith('risk_requests_total{code="OK",method="Score"} ') for line in lines)
