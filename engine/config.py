"""Service settings: flags, with environment variables as defaults, validated at start.

`ServeConfig.from_env()` reads every RISK_* variable (and REDIS_URL) and
`check()` validates the whole config; both collect every problem before
raising one `ConfigError` that names each bad setting (flag and variable),
so an operator fixes them all in one go. Secrets (the password in a Redis
URL) never appear in an error or a log line: use `redacted_redis_url`.
"""

from __future__ import annotations

import ipaddress
import math
import os
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlsplit, urlunsplit

from engine.privacy import Pseudonyms, load_or_create_key, parse_key
from engine.validation import Limits

ROOT = Path(__file__).resolve().parent.parent

T = TypeVar("T")


class ConfigError(ValueError):
    """One or more bad settings; `problems` lists each, one line apiece."""

    def __init__(self, problems: list[str] | str) -> None:
        self.problems = [problems] if isinstance(problems, str) else list(problems)
        if len(self.problems) == 1:
            super().__init__(self.problems[0])
        else:
            super().__init__(f"{len(self.problems)} bad settings:\n" + "\n".join(f"  {p}" for p in self.problems))


def missing_hint(path: Path | str) -> str:
    """What to do about a path that does not exist: relative paths are read from the current folder."""
    if Path(path).is_absolute():
        return "no such file or folder"
    return f"relative to the current folder {Path.cwd()}: run from the folder that holds it, or give the path"


