"""Training-serving parity: what the live server logs equals what the training replay computes.

A model trained by the project's own command reads the shipped rule set's
windows, its label windows and its derived features. One stream of labeled
transactions is then sent to a live gRPC server on a real Redis (Score for
each transaction, Feedback for each label when it becomes known), and fed to
the training replay (the same transactions, the same label times). The
features in the server's decision log equal the replay's, and the served
score equals the offline score of the same model.
"""

from __future__ import annotations

import json
import math
from dataclasses import replace
from pathlib import Path

import grpc
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml

from engine.decision_log import files as decision_files
from engine.model.predictor import load_model
from engine.offline.datasets import PRESETS, read_dataset
from engine.offline.replay import label_events, replay
from engine.offline.train import train
from engine.rules import load_ruleset
from engine.service.convert import from_feedback, from_transaction
from engine.service.pb import risk_pb2_grpc
from engine.service.server import start
from engine.transaction import Feedback
from tests.support import RULES
from tests.support.requests import now_ms
from tests.support.served import TEST_TRAIN_CONFIG, make_config

pytestmark = [pytest.mark.server, pytest.mark.slow]

LABEL_AFTER_MS = 20 * 60_000  # in this stream, a fraud becomes known 20 minutes after it happened


def test_live_server_logs_the_features_training_computes(
    tmp_path: Path, synthetic_data: Path, redis_url: tuple[str, str]
) -> None:
    ruleset = load_ruleset(RULES)
    label_windows = sorted(s.name for s in ruleset.windows.specs if s.label is not None)
    derived = [name for name, _, _ in ruleset.features]
    assert label_windows, "the shipped rules have label windows"
    config = yaml.safe_load(TEST_TRAIN_CONFIG)
    config["features"] = [*config["features"], *label_windows, *derived]
    config_path = tmp_path / "train.yaml"
    config_path.write_text(yaml.safe_dump(config))
    registry = tmp_path / "models"
    train(synthetic_data, RULES, config_path, registry, promote=True, quiet=True)
    model = load_model(registry, ruleset)
    assert set(model.features) >= {*label_windows, *derived}

    # The stream: the 20 hours of the synthetic data with the most frauds, moved to end a minute
    # ago; frauds become known 20 minutes after they happen (a label time column the replay reads).
    data = read_dataset(synthetic_data, PRESETS["native"])
    assert data.labels is not None
    times = np.array([t.event_time_ms for t in data.transactions], dtype=np.int64)
    fraud_times = times[data.labels > 0.5]
    span = 20 * 3_600_000
    ends = fraud_times + 3_600_000
    best_end = int(ends[np.argmax([((fraud_times > e - span) & (fraud_times <= e)).sum() for e in ends])])
    window = (times > best_end - span) & (times <= best_end)
    first, stop = int(np.argmax(window)), int(len(window) - np.argmax(window[::-1]))
    shift = now_ms() - 60_000 - int(times[stop - 1])
    stream = [replace(t, event_time_ms=t.event_time_ms + shift) for t in data.transactions[first:stop]]
    labels = data.labels[first:stop]
    label_times = np.where(
        labels > 0.5, np.array([t.event_time_ms + LABEL_AFTER_MS for t in stream], dtype=np.int64), -1
    )
    last = stream[-1].event_time_ms
    label_times = np.where(label_times <= last, label_times, -1)
    frauds = labels > 0.5
    fed = frauds & (label_times >= 0)
    assert fed.sum() >= 5, "the stream has frauds whose labels become known within it"

    # Offline: the training replay, with the labels of the file (label time column).
    table = pa.Table.from_pylist(
        [
            {
                "transaction_id": t.transaction_id,
                "event_time_ms": t.event_time_ms,
                "amount_minor": t.amount_minor,
                "currency": t.currency,
                "user_id": t.user_id,
                "card_id": t.card_id,
                "device_id": t.device_id,
                "ip": t.ip,
                "country": t.country,
                "merchant_id": t.merchant_id,
                "merchant_category": t.merchant_category,
                "channel": t.channel.value,
                # only labels known within the stream: the rest would not have reached the server yet
                "label": float(labels[i]) if fed[i] else None,
                "label_time_ms": int(label_times[i]) if fed[i] else None,
            }
            for i, t in enumerate(stream)
        ]
    )
    path = tmp_path / "stream.parquet"
    pq.write_table(table, path)
    mapping = replace(PRESETS["native"], label_time="label_time_ms")
    offline_data = read_dataset(path, mapping)
    events = label_events(offline_data.transactions, offline_data.labels, offline_data.label_times_ms, ruleset)
    assert len(events) == int(fed.sum()) and all(outcome == "fraud" for _, _, outcome in events)
    offline = {
        offline_data.transactions[i].transaction_id: s.fields
        for i, s in replay(offline_data.transactions, ruleset, None, labels=events)
    }
    names = list(model.features)
    ids = list(offline)
    offline_scores = dict(zip(ids, model.predict_many([offline[i] for i in ids]), strict=True))

    # Live: a real server on a real Redis, labels sent through the Feedback rpc as they become known.
    log_dir = tmp_path / "decisions"
    running = start(make_config(registry, redis_url, decision_log=log_dir))
    try:
        channel = grpc.insecure_channel(f"127.0.0.1:{running.port}")
        stub = risk_pb2_grpc.RiskEngineStub(channel)
        pending = sorted(events)
        served = {}
        for t in offline_data.transactions:
            while pending and pending[0][0] <= t.event_time_ms:
                known, index, outcome = pending.pop(0)
                stub.Feedback(from_feedback(Feedback(offline_data.transactions[index], outcome, known)), timeout=5)
            served[t.transaction_id] = stub.Score(from_transaction(t), timeout=5)
        channel.close()
        assert running.decisions is not None and running.decisions.flush(10.0)
    finally:
        running.stop(0.5)

    logged = {}
    for file in decision_files(log_dir):
        for line in file.read_text().splitlines():
            record = json.loads(line)
            logged[record["transaction"]["transaction_id"]] = record
    assert set(logged) == set(offline) == set(served)
    for txid in ids:
        record = logged[txid]
        assert record["model_version"] == model.version
        for name in names:
            want = float(offline[txid][name])
            got = record["features"][name]
            assert (got is None and math.isnan(want)) or got == want, (txid, name, got, want)
        assert served[txid].score == offline_scores[txid] == record["score"], txid
    # The stream exercises what parity is about: known frauds, derived ratios, shared entities.
    assert max(logged[t]["features"][label_windows[0]] for t in ids) >= 1
    assert sum(1 for t in ids if logged[t]["decision"] != "allow") > 0
