"""Explanations in answers: a review or deny the model drives names the features behind it.

Real trained model, real pipeline, a real gRPC server over a socket with its decision log.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import grpc
import pytest

from engine.decision_log import files as decision_files
from engine.model.predictor import load_model
from engine.pipeline import Pipeline
from engine.rules import load_ruleset
from engine.service.pb import risk_pb2, risk_pb2_grpc
from engine.service.server import start
from engine.transaction import Action, ReasonSource, ScoreResult
from engine.windows.memory import MemoryStore
from tests.support import RULES
from tests.support.requests import request
from tests.support.served import make_config

pytestmark = [pytest.mark.server]


@pytest.fixture
def low_thresholds(tmp_path: Path) -> Path:
    """The shipped rules, with model thresholds so low that the model drives every answer."""
    folder = tmp_path / "rules"
    shutil.copytree(RULES, folder)
    (folder / "thresholds.yaml").write_text("model:\n  review_at: 0.0\n  deny_at: 0.999999\n")
    (folder / "tests.yaml").unlink()  # its expectations assume the shipped thresholds
    return folder


def test_model_reviews_carry_the_models_own_top_contributions(low_thresholds: Path, trained_registry: Path) -> None:
    from engine.service.convert import to_transaction

    ruleset = load_ruleset(low_thresholds)
    model = load_model(trained_registry, ruleset)
    pipeline = Pipeline(ruleset, model, MemoryStore(), check_clock=False)
    seen = 0
    for i in range(30):
        req = request(transaction_id=f"x-{i}", amount_minor=1_000 + 9_000 * i, card_id=f"c{i % 4}")
        scored = pipeline.score(to_transaction(req, pipeline.limits))
        (reason,) = [r for r in scored.result.reasons if r.source is ReasonSource.MODEL]
        assert reason.action in (Action.REVIEW, Action.DENY)
        want = model.explain(scored.fields, 3)
        assert reason.contributions == want
        assert 0 < len(reason.contributions) <= 3
        pushes = [c.contribution for c in reason.contributions]
        assert pushes == sorted(pushes, reverse=True) and pushes[-1] > 0
        seen += 1
        # The record a retry gets back keeps them.
        again = ScoreResult.from_json(scored.result.to_json())
        assert again.reasons == scored.result.reasons
    assert seen == 30


def test_rule_reasons_and_allows_carry_no_contributions(trained_registry: Path) -> None:
    from engine.service.convert import to_transaction

    ruleset = load_ruleset(RULES)
    model = load_model(trained_registry, ruleset)
    pipeline = Pipeline(ruleset, model, MemoryStore(), check_clock=False)
    scored = pipeline.score(to_transaction(request(amount_minor=1_500), pipeline.limits))
    assert scored.result.decision is Action.ALLOW
    assert all(not r.contributions for r in (*scored.result.reasons, *scored.result.shadow))


def test_explanations_over_grpc_and_in_the_decision_log(
    tmp_path: Path, low_thresholds: Path, trained_registry: Path, redis_url: tuple[str, str]
) -> None:
    log_dir = tmp_path / "log"
    running = start(make_config(trained_registry, redis_url, rules=low_thresholds, decision_log=log_dir))
    try:
        with grpc.insecure_channel(f"127.0.0.1:{running.port}") as channel:
            stub = risk_pb2_grpc.RiskEngineStub(channel)
            req = request(amount_minor=75_000)
            response = stub.Score(req, timeout=5)
            retry = stub.Score(req, timeout=5)
        model_reasons = [r for r in response.reasons if r.source == risk_pb2.REASON_SOURCE_MODEL]
        assert len(model_reasons) == 1 and model_reasons[0].action in (risk_pb2.DECISION_REVIEW, risk_pb2.DECISION_DENY)
        contributions = model_reasons[0].contributions
        assert 0 < len(contributions) <= 3
        assert all(c.feature in response.features and c.contribution > 0 for c in contributions)
        for c in contributions:
            assert c.value == pytest.approx(response.features[c.feature])
        assert retry.reasons == response.reasons  # the retry's answer comes from the record
        assert running.decisions is not None and running.decisions.flush(10.0)
    finally:
        running.stop(0.5)
    (record,) = [json.loads(line) for f in decision_files(log_dir) for line in f.read_text().splitlines()]
    (logged,) = [r for r in record["reasons"] if r["source"] == "model"]
    assert [c["feature"] for c in logged["contributions"]] == [c.feature for c in contributions]
    assert [c["contribution"] for c in logged["contributions"]] == [c.contribution for c in contributions]
