"""The model registry: list and promote from the command line, hot reload of a promoted model, champion and challenger.

Two real models are trained by the project's own `train` on the synthetic
data (the session's `trained_registry` and a second one with other
parameters, so that their scores differ). Reload and the challenger are
tested on a real server over a socket, the offline answers on the pipeline
itself, compared with a pipeline that has no challenger.
"""

from __future__ import annotations

import json
import math
import re
import shutil
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import grpc
import pyarrow.parquet as pq
import pytest

from engine.cli import main
from engine.decision import model_reasons
from engine.decision_log import to_record
from engine.model.predictor import PROMOTED, Model, ModelInvalid, applicable_thresholds, load_model, resolve_model_dir
from engine.model.registry import CHALLENGER, Challenger, list_models, load_challenger, read_challenger
from engine.offline.datasets import PRESETS, read_dataset
from engine.offline.export import export
from engine.offline.train import train
from engine.pipeline import Pipeline
from engine.rules import RuleSet, load_ruleset
from engine.service.pb import risk_pb2, risk_pb2_grpc
from engine.service.server import Running, start
from engine.transaction import Action, Reason, ScoreResult, Transaction
from engine.windows.memory import MemoryStore
from tests.support import ROOT, RULES
from tests.support.requests import request
from tests.support.served import TEST_TRAIN_CONFIG, health_metadata, make_config, wait_for


@pytest.fixture(scope="session")
def second_model(tmp_path_factory: pytest.TempPathFactory, synthetic_data: Path) -> Path:
    """Another real model on the same data: smaller trees, another name, so other scores."""
    config = tmp_path_factory.mktemp("config2") / "train.yaml"
    config.write_text(
        TEST_TRAIN_CONFIG.replace("name: test-gbm", "name: other-gbm").replace("num_leaves: 15", "num_leaves: 4")
    )
    return train(synthetic_data, RULES, config, tmp_path_factory.mktemp("models2"), quiet=True)


@pytest.fixture
def registry(tmp_path: Path, trained_registry: Path, second_model: Path) -> Path:
    """A registry of its own for each test: the champion (promoted), a second model, and one the rules cannot feed."""
    folder = tmp_path / "models"
    folder.mkdir()
    champion = resolve_model_dir(trained_registry)
    shutil.copytree(champion, folder / champion.name)
    shutil.copytree(second_model, folder / second_model.name)
    bad = folder / "bad-features"
    shutil.copytree(second_model, bad)
    meta = json.loads((bad / "metadata.json").read_text())
    meta["version"] = "bad-features"
    meta["features"][1] = "merchant_fraud_ratio_90d"  # not a field or window of the rule set
    (bad / "metadata.json").write_text(json.dumps(meta))
    (folder / PROMOTED).write_text(champion.name + "\n")
    return folder


def reasons_for(ruleset: RuleSet, score: float, model: Model | None) -> list[Reason]:
    """The reason the thresholds that apply to `model` under `ruleset` add for a score."""
    return model_reasons(applicable_thresholds(ruleset, model), score)


def versions(registry: Path) -> tuple[str, str]:
    """(champion, second model) of the `registry` fixture."""
    champion = (registry / PROMOTED).read_text().strip()
    other = next(e.version for e in list_models(registry) if e.version not in (champion, "bad-features"))
    return champion, other