def redact_url(url: str) -> str:
    """The URL with its password (if any) replaced by ***."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return "<unparsable URL>"
    if parts.password is None:
        return url
    user = parts.username or ""
    host = parts.hostname or ""
    if ":" in host:
        host = f"[{host}]"
    try:
        netloc = f"{user}:***@{host}" + (f":{parts.port}" if parts.port is not None else "")
    except ValueError:
        netloc = f"{user}:***@{host}"
    return urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment))


#: The admin port of `risk-engine serve` (ServeConfig itself defaults to no admin service).
DEFAULT_ADMIN_PORT: int | None = 50052

#: Every environment variable the service reads (others starting with RISK_ are reported as unknown).
ENV_VARS = (
    "RISK_HOST",
    "RISK_PORT",
    "RISK_RULES",
    "RISK_MODEL",
    "REDIS_URL",
    "RISK_REDIS_PREFIX",
    "RISK_REDIS_BUDGET_MS",
    "RISK_IDEMPOTENCY_TTL_S",
    "RISK_THREADS",
    "RISK_WORKERS",
    "RISK_MAX_CONCURRENT_RPCS",
    "RISK_MAX_QUEUE_MS",
    "RISK_BREAKER_MIN_FAILURES",
    "RISK_BREAKER_FAILURE_RATE",
    "RISK_BREAKER_WINDOW_S",
    "RISK_BREAKER_OPEN_MS",
    "RISK_FALLBACK_HORIZON_S",
    "RISK_FALLBACK_MAX_ENTITIES",
    "RISK_GRACE_S",
    "RISK_RELOAD_INTERVAL_S",
    "RISK_DRIFT_INTERVAL_S",
    "RISK_METRICS_HOST",
    "RISK_METRICS_PORT",
    "RISK_MAX_EVENT_AGE_S",
    "RISK_MAX_EVENT_LEAD_S",
    "RISK_LOG_FORMAT",
    "RISK_DECISION_LOG",
    "RISK_RULESET_ARCHIVE",
    "RISK_DECISION_LOG_MAX_FILE_MB",
    "RISK_DECISION_LOG_ROTATE_S",
    "RISK_DECISION_LOG_MAX_TOTAL_MB",
    "RISK_TLS_CERT",
    "RISK_TLS_KEY",
    "RISK_TLS_CLIENT_CA",
    "RISK_ADMIN_HOST",
    "RISK_ADMIN_PORT",
    "RISK_GC_TUNING",
    "RISK_CPU_AFFINITY",
    "RISK_REDIS_WRITE_BEHIND",
    "RISK_CARD_DATA",
    "RISK_PSEUDONYM_KEY",
    "RISK_PSEUDONYM_KEY_FILE",
    "RISK_CLEAR_IDS",
    "RISK_ADMIN_TOKEN_FILE",
    "RISK_ADMIN_ALLOW",
    "RISK_INSECURE",
    "RISK_RULES_ALLOWED_DIRS",
)


@dataclass(frozen=True)
class ServeConfig:
    host: str = "127.0.0.1"
    port: int = 50051
    #: Relative paths are read from the current folder (not the install's), like every path of the command line.
    rules: Path = Path("rules")
    model: Path = Path("models")
    redis_url: str = ""  # empty: the embedded in-process store
    redis_prefix: str = "risk"
    redis_budget_ms: float = 50.0
    #: Circuit breaker of each Redis target (engine.windows.breaker): it opens on at least this many
    #: failures that are at least this share of the calls in the last window, and then fails fast
    #: for breaker_open_ms before one probe call may try Redis again.
    breaker_min_failures: int = 5
    breaker_failure_rate: float = 0.5
    breaker_window_s: int = 10
    breaker_open_ms: float = 500.0
    #: Short windows each process keeps for degraded answers (engine.windows.fallback): windows
    #: reaching back at most this many seconds; 0 turns the fallback off.
    fallback_horizon_s: float = 3600.0
    #: Entity values the fallback keeps per window group (its memory bound).
    fallback_max_entities: int = 50_000
    #: Write retry records to Redis behind the answer (engine/windows/records.py); off: before answering.
    redis_write_behind: bool = True
    idempotency_ttl_s: float = 86400.0
    threads: int = 16
    #: Server processes sharing the port (SO_REUSEPORT), supervised by the parent; more than 1 needs Redis.
    workers: int = 1
    #: Set in a worker process of `--workers N` (0..N-1): its scoring socket joins the shared port.
    worker_index: int | None = None
    #: Calls in progress (running or queued for a thread) beyond which gRPC refuses new ones at once.
    max_concurrent_rpcs: int = 100
    #: Longest a call may wait for a worker thread before it is shed (engine.service.admission).
    max_queue_ms: float = 50.0
    grace_s: float = 10.0
    #: How often the rules folder is checked for changes; 0 turns the watcher off (SIGHUP still reloads).
    reload_interval_s: float = 1.0
    #: How often the model's drift (PSI over the last hour, engine.model.drift) is recomputed; 0 turns it off.
    drift_interval_s: float = 15.0
    metrics_host: str = "127.0.0.1"
    #: Port of the Prometheus /metrics endpoint; None turns it off, 0 picks a free port.
    metrics_port: int | None = 9464
    limits: Limits = field(default_factory=Limits)
    #: 'json' (one object per line) or 'text'.
    log_format: str = "json"
    #: Folder of the decision log (JSON Lines, rotated); None: no decision log.
    decision_log: Path | None = None
    decision_log_max_file_mb: float = 64.0
    decision_log_rotate_s: float = 3600.0
    decision_log_max_total_mb: float = 1024.0
    #: Folder that keeps a copy of every rule set loaded, by digest (engine.rules.archive); None: beside the
    #: decision log (`<decision log>/rulesets`), or off without one; ARCHIVE_OFF: off.
    ruleset_archive: Path | None = None
    #: Server certificate chain and key (PEM): both set turns TLS on for the gRPC port.
    tls_cert: Path | None = None
    tls_key: Path | None = None
    #: CA bundle (PEM) that client certificates must chain to: set, it requires mutual TLS.
    tls_client_ca: Path | None = None
    #: The admin gRPC service (risk.v1.Admin: Reload, Status) on its own port; None: off, 0: a free port.
    admin_host: str = "127.0.0.1"
    admin_port: int | None = None
    #: Tune Python's cyclic garbage collector for serving (see engine.service.server.tune_gc).
    gc_tuning: bool = True
    #: Pin each server process to one core (`engine.service.server.pin_to_one_core`); off: let the kernel move it.
    cpu_affinity: bool = True
    #: A card number or card security data in a request: 'refuse' (INVALID_ARGUMENT) or 'mask' (a card
    #: number becomes its pseudonym, a CVV/PIN/track attribute is dropped). README "Data protection".
    card_data: str = "refuse"
    #: The secret of the pseudonyms (engine.privacy): its text (RISK_PSEUDONYM_KEY) or a file holding it;
    #: neither: generated on first use beside the data (`pseudonym_key_path`).
    pseudonym_key: str = field(default="", repr=False)
    pseudonym_key_file: Path | None = None
    #: Keep ids in clear in Redis keys and the decision log (for operators whose policy allows it).
    clear_ids: bool = False
    #: The bearer token admin calls must send (`authorization: Bearer <token>`), read from this file; None:
    #: generated on first use beside the data (`admin_token_path`). engine.service.admin.
    admin_token_file: Path | None = None
    #: Client certificate identities (subject common name or a SAN) that may call admin over mutual TLS;
    #: a list of its own, separate from the gateway's (whose certificates may score, never call admin).
    admin_allow: tuple[str, ...] = ()
    #: Allow the scoring port to listen beyond loopback in plaintext (otherwise it needs TLS).
    insecure: bool = False

    @property
    def redacted_redis_url(self) -> str:
        return redact_url(self.redis_url) if self.redis_url else ""

    @property
    def archive(self) -> Path | None:
        """Where every rule set loaded is kept by digest: the setting, else `rulesets/` beside the decision log
        (shared by the workers of `--workers N`, whose decision logs are `worker-<i>/` of it), else nowhere."""
        if self.ruleset_archive == ARCHIVE_OFF:
            return None
        if self.ruleset_archive is not None:
            return self.ruleset_archive
        if self.decision_log is None:
            return None
        return (self.decision_log.parent if self.worker_index is not None else self.decision_log) / "rulesets"

    @property
    def tls(self) -> bool:
        return self.tls_cert is not None or self.tls_key is not None

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> ServeConfig:
        """Defaults from RISK_* environment variables (and REDIS_URL); every bad value named at once."""
        env = os.environ if environ is None else environ
        problems: list[str] = []
        d = cls()
        dl = Limits()

        def get(name: str, parse: Callable[[str], T], default: T) -> T:
            raw = env.get(name)
            if raw is None or raw == "":
                return default
            try:
                return parse(raw.strip())
            except ValueError as exc:
                shown = redact_url(raw) if "URL" in name else raw
                problems.append(f"{name}={shown!r}: {exc}")
                return default

        values: dict[str, Any] = {
            "host": get("RISK_HOST", str, d.host),
            "port": get("RISK_PORT", _int, d.port),
            "rules": get("RISK_RULES", Path, d.rules),
            "model": get("RISK_MODEL", Path, d.model),
            "redis_url": get("REDIS_URL", str, d.redis_url),
            "redis_prefix": get("RISK_REDIS_PREFIX", str, d.redis_prefix),
            "redis_budget_ms": get("RISK_REDIS_BUDGET_MS", _float, d.redis_budget_ms),
            "idempotency_ttl_s": get("RISK_IDEMPOTENCY_TTL_S", _float, d.idempotency_ttl_s),
            "threads": get("RISK_THREADS", _int, d.threads),
            "workers": get("RISK_WORKERS", _int, d.workers),
            "max_concurrent_rpcs": get("RISK_MAX_CONCURRENT_RPCS", _int, d.max_concurrent_rpcs),
            "max_queue_ms": get("RISK_MAX_QUEUE_MS", _float, d.max_queue_ms),
            "breaker_min_failures": get("RISK_BREAKER_MIN_FAILURES", _int, d.breaker_min_failures),
            "breaker_failure_rate": get("RISK_BREAKER_FAILURE_RATE", _float, d.breaker_failure_rate),
            "breaker_window_s": get("RISK_BREAKER_WINDOW_S", _int, d.breaker_window_s),
            "breaker_open_ms": get("RISK_BREAKER_OPEN_MS", _float, d.breaker_open_ms),
            "fallback_horizon_s": get("RISK_FALLBACK_HORIZON_S", _float, d.fallback_horizon_s),
            "fallback_max_entities": get("RISK_FALLBACK_MAX_ENTITIES", _int, d.fallback_max_entities),
            "grace_s": get("RISK_GRACE_S", _float, d.grace_s),
            "reload_interval_s": get("RISK_RELOAD_INTERVAL_S", _float, d.reload_interval_s),
            "drift_interval_s": get("RISK_DRIFT_INTERVAL_S", _float, d.drift_interval_s),
            "metrics_host": get("RISK_METRICS_HOST", str, d.metrics_host),
            "metrics_port": get("RISK_METRICS_PORT", _port_or_off, d.metrics_port),
            "limits": Limits(
                max_event_age_s=get("RISK_MAX_EVENT_AGE_S", _float, dl.max_event_age_s),
                max_event_lead_s=get("RISK_MAX_EVENT_LEAD_S", _float, dl.max_event_lead_s),
            ),
            "log_format": get("RISK_LOG_FORMAT", str, d.log_format),
            "decision_log": get("RISK_DECISION_LOG", _path_or_off, d.decision_log),
            "decision_log_max_file_mb": get("RISK_DECISION_LOG_MAX_FILE_MB", _float, d.decision_log_max_file_mb),
            "decision_log_rotate_s": get("RISK_DECISION_LOG_ROTATE_S", _float, d.decision_log_rotate_s),
            "decision_log_max_total_mb": get("RISK_DECISION_LOG_MAX_TOTAL_MB", _float, d.decision_log_max_total_mb),
            "ruleset_archive": get("RISK_RULESET_ARCHIVE", _archive, d.ruleset_archive),
            "tls_cert": get("RISK_TLS_CERT", Path, d.tls_cert),
            "tls_key": get("RISK_TLS_KEY", Path, d.tls_key),
            "tls_client_ca": get("RISK_TLS_CLIENT_CA", Path, d.tls_client_ca),
            "admin_host": get("RISK_ADMIN_HOST", str, d.admin_host),
            "admin_port": get("RISK_ADMIN_PORT", _port_or_off, DEFAULT_ADMIN_PORT),
            "gc_tuning": get("RISK_GC_TUNING", _on_off, d.gc_tuning),
            "cpu_affinity": get("RISK_CPU_AFFINITY", _on_off, d.cpu_affinity),
            "redis_write_behind": get("RISK_REDIS_WRITE_BEHIND", _on_off, d.redis_write_behind),
            "card_data": get("RISK_CARD_DATA", str, d.card_data),
            "pseudonym_key": env.get("RISK_PSEUDONYM_KEY", "").strip(),
            "pseudonym_key_file": get("RISK_PSEUDONYM_KEY_FILE", Path, d.pseudonym_key_file),
            "clear_ids": get("RISK_CLEAR_IDS", _on_off, d.clear_ids),
            "admin_token_file": get("RISK_ADMIN_TOKEN_FILE", Path, d.admin_token_file),
            "admin_allow": get("RISK_ADMIN_ALLOW", _names, d.admin_allow),
            "insecure": get("RISK_INSECURE", _on_off, d.insecure),
        }
        if problems:
            raise ConfigError(problems)
        return cls(**values)

    def check(self) -> None:
        """Raise ConfigError naming every bad setting (flag / environment variable)."""
        p: list[str] = []
        if not 0 <= self.port <= 65535:
            p.append(f"--port / RISK_PORT must be 0..65535, got {self.port}")
        if self.redis_url and not self.redis_url.startswith(("redis://", "rediss://", "unix://", "redis+cluster://")):
            p.append(
                "--redis-url / REDIS_URL must start with redis://, rediss://, unix:// or redis+cluster://,"
                f" got {self.redacted_redis_url!r}"
            )
        elif self.redis_url.startswith("redis+cluster://"):
            from engine.windows.redis_cluster import parse_cluster_url

            try:
                parse_cluster_url(self.redis_url)
            except ValueError as exc:
                p.append(f"--redis-url / REDIS_URL {self.redacted_redis_url!r}: {exc}")
        if not 1 <= self.redis_budget_ms <= 10_000:
            p.append(f"--redis-budget-ms / RISK_REDIS_BUDGET_MS must be 1..10000 ms, got {self.redis_budget_ms}")
        if not self.idempotency_ttl_s > 0:
            p.append(f"RISK_IDEMPOTENCY_TTL_S must be positive, got {self.idempotency_ttl_s}")
        if not self.reload_interval_s >= 0:
            p.append(
                f"--reload-interval / RISK_RELOAD_INTERVAL_S must be 0 (off) or positive, got {self.reload_interval_s}"
            )
        if not (self.drift_interval_s >= 0 and math.isfinite(self.drift_interval_s)):
            p.append(f"RISK_DRIFT_INTERVAL_S must be 0 (off) or positive, got {self.drift_interval_s}")
        if self.metrics_port is not None and not 0 <= self.metrics_port <= 65535:
            p.append(f"--metrics-port / RISK_METRICS_PORT must be 0..65535 or 'off', got {self.metrics_port}")
        if self.threads < 1:
            p.append(f"--threads / RISK_THREADS must be at least 1, got {self.threads}")
        if self.workers < 1:
            p.append(f"--workers / RISK_WORKERS must be at least 1, got {self.workers}")
        elif self.workers > 1 and not self.redis_url:
            p.append(
                f"--workers / RISK_WORKERS {self.workers} needs Redis (--redis-url / REDIS_URL): with the embedded"
                " in-process store each worker process would keep its own window counts"
            )
        elif self.workers > 1 and sys.platform != "linux":
            p.append(f"--workers / RISK_WORKERS {self.workers} needs Linux (SO_REUSEPORT load balancing)")
        if self.max_concurrent_rpcs < 1:
            p.append(f"RISK_MAX_CONCURRENT_RPCS must be at least 1, got {self.max_concurrent_rpcs}")
        if not self.max_queue_ms > 0:
            p.append(f"RISK_MAX_QUEUE_MS must be positive, got {self.max_queue_ms}")
        if self.breaker_min_failures < 1:
            p.append(f"RISK_BREAKER_MIN_FAILURES must be at least 1, got {self.breaker_min_failures}")
        if not 0 < self.breaker_failure_rate <= 1:
            p.append(f"RISK_BREAKER_FAILURE_RATE must be in (0, 1], got {self.breaker_failure_rate}")
        if not 1 <= self.breaker_window_s <= 3600:
            p.append(f"RISK_BREAKER_WINDOW_S must be 1..3600, got {self.breaker_window_s}")
        if not self.breaker_open_ms > 0:
            p.append(f"RISK_BREAKER_OPEN_MS must be positive, got {self.breaker_open_ms}")
        if not 0 <= self.fallback_horizon_s <= 86400:
            p.append(f"RISK_FALLBACK_HORIZON_S must be 0 (off) to 86400, got {self.fallback_horizon_s}")
        if self.fallback_max_entities < 1:
            p.append(f"RISK_FALLBACK_MAX_ENTITIES must be at least 1, got {self.fallback_max_entities}")
        if not self.grace_s >= 0:
            p.append(f"RISK_GRACE_S must be 0 or positive, got {self.grace_s}")
        if not (self.limits.max_event_age_s > 0 and self.limits.max_event_lead_s >= 0):
            p.append("RISK_MAX_EVENT_AGE_S must be positive and RISK_MAX_EVENT_LEAD_S 0 or positive")
        if self.log_format not in ("json", "text"):
            p.append(f"--log-format / RISK_LOG_FORMAT must be 'json' or 'text', got {self.log_format!r}")
        if not self.rules.exists():
            p.append(f"--rules / RISK_RULES {self.rules}: does not exist ({missing_hint(self.rules)})")
        if not self.model.exists():
            p.append(f"--model / RISK_MODEL {self.model}: does not exist ({missing_hint(self.model)})")
        if self.decision_log is not None:
            if self.decision_log.exists() and not self.decision_log.is_dir():
                p.append(f"--decision-log / RISK_DECISION_LOG {self.decision_log}: not a folder")
            if not self.decision_log_max_file_mb > 0:
                p.append(f"RISK_DECISION_LOG_MAX_FILE_MB must be positive, got {self.decision_log_max_file_mb}")
            if not self.decision_log_rotate_s > 0:
                p.append(f"RISK_DECISION_LOG_ROTATE_S must be positive, got {self.decision_log_rotate_s}")
            if not self.decision_log_max_total_mb >= self.decision_log_max_file_mb:
                p.append(
                    "RISK_DECISION_LOG_MAX_TOTAL_MB must be at least RISK_DECISION_LOG_MAX_FILE_MB,"
                    f" got {self.decision_log_max_total_mb} < {self.decision_log_max_file_mb}"
                )
        if not _is_loopback(self.host) and not self.tls and not self.insecure:
            p.append(
                f"--host / RISK_HOST {self.host!r} is not a loopback address: the scoring port listens beyond"
                " localhost only with TLS (--tls-cert, --tls-key), or in plaintext with an explicit --insecure /"
                " RISK_INSECURE=on (payment data would cross the network unencrypted)"
            )
        if (self.tls_cert is None) != (self.tls_key is None):
            p.append("--tls-cert / RISK_TLS_CERT and --tls-key / RISK_TLS_KEY go together: set both or neither")
        if self.tls_client_ca is not None and self.tls_cert is None:
            p.append("--tls-client-ca / RISK_TLS_CLIENT_CA (mutual TLS) needs --tls-cert and --tls-key")
        for flag, path in (
            ("--tls-cert / RISK_TLS_CERT", self.tls_cert),
            ("--tls-key / RISK_TLS_KEY", self.tls_key),
            ("--tls-client-ca / RISK_TLS_CLIENT_CA", self.tls_client_ca),
        ):
            if path is not None and not path.is_file():
                p.append(f"{flag} {path}: no such file")
            elif path is not None and not os.access(path, os.R_OK):
                p.append(f"{flag} {path}: not readable")
        if self.admin_port is not None:
            if not 0 <= self.admin_port <= 65535:
                p.append(f"--admin-port / RISK_ADMIN_PORT must be 0..65535 or 'off', got {self.admin_port}")
            if not _is_loopback(self.admin_host) and self.tls_client_ca is None:
                p.append(
                    f"--admin-host / RISK_ADMIN_HOST {self.admin_host!r} is not a loopback address: the admin"
                    " service may listen beyond localhost only with mutual TLS (--tls-client-ca)"
                )
            elif self.admin_port != 0 and self.admin_port == self.port:
                p.append(f"--admin-port must differ from --port ({self.port})")
        if self.card_data not in ("refuse", "mask"):
            p.append(f"--card-data / RISK_CARD_DATA must be 'refuse' or 'mask', got {self.card_data!r}")
        if self.pseudonym_key and self.pseudonym_key_file is not None:
            p.append("RISK_PSEUDONYM_KEY and --pseudonym-key-file / RISK_PSEUDONYM_KEY_FILE: set one, not both")
        elif self.pseudonym_key:
            try:
                parse_key(self.pseudonym_key)
            except ValueError as exc:
                p.append(f"RISK_PSEUDONYM_KEY: {exc}")  # never the value itself
        elif self.pseudonym_key_file is not None:
            try:
                parse_key(self.pseudonym_key_file.read_text())
            except OSError as exc:
                p.append(f"--pseudonym-key-file / RISK_PSEUDONYM_KEY_FILE {self.pseudonym_key_file}: {exc.strerror}")
            except (ValueError, UnicodeDecodeError) as exc:
                p.append(f"--pseudonym-key-file / RISK_PSEUDONYM_KEY_FILE {self.pseudonym_key_file}: {exc}")
        if p:
            raise ConfigError(p)

    def beside_data(self, name: str) -> Path:
        """Where a generated secret lives: beside the decision log (shared by the workers of `--workers N`), else
        in the user's state folder (`$XDG_STATE_HOME/risk-engine`, by default `~/.local/state/risk-engine`)."""
        if self.decision_log is not None:
            root = self.decision_log.parent if self.worker_index is not None else self.decision_log
            return root / name
        state = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
        return Path(state) / "risk-engine" / name

    @property
    def pseudonym_key_path(self) -> Path:
        return self.beside_data("pseudonym.key")

    @property
    def admin_token_path(self) -> Path:
        """The admin token's file: `admin_token_file`, else generated beside the data (`beside_data`)."""
        return self.admin_token_file if self.admin_token_file is not None else self.beside_data("admin.token")

    def admin_token(self) -> tuple[str, bool]:
        """The admin bearer token and whether it was generated now (0600, 32 random bytes in hex)."""
        path = self.admin_token_path
        try:
            if self.admin_token_file is None:
                key, created = load_or_create_key(path)
                return key.hex(), created
            token = path.read_text().strip()
        except (OSError, ValueError) as exc:
            raise ConfigError(f"--admin-token-file / RISK_ADMIN_TOKEN_FILE {path}: {exc}") from None
        if len(token) < 16:
            raise ConfigError(
                f"--admin-token-file / RISK_ADMIN_TOKEN_FILE {path}: the token has at least 16 characters"
            )
        return token, False

    def pseudonyms(self) -> tuple[Pseudonyms, str]:
        """The pseudonym key of this server and where it came from (for the start log line; never the key).

        Generates and keeps one (0600) at `pseudonym_key_path` when none is configured.
        """
        if self.pseudonym_key:
            return Pseudonyms(parse_key(self.pseudonym_key)), "RISK_PSEUDONYM_KEY"
        if self.pseudonym_key_file is not None:
            try:
                return Pseudonyms(parse_key(self.pseudonym_key_file.read_text())), str(self.pseudonym_key_file)
            except (OSError, ValueError) as exc:
                raise ConfigError(f"--pseudonym-key-file / RISK_PSEUDONYM_KEY_FILE: {exc}") from None
        path = self.pseudonym_key_path
        try:
            key, created = load_or_create_key(path)
        except (OSError, ValueError) as exc:
            raise ConfigError(f"pseudonym key {path}: {exc} (set RISK_PSEUDONYM_KEY_FILE)") from None
        return Pseudonyms(key), f"{path} ({'generated now' if created else 'generated earlier'})"

    def summary(self) -> dict[str, object]:
        """What the server runs with, safe to log (no secrets)."""
        return {
            "host": self.host,
            "rules": str(self.rules),
            "model": str(self.model),
            "redis": self.redacted_redis_url or "embedded",
            "redis_budget_ms": self.redis_budget_ms,
            "threads": self.threads,
            "workers": self.workers,
            "worker_index": self.worker_index,
            "max_concurrent_rpcs": self.max_concurrent_rpcs,
            "max_queue_ms": self.max_queue_ms,
            "fallback_horizon_s": self.fallback_horizon_s,
            "tls": "mutual" if self.tls_client_ca else ("on" if self.tls else "off"),
            "insecure": self.insecure,
            "decision_log": str(self.decision_log) if self.decision_log else "off",
            "ruleset_archive": str(self.archive) if self.archive else "off",
            "card_data": self.card_data,
            "ids": "clear" if self.clear_ids else "pseudonyms",
        }


