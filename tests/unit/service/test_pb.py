"""The committed Python stubs are exactly what the proto generates today."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from tests.support import ROOT


def test_generated_stubs_are_current(tmp_path: Path) -> None:
    subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "gen_proto.py"), str(tmp_path)], check=True, capture_output=True
    )
    committed = ROOT / "engine" / "service" / "pb"
    for name in ("risk_pb2.py", "risk_pb2.pyi", "risk_pb2_grpc.py"):
        assert (tmp_path / name).read_text() == (committed / name).read_text(), f"{name} is stale: run `make proto`"


def test_contract_names_the_gateway_depends_on() -> None:
    from engine.service.pb import risk_pb2

    fields = {f.name: f.number for f in risk_pb2.Transaction.DESCRIPTOR.fields}
    assert fields == {
        "transaction_id": 1,
        "event_time": 2,
        "amount_minor": 3,
        "currency": 4,
        "user_id": 5,
        "card_id": 6,
        "device_id": 7,
        "ip": 8,
        "country": 9,
        "merchant_id": 10,
        "channel": 11,
        "attributes": 12,
        "merchant_category": 13,
    }
    response = {f.name: f.number for f in risk_pb2.ScoreResponse.DESCRIPTOR.fields}
    assert response == {
        "transaction_id": 1,
        "decision": 2,
        "score": 3,
        "reasons": 4,
        "ruleset_version": 5,
        "model_version": 6,
        "degraded": 7,
        "features": 8,
        "elapsed_us": 9,
        "shadow_reasons": 10,
        "challenger": 11,
        "ruleset_digest": 12,
        "enrichment": 13,
        "dry_run": 14,
    }
    request = {f.name: f.number for f in risk_pb2.ScoreRequest.DESCRIPTOR.fields}
    assert request == {"transaction": 1, "dry_run": 2}
    challenger = {f.name: f.number for f in risk_pb2.ChallengerResult.DESCRIPTOR.fields}
    assert challenger == {"model_version": 1, "score": 2, "decision": 3, "challenger_decided": 4, "mode": 5}
    assert [v.name for v in risk_pb2.Decision.DESCRIPTOR.values] == [
        "DECISION_UNSPECIFIED",
        "DECISION_ALLOW",
        "DECISION_REVIEW",
        "DECISION_DENY",
    ]
    assert risk_pb2.DESCRIPTOR.package == "risk.v1"
    assert risk_pb2.DESCRIPTOR.services_by_name["RiskEngine"].methods_by_name["Score"].input_type.name == "ScoreRequest"
