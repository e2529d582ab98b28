"""One stream, scored live (gRPC, Redis) and replayed offline (in-process store): same features and scores."""

from __future__ import annotations

import math
from dataclasses import replace

from engine.offline.datasets import PRESETS, read_dataset
from engine.offline.replay import replay
from engine.rules import load_ruleset
from engine.service.convert import from_transaction
from engine.service.pb import risk_pb2_grpc
from engine.service.server import Running
from tests.support import RULES
from tests.support.requests import now_ms


def test_live_and_replay_agree(stub: risk_pb2_grpc.RiskEngineStub, server: Running, synthetic_data) -> None:  # type: ignore[no-untyped-def]
    data = read_dataset(synthetic_data, PRESETS["native"]).transactions[:400]
    # Move the stream to the present (the server checks event time against its clock), same spacing.
    shift = now_ms() - 3_600_000 - data[0].event_time_ms
    span = data[-1].event_time_ms - data[0].event_time_ms
    assert span < 3_000_000_000
    stream = [replace(t, event_time_ms=t.event_time_ms + shift - span) for t in data]
    live = [stub.Score(from_transaction(t), timeout=5) for t in stream]
    model = server.pipeline.snapshot.model
    offline = [s.result for _, s in replay(stream, load_ruleset(RULES), model)]
    assert len(offline) == len(live) == 400
    windows = [s.name for s in load_ruleset(RULES).windows.specs]
    for got, want in zip(live, offline, strict=True):
        assert got.transaction_id == want.transaction_id
        for name in [*windows, "amount", "hour"]:
            if math.isnan(want.features[name]):  # a missing value (no previous event): left out of the response
                assert name not in got.features, (got.transaction_id, name)
            else:
                assert got.features[name] == want.features[name], (got.transaction_id, name)
        assert got.score == want.score or (math.isnan(got.score) and math.isnan(want.score))
        assert [r.code for r in got.reasons] == [r.code for r in want.reasons]
    assert sum(r.features["device_distinct_cards_1d"] > 1 for r in live) > 0  # the stream exercises shared entities
    assert sum("card_since_previous_1h" in r.features for r in live) > 0  # and time windows, missing or not
    assert sum("card_since_previous_1h" not in r.features for r in live) > 0