def unknown_env(environ: Mapping[str, str] | None = None) -> list[str]:
    """RISK_* variables the service does not read (typos, most likely)."""
    env = os.environ if environ is None else environ
    return sorted(k for k in env if k.startswith("RISK_") and k not in ENV_VARS)


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def _on_off(text: str) -> bool:
    if text.lower() in ("on", "true", "1", "yes"):
        return True
    if text.lower() in ("off", "false", "0", "no"):
        return False
    raise ValueError("expected on or off")


def _names(text: str) -> tuple[str, ...]:
    return tuple(n.strip() for n in text.split(",") if n.strip())


def _int(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise ValueError("not an integer") from None


def _float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise ValueError("not a number") from None
    if value != value or value in (float("inf"), float("-inf")):
        raise ValueError("not a finite number")
    return value


def _port_or_off(text: str) -> int | None:
    if text.lower() == "off":
        return None
    try:
        return int(text)
    except ValueError:
        raise ValueError("not a port number or 'off'") from None


def _path_or_off(text: str) -> Path | None:
    return None if text.lower() == "off" else Path(text)


#: `RISK_RULESET_ARCHIVE=off`: keep no copy of the rule sets loaded.
ARCHIVE_OFF = Path("/dev/null/off")


def _archive(text: str) -> Path:
    return ARCHIVE_OFF if text.lower() == "off" else Path(text)