def run_cli(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def transactions(synthetic_data: Path, n: int) -> list[Transaction]:
    return list(read_dataset(synthetic_data, PRESETS["native"]).transactions[:n])


def without_timing(result: ScoreResult) -> str:
    """The answer without its timing, comparable even where it holds NaN."""
    return replace(result, elapsed_us=0).to_json()


# -- the command line ---------------------------------------------------------


def test_models_list_shows_versions_metrics_and_roles(registry: Path, capsys: pytest.CaptureFixture[str]) -> None:
    champion, other = versions(registry)
    code, out, _ = run_cli(capsys, "models", "list", "--dir", str(registry))
    assert code == 0
    lines = out.splitlines()
    assert lines[0].split()[:3] == ["VERSION", "STATUS", "CREATED"]
    row = next(line for line in lines if line.startswith(champion))
    assert "promoted" in row and "2025-12-31 .. 2026-01-31" in row  # the training data range
    assert any(line.startswith(other) and "promoted" not in line for line in lines)

    code, out, _ = run_cli(
        capsys, "models", "challenger", other, "--mode", "split", "--share", "0.25", "--dir", str(registry)
    )
    assert code == 0 and "split 25%" in out
    code, out, _ = run_cli(capsys, "models", "list", "--dir", str(registry), "--json")
    assert code == 0
    listed = {e["version"]: e for e in json.loads(out)}
    assert set(listed) == {champion, other, "bad-features"}
    assert listed[champion]["promoted"] and not listed[other]["promoted"]
    assert listed[other]["challenger"] == "split 25%" and listed[champion]["challenger"] == ""
    assert listed[champion]["metrics"]["test"]["auc_roc"] > 0.9
    assert listed[champion]["training_data"]["rows"] > 10_000
    assert listed[champion]["created"].startswith("20")


def test_models_list_tolerates_missing_metadata_keys(registry: Path) -> None:
    sparse = registry / "sparse"
    sparse.mkdir()
    shutil.copy(registry / "bad-features" / "model.txt", sparse / "model.txt")
    (sparse / "metadata.json").write_text(json.dumps({"version": "sparse", "features": ["amount"]}))
    (registry / "broken").mkdir()
    shutil.copy(registry / "bad-features" / "model.txt", registry / "broken" / "model.txt")
    (registry / "broken" / "metadata.json").write_text("{not json")
    entries = {e.version: e for e in list_models(registry)}
    assert entries["sparse"].metrics == {} and entries["sparse"].data_from == "" and entries["sparse"].created
    assert "metadata.json" in entries["broken"].problem
    assert main(["models", "list", "--dir", str(registry)]) == 0


def test_promote_from_the_command_line(registry: Path, capsys: pytest.CaptureFixture[str]) -> None:
    _, other = versions(registry)
    code, out, _ = run_cli(capsys, "models", "promote", other, "--dir", str(registry), "--rules", str(RULES))
    assert code == 0 and other in out
    assert (registry / PROMOTED).read_text() == other + "\n"
    assert not list(registry.glob(".PROMOTED*"))  # no temporary file left behind
    assert load_model(registry, load_ruleset(RULES)).version == other


def test_promote_refuses_a_model_whose_features_the_rules_cannot_produce(
    registry: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    before = (registry / PROMOTED).read_bytes()
    code, out, err = run_cli(capsys, "models", "promote", "bad-features", "--dir", str(registry))
    assert code == 2 and out == ""
    assert len(err.strip().splitlines()) == 1
    assert "refused, PROMOTED unchanged" in err and "merchant_fraud_ratio_90d" in err
    assert (registry / PROMOTED).read_bytes() == before


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["promote", "no-such-model"], "no model 'no-such-model'"),
        (["promote", "../models"], "is not a model version"),
        (["challenger", "OTHER", "--mode", "split", "--share", "1.5"], "share must be from 0 to 1, got 1.5"),
        (["challenger", "OTHER", "--mode", "split", "--share", "-0.1"], "share must be from 0 to 1"),
        (["challenger", "OTHER", "--mode", "shadow", "--share", "0.5"], "applies to split mode only"),
        (["challenger", "OTHER"], "give VERSION and --mode"),
        (["challenger", "CHAMPION", "--mode", "shadow"], "is the promoted model"),
        (["challenger", "bad-features", "--mode", "shadow"], "merchant_fraud_ratio_90d"),
        (["challenger", "OTHER", "--clear"], "--clear takes no VERSION"),
    ],
)
def test_bad_registry_requests_fail_with_one_clear_line(
    registry: Path, capsys: pytest.CaptureFixture[str], argv: list[str], message: str
) -> None:
    champion, other = versions(registry)
    argv = [{"OTHER": other, "CHAMPION": champion}.get(a, a) for a in argv]
    before = (registry / PROMOTED).read_bytes()
    code, _, err = run_cli(capsys, "models", *argv, "--dir", str(registry))
    assert code == 2
    assert len(err.strip().splitlines()) == 1 and message in err, err
    assert (registry / PROMOTED).read_bytes() == before and not (registry / CHALLENGER).exists()


