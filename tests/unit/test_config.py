"""engine.config: the server's settings from RISK_* variables, every bad value named at once."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest

from engine.config import ConfigError, ServeConfig, unknown_env
from tests.support import ROOT


def test_settings_come_from_the_environment() -> None:
    config = ServeConfig.from_env({"RISK_PORT": "50123", "RISK_THREADS": "4"})
    assert config.port == 50123 and config.threads == 4


def test_every_bad_value_is_named() -> None:
    with pytest.raises(ConfigError) as raised:
        ServeConfig.from_env({"RISK_PORT": "eighty", "RISK_GRACE_S": "soon"})
    assert "RISK_PORT" in str(raised.value) and "RISK_GRACE_S" in str(raised.value)


def test_an_unknown_risk_variable_is_reported() -> None:
    assert unknown_env({"RISK_PORTT": "1", "RISK_PORT": "2", "HOME": "/root"}) == ["RISK_PORTT"]


def test_the_rule_set_archive_sits_beside_the_decision_log_unless_set() -> None:
    from pathlib import Path

    from engine.service.workers import worker_config

    assert ServeConfig.from_env({}).archive is None  # no decision log, no setting: nothing archived
    logged = ServeConfig.from_env({"RISK_DECISION_LOG": "/var/log/risk"})
    assert logged.archive == Path("/var/log/risk/rulesets")
    # Each worker of --workers N logs to worker-<i>/ of the folder; they share one archive.
    assert worker_config(logged, 1, 50051).archive == Path("/var/log/risk/rulesets")
    assert ServeConfig.from_env({"RISK_DECISION_LOG": "/var/log/risk", "RISK_RULESET_ARCHIVE": "off"}).archive is None
    assert ServeConfig.from_env({"RISK_RULESET_ARCHIVE": "/srv/rulesets"}).archive == Path("/srv/rulesets")
    assert unknown_env({"RISK_RULESET_ARCHIVE": "x"}) == []


def test_a_plaintext_scoring_port_beyond_loopback_needs_insecure(tmp_path: Path) -> None:
    base = ServeConfig(rules=ROOT / "rules", model=ROOT / "models")
    for host in ("127.0.0.1", "::1", "localhost"):
        replace(base, host=host).check()
    for host in ("0.0.0.0", "::", "10.1.2.3"):
        with pytest.raises(ConfigError, match="not a loopback address: the scoring port listens beyond localhost"):
            replace(base, host=host).check()
        replace(base, host=host, insecure=True).check()
    cert, key = tmp_path / "c.pem", tmp_path / "k.pem"
    cert.write_text("x")
    key.write_text("x")
    replace(base, host="0.0.0.0", tls_cert=cert, tls_key=key).check()  # TLS: fine
    assert ServeConfig.from_env({"RISK_INSECURE": "on", "RISK_HOST": "0.0.0.0"}).insecure
