"""Service settings: flags, with environment variables as defaults, validated at start."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from engine.validation import Limits

ROOT = Path(__file__).resolve().parent.parent


class ConfigError(ValueError):
    pass


def _env(name: str, default: str) -> str:
    return os.environ.get(name, default)


@dataclass(frozen=True)
class ServeConfig:
    host: str = "127.0.0.1"
    port: int = 50051
    rules: Path = ROOT / "rules"
    model: Path = ROOT / "models"
    redis_url: str = ""  # empty: the embedded in-process store
    redis_prefix: str = "risk"
    redis_budget_ms: float = 50.0
    redis_cooldown_ms: float = 500.0
    idempotency_ttl_s: float = 86400.0
    threads: int = 16
    max_concurrent_rpcs: int = 256
    grace_s: float = 10.0
    #: How often the rules folder is checked for changes; 0 turns the watcher off (SIGHUP still reloads).
    reload_interval_s: float = 1.0
    metrics_host: str = "127.0.0.1"
    #: Port of the Prometheus /metrics endpoint; None turns it off, 0 picks a free port.
    metrics_port: int | None = 9464
    limits: Limits = field(default_factory=Limits)

    @classmethod
    def from_env(cls) -> ServeConfig:
        """Defaults from RISK_* environment variables (and REDIS_URL)."""
        d = Limits()
        try:
            return cls(
                host=_env("RISK_HOST", "127.0.0.1"),
                port=int(_env("RISK_PORT", "50051")),
                rules=Path(_env("RISK_RULES", str(ROOT / "rules"))),
                model=Path(_env("RISK_MODEL", str(ROOT / "models"))),
                redis_url=_env("REDIS_URL", ""),
                redis_prefix=_env("RISK_REDIS_PREFIX", "risk"),
                redis_budget_ms=float(_env("RISK_REDIS_BUDGET_MS", "50")),
                idempotency_ttl_s=float(_env("RISK_IDEMPOTENCY_TTL_S", "86400")),
                threads=int(_env("RISK_THREADS", "16")),
                grace_s=float(_env("RISK_GRACE_S", "10")),
                reload_interval_s=float(_env("RISK_RELOAD_INTERVAL_S", "1")),
                metrics_host=_env("RISK_METRICS_HOST", "127.0.0.1"),
                metrics_port=None
                if _env("RISK_METRICS_PORT", "9464") == "off"
                else int(_env("RISK_METRICS_PORT", "9464")),
                limits=Limits(
                    max_event_age_s=float(_env("RISK_MAX_EVENT_AGE_S", str(d.max_event_age_s))),
                    max_event_lead_s=float(_env("RISK_MAX_EVENT_LEAD_S", str(d.max_event_lead_s))),
                ),
            )
        except ValueError as exc:
            raise ConfigError(f"bad environment setting: {exc}") from None

    def check(self) -> None:
        if not 0 <= self.port <= 65535:
            raise ConfigError(f"--port must be 0..65535, got {self.port}")
        if self.redis_url and not self.redis_url.startswith(("redis://", "rediss://", "unix://")):
            raise ConfigError(f"--redis-url must start with redis://, rediss:// or unix://, got {self.redis_url!r}")
        if not 1 <= self.redis_budget_ms <= 10_000:
            raise ConfigError(f"the Redis budget must be 1..10000 ms, got {self.redis_budget_ms}")
        if self.idempotency_ttl_s <= 0:
            raise ConfigError(f"the idempotency TTL must be positive, got {self.idempotency_ttl_s}")
        if self.reload_interval_s < 0:
            raise ConfigError(f"the reload interval must be 0 (off) or positive, got {self.reload_interval_s}")
        if self.metrics_port is not None and not 0 <= self.metrics_port <= 65535:
            raise ConfigError(f"the metrics port must be 0..65535 or 'off', got {self.metrics_port}")
        if self.threads < 1:
            raise ConfigError("--threads must be at least 1")
        if not self.rules.exists():
            raise ConfigError(f"--rules {self.rules}: no such file or folder")
        if not self.model.exists():
            raise ConfigError(f"--model {self.model}: no such folder")