def test_challenger_set_and_cleared_from_the_command_line(registry: Path, capsys: pytest.CaptureFixture[str]) -> None:
    _, other = versions(registry)
    assert main(["models", "challenger", other, "--mode", "shadow", "--dir", str(registry)]) == 0
    config = read_challenger(registry)
    assert config is not None and (config.version, config.mode) == (other, "shadow")
    assert main(["models", "challenger", other, "--mode", "split", "--dir", str(registry)]) == 0
    config = read_challenger(registry)
    assert config is not None and (config.mode, config.share) == ("split", 0.1)  # the default share
    assert main(["models", "challenger", "--clear", "--dir", str(registry)]) == 0
    assert read_challenger(registry) is None
    capsys.readouterr()
    # Promoting the challenger ends the challenge.
    assert main(["models", "challenger", other, "--mode", "shadow", "--dir", str(registry)]) == 0
    assert main(["models", "promote", other, "--dir", str(registry)]) == 0
    assert read_challenger(registry) is None and (registry / PROMOTED).read_text().strip() == other


def test_a_hand_written_challenger_file_is_validated(registry: Path) -> None:
    _, other = versions(registry)
    ruleset = load_ruleset(RULES)
    (registry / CHALLENGER).write_text(f"version: {other}\nmode: split\nshare: 0.2\n")  # YAML works too
    loaded = load_challenger(registry, ruleset)
    assert loaded is not None and (loaded.model.version, loaded.mode, loaded.share) == (other, "split", 0.2)
    for text, message in [
        (f"version: {other}\nmode: canary\n", "'mode' must be shadow or split"),
        (f"version: {other}\nmode: split\n", "split mode needs 'share'"),
        (f"version: {other}\nmode: split\nshare: 2\n", "share must be from 0 to 1"),
        (f"version: {other}\nmode: shadow\nweight: 1\n", "unknown key(s) weight"),
        ("version: nope\nmode: shadow\n", "no model 'nope'"),
        ("version: bad-features\nmode: shadow\n", "merchant_fraud_ratio_90d"),
    ]:
        (registry / CHALLENGER).write_text(text)
        with pytest.raises(ModelInvalid, match="challenger: .*" + message.replace("(", r"\(").replace(")", r"\)")):
            load_challenger(registry, ruleset)


# -- thresholds ---------------------------------------------------------------


def test_thresholds_come_from_the_rule_set_when_it_sets_them_else_from_the_model(
    registry: Path, tmp_path: Path
) -> None:
    champion, _ = versions(registry)
    folder = registry / champion
    meta = json.loads((folder / "metadata.json").read_text())
    meta["thresholds"] = {"review_at": 0.2, "deny_at": 0.7}
    (folder / "metadata.json").write_text(json.dumps(meta))
    rules = tmp_path / "rules"
    shutil.copytree(RULES, rules)
    override = rules / "thresholds.yaml"
    override.write_text("model:\n  review_at: 0.5\n  deny_at: 0.9\n")
    shipped = load_ruleset(rules)
    model = load_model(folder, shipped)
    assert model.thresholds == (0.2, 0.7)

    [reason] = reasons_for(shipped, 0.93, model)
    assert reason.action == Action.DENY and reason.message == "model score 0.930 >= deny threshold 0.9 (rule set)"
    assert reasons_for(shipped, 0.3, model) == []

    override.unlink()  # the shipped rules leave thresholds to the model
    bare = load_ruleset(rules)
    [reason] = reasons_for(bare, 0.75, model)
    assert reason.action == Action.DENY and reason.message == "model score 0.750 >= deny threshold 0.7 (model)"
    [reason] = reasons_for(bare, 0.3, model)
    assert reason.action == Action.REVIEW and reason.message.endswith("review threshold 0.2 (model)")
    assert reasons_for(bare, 0.99, None) == []  # no thresholds anywhere

    # Each threshold the rule set sets overrides the model's; the other stays the model's.
    override.write_text("model:\n  deny_at: 0.8\n")
    partial = load_ruleset(rules)
    assert reasons_for(partial, 0.75, model)[0].message.endswith("review threshold 0.2 (model)")
    assert reasons_for(partial, 0.85, model)[0].message.endswith("deny threshold 0.8 (rule set)")

    meta["thresholds"] = {"review_at": 0.9, "deny_at": 0.5}
    (folder / "metadata.json").write_text(json.dumps(meta))
    with pytest.raises(ModelInvalid, match=r"review_at 0\.9 is above deny_at 0\.5"):
        load_model(folder, shipped)


# -- champion and challenger in the pipeline ------------------------------------


@pytest.mark.parametrize("mode", ["shadow", "split"])
def test_challenger_answers_match_the_champion_alone_and_batch_equals_one_by_one(
    registry: Path, synthetic_data: Path, mode: str
) -> None:
    champion_version, other_version = versions(registry)
    ruleset = load_ruleset(RULES)
    champion = load_model(registry / champion_version, ruleset)
    challenger = Challenger(load_model(registry / other_version, ruleset), mode, 0.3 if mode == "split" else 0.0)
    txns = transactions(synthetic_data, 3000)

    def pipeline(with_challenger: bool) -> Pipeline:
        return Pipeline(
            ruleset,
            champion,
            MemoryStore(),
            check_clock=False,
            record=False,
            challenger=challenger if with_challenger else None,
        )

    champion_alone = pipeline(False)
    alone = [champion_alone.score(t).result for t in txns]
    challenger_alone = Pipeline(ruleset, challenger.model, MemoryStore(), check_clock=False, record=False)
    other_alone = [challenger_alone.score(t).result for t in txns]
    pipe = pipeline(True)
    both = [pipe.score(t).result for t in txns]
    batch = [a.result for a in pipeline(True).score_batch(txns)]  # type: ignore[union-attr]
    assert [without_timing(r) for r in batch] == [without_timing(r) for r in both]

    decided = 0
    for a, b, r in zip(alone, other_alone, both, strict=True):
        c = r.challenger
        assert c is not None and c.mode == mode
        if c.challenger_decided:
            decided += 1
            # The challenger decided exactly as it would alone; the champion is recorded beside it.
            assert without_timing(replace(r, challenger=None)) == without_timing(b)
            assert (c.model_version, c.decision) == (champion_version, a.decision)
            assert c.score == a.score or (math.isnan(c.score) and math.isnan(a.score))
        else:
            # The champion's answer is untouched by the challenger; the challenger's is recorded.
            assert without_timing(replace(r, challenger=None)) == without_timing(a)
            assert (c.model_version, c.decision) == (other_version, b.decision)
            assert c.score == b.score or (math.isnan(c.score) and math.isnan(b.score))
    if mode == "shadow":
        assert decided == 0
        assert any(r.challenger is not None and r.challenger.decision != r.decision for r in both)
    else:
        assert abs(decided / len(txns) - 0.3) < 0.03, decided


def test_split_is_a_stable_subset_chosen_by_the_transaction_id(registry: Path) -> None:
    _, other = versions(registry)
    model = load_model(registry / other, load_ruleset(RULES))
    ids = [f"txn-{i}" for i in range(20_000)]
    small = {i for i in ids if Challenger(model, "split", 0.1).decides(i)}
    large = {i for i in ids if Challenger(model, "split", 0.4).decides(i)}
    assert abs(len(small) / len(ids) - 0.1) < 0.01 and abs(len(large) / len(ids) - 0.4) < 0.015
    assert small < large  # a larger share keeps the transactions of the smaller one
    assert small == {i for i in ids if Challenger(model, "split", 0.1).decides(i)}  # the same every time
    assert not any(Challenger(model, "shadow", 1.0).decides(i) for i in ids)
    assert all(Challenger(model, "split", 1.0).decides(i) for i in ids[:100])
    assert not any(Challenger(model, "split", 0.0).decides(i) for i in ids[:100])


def test_a_failing_challenger_never_touches_the_champions_answer(registry: Path, synthetic_data: Path) -> None:
    champion_version, other_version = versions(registry)
    ruleset = load_ruleset(RULES)
    champion = load_model(registry / champion_version, ruleset)
    good = load_model(registry / other_version, ruleset)
    broken = replace(good, features=good.features[:-1], single_row=None)  # LightGBM refuses the row
    txns = transactions(synthetic_data, 200)
    alone = Pipeline(ruleset, champion, MemoryStore(), check_clock=False, record=False)
    expected = [without_timing(alone.score(t).result) for t in txns]
    causes: list[str] = []
    for mode in ("shadow", "split"):
        causes.clear()
        pipe = Pipeline(
            ruleset,
            champion,
            MemoryStore(),
            check_clock=False,
            record=False,
            challenger=Challenger(broken, mode, 1.0 if mode == "split" else 0.0),
            on_degraded=lambda cause, detail, kind: causes.append(cause),
        )
        for scored, want in (
            *zip([pipe.score(t) for t in txns[:100]], expected[:100], strict=True),
            *zip(pipe.score_batch(txns[100:]), expected[100:], strict=True),
        ):
            result = scored.result  # type: ignore[union-attr]
            assert without_timing(replace(result, challenger=None)) == want
            assert result.challenger is not None and math.isnan(result.challenger.score)
            assert not result.challenger.challenger_decided and not result.degraded
        assert set(causes) == {"challenger"}


def test_challenger_is_in_the_decision_log_and_its_export(registry: Path, synthetic_data: Path, tmp_path: Path) -> None:
    champion_version, other_version = versions(registry)
    ruleset = load_ruleset(RULES)
    champion = load_model(registry / champion_version, ruleset)
    challenger = Challenger(load_model(registry / other_version, ruleset), "split", 0.5)
    pipe = Pipeline(ruleset, champion, MemoryStore(), check_clock=False, record=False, challenger=challenger)
    txns = transactions(synthetic_data, 200)
    results = [pipe.score(t).result for t in txns]
    folder = tmp_path / "decisions"
    folder.mkdir()
    records = [to_record(1.0, t, r) for t, r in zip(txns, results, strict=True)]
    (folder / "decisions-20260101T000000Z-000001.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    assert records[0]["challenger"]["mode"] == "split"
    export(folder, tmp_path / "out.parquet")
    table = pq.read_table(tmp_path / "out.parquet").to_pylist()
    by_id = {row["transaction_id"]: row for row in table}
    assert {row["champion_version"] for row in table} == {champion_version}
    assert {row["challenger_version"] for row in table} == {other_version}
    for r in results:
        row = by_id[r.transaction_id]
        assert r.challenger is not None and row["challenger_decided"] == r.challenger.challenger_decided
        champion_score, challenger_score = (
            (r.challenger.score, r.score) if r.challenger.challenger_decided else (r.score, r.challenger.score)
        )
        assert row["champion_score"] == pytest.approx(champion_score, nan_ok=True)
        assert row["challenger_score"] == pytest.approx(challenger_score, nan_ok=True)
        assert row["model_version"] == (other_version if r.challenger.challenger_decided else champion_version)
    assert 0 < sum(row["challenger_decided"] for row in table) < len(table)


@pytest.mark.server
def test_a_retried_result_keeps_its_challenger() -> None:
    from engine.transaction import ChallengerResult

    result = ScoreResult(
        "t1",
        Action.REVIEW,
        0.6,
        (),
        "r",
        "m2",
        False,
        challenger=ChallengerResult("m1", 0.1, Action.ALLOW, True, "split"),
    )
    assert ScoreResult.from_json(result.to_json()) == result
    plain = replace(result, challenger=None)
    assert '"ch"' not in plain.to_json() and ScoreResult.from_json(plain.to_json()) == plain


# -- a live server: hot reload and the challenger over gRPC ---------------------


@pytest.fixture
def live(registry: Path) -> Iterator[Running]:
    running = start(make_config(registry, reload_interval_s=0.1))
    yield running
    running.stop(0.5)


@pytest.fixture
def stub(live: Running) -> Iterator[risk_pb2_grpc.RiskEngineStub]:
    channel = grpc.insecure_channel(f"127.0.0.1:{live.port}")
    yield risk_pb2_grpc.RiskEngineStub(channel)
    channel.close()


def health(live: Running) -> dict[str, str]:
    with grpc.insecure_channel(f"127.0.0.1:{live.port}") as channel:
        return health_metadata(channel)


def test_promoted_model_is_served_without_restart_and_a_mismatched_one_is_refused(
    live: Running, stub: risk_pb2_grpc.RiskEngineStub, registry: Path
) -> None:
    champion, other = versions(registry)
    first = stub.Score(request(), timeout=5)
    assert first.model_version == champion and not first.HasField("challenger")
    assert health(live)["risk-model-version"] == champion

    assert main(["models", "promote", other, "--dir", str(registry)]) == 0
    wait_for(lambda: stub.Score(request(), timeout=5).model_version == other, "the promoted model to serve")
    assert health(live)["risk-model-version"] == other and health(live)["risk-last-reload"] == "ok"
    assert live.reloader.status.reloads_ok == 1

    # PROMOTED written by hand, naming a model whose features the rules cannot produce: the
    # reload is refused with the reason, and the model before it keeps serving.
    (registry / PROMOTED).write_text("bad-features\n")
    wait_for(lambda: health(live)["risk-last-reload"].startswith("failed"), "the refusal")
    # The reason is admin's (Status); the scoring port's health says only that it failed, and when.
    assert "merchant_fraud_ratio_90d" in live.reloader.status.last_failure
    assert "merchant_fraud_ratio_90d" not in health(live)["risk-last-reload"]
    assert stub.Score(request(), timeout=5).model_version == other
    assert health(live)["risk-model-version"] == other


def test_challenger_over_grpc_shadow_then_split_with_retries_in_the_same_bucket(
    live: Running, stub: risk_pb2_grpc.RiskEngineStub, registry: Path
) -> None:
    champion, other = versions(registry)
    assert main(["models", "challenger", other, "--mode", "shadow", "--dir", str(registry)]) == 0
    wait_for(lambda: health(live)["risk-challenger"] == f"{other} (shadow)", "the shadow challenger")
    for i in range(20):
        response = stub.Score(request(card_id=f"shadow-{i}"), timeout=5)
        assert response.model_version == champion
        c = response.challenger
        assert (c.model_version, c.mode, c.challenger_decided) == (other, "shadow", False)
        assert 0.0 <= c.score <= 1.0 and c.score != response.score
        assert c.decision in (risk_pb2.DECISION_ALLOW, risk_pb2.DECISION_REVIEW, risk_pb2.DECISION_DENY)

    assert main(["models", "challenger", other, "--mode", "split", "--share", "0.5", "--dir", str(registry)]) == 0
    wait_for(lambda: health(live)["risk-challenger"] == f"{other} (split 50%)", "the split challenger")
    split = live.pipeline.snapshot.challenger
    assert split is not None
    decided_by = {}
    for i in range(60):
        req = request(transaction_id=f"split-{i}", card_id=f"split-{i}")
        first = stub.Score(req, timeout=5)
        retry = stub.Score(req, timeout=5)  # a retry: the recorded answer, the same model
        assert retry == first
        decided_by[req.transaction.transaction_id] = first.model_version
        c = first.challenger
        assert c.challenger_decided == (first.model_version == other)
        assert c.model_version == (champion if c.challenger_decided else other)
        assert c.challenger_decided == split.decides(req.transaction.transaction_id)
    assert set(decided_by.values()) == {champion, other}

    # A refused challenger (a model the rules cannot feed) leaves the split serving.
    (registry / CHALLENGER).write_text(json.dumps({"version": "bad-features", "mode": "shadow"}))
    wait_for(lambda: health(live)["risk-last-reload"].startswith("failed"), "the refusal")
    assert "challenger" in live.reloader.status.last_failure and health(live)["risk-challenger"].endswith("(split 50%)")
    assert stub.Score(request(), timeout=5).challenger.mode == "split"

    assert main(["models", "challenger", "--clear", "--dir", str(registry)]) == 0
    wait_for(lambda: health(live)["risk-challenger"] == "", "the challenger to stop")
    assert not stub.Score(request(), timeout=5).HasField("challenger")


# -- promotion against the champion's validation --------------------------------

VALIDATION = """
validation:
  test_weeks: ["2026-01-16", "2026-01-23"]
  train_days: 10
  delay_days: 2
  early_stopping_days: 3
"""


@pytest.fixture(scope="session")
def validated_models(tmp_path_factory: pytest.TempPathFactory, synthetic_data: Path) -> tuple[Path, Path]:
    """Two real models validated on the same weeks: the test config, and a weak one (amount and hour alone)."""
    out = tmp_path_factory.mktemp("validated")
    good = out / "good.yaml"
    good.write_text(TEST_TRAIN_CONFIG.replace("name: test-gbm", "name: good-gbm") + VALIDATION)
    weak = out / "weak.yaml"
    weak_config = re.sub(r"features: \[.*?\]", "features: [amount, hour]", TEST_TRAIN_CONFIG, flags=re.DOTALL)
    weak.write_text(
        weak_config.replace("name: test-gbm", "name: weak-gbm").replace("num_leaves: 15", "num_leaves: 2") + VALIDATION
    )
    return (
        train(synthetic_data, RULES, good, out / "models", quiet=True),
        train(synthetic_data, RULES, weak, out / "models", quiet=True),
    )


@pytest.mark.slow
def test_promote_refuses_a_worse_model_unless_forced(
    tmp_path: Path, validated_models: tuple[Path, Path], trained_registry: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    good, weak = validated_models
    registry = tmp_path / "models"
    registry.mkdir()
    for folder in (good, weak, resolve_model_dir(trained_registry)):
        shutil.copytree(folder, registry / folder.name)
    (registry / PROMOTED).write_text(good.name + "\n")
    good_ap = json.loads((good / "metadata.json").read_text())["validation"]["mean"]["average_precision"]
    weak_ap = json.loads((weak / "metadata.json").read_text())["validation"]["mean"]["average_precision"]
    assert weak_ap < good_ap  # the premise: fewer features, stumps

    code, out, err = run_cli(capsys, "models", "promote", weak.name, "--dir", str(registry))
    assert code == 2
    assert (registry / PROMOTED).read_text() == good.name + "\n"  # unchanged
    assert "refused, PROMOTED unchanged" in err and "--force" in err and len(err.strip().splitlines()) == 1
    # The comparison: both models on the same two weeks, AUC, AP and the ranking metric that fits this data
    # (P@k: too few cards a day for CP@100), and the means.
    assert f"against the champion {good.name}" in out and "on 2 validation week(s)" in out
    assert "2026-01-16 .. 2026-01-22" in out and "2026-01-23 .. 2026-01-29" in out
    assert "AUC ROC" in out and "P@k" in out and "CP@100" not in out
    mean = out.split("  mean")[1].splitlines()
    assert mean[0].split()[0] == "candidate" and float(mean[0].split()[2]) == weak_ap  # AUC, AP, P@k
    assert mean[1].split()[0] == "champion" and float(mean[1].split()[2]) == good_ap
    assert "the candidate is worse" in out

    code, out, _ = run_cli(capsys, "models", "promote", weak.name, "--dir", str(registry), "--force")
    assert code == 0 and "--force" in out
    assert (registry / PROMOTED).read_text() == weak.name + "\n"

    # Back to the better one: no --force needed.
    code, out, _ = run_cli(capsys, "models", "promote", good.name, "--dir", str(registry))
    assert code == 0 and "the candidate is not worse" in out
    assert (registry / PROMOTED).read_text() == good.name + "\n"

    # A model without validation weeks is not compared: promoted, saying why.
    other = resolve_model_dir(trained_registry).name
    code, out, _ = run_cli(capsys, "models", "promote", other, "--dir", str(registry))
    assert code == 0 and "not compared with the champion" in out and "the candidate has no validation" in out


def test_models_list_shows_the_mean_validation_ap_and_reads_older_metadata(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    registry = tmp_path / "models"
    shipped = resolve_model_dir(ROOT / "models")
    shutil.copytree(shipped, registry / shipped.name)
    older = registry / "older"
    older.mkdir()
    shutil.copy(shipped / "model.txt", older / "model.txt")
    (older / "metadata.json").write_text(json.dumps({"version": "older", "validation": {"average_precision": 0.5}}))
    ap = json.loads((shipped / "metadata.json").read_text())["validation"]["mean"]["average_precision"]
    code, out, _ = run_cli(capsys, "models", "list", "--dir", str(registry))
    assert code == 0
    header, *rows = out.splitlines()
    column = header.index("VAL AP")
    row = {line.split()[0]: line for line in rows}
    assert row[shipped.name][column:].startswith(f"{ap:.4f}")
    assert row["older"][column:].startswith("0.5000")
    listed = {e.version: e.validation_ap for e in list_models(registry)}
    assert listed == {shipped.name: ap, "older": 0.5}
