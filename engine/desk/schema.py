"""The review desk's tables (SQLAlchemy Core); the migrations in `engine/desk/migrations` create them.

Times are milliseconds since the Unix epoch (UTC) in BIGINT columns: the same
in PostgreSQL and SQLite, and the unit of the decision log.

- `cases`: one per flagged decision (every review; sampled allows and
  denies), with the transaction as the decision log gives it (ids as stored:
  tokens, never card numbers), the decision, reasons, model contributions
  and features (`record`, the log line as JSON), the enrichment (IP country
  and region, amount in the base currency), versions, and the review state:
  `status` open | escalated | resolved, who claimed it, how it was resolved,
  and where its label stands (`label_state` pending | sent | failed).
- `case_reasons`: (case, reason code, rule id) rows, for the per-rule
  precision of the dashboard (the queue filters on the case's own
  `reason_codes` and `rule_ids`, so that it can walk a sort index in order).
- `decisions`: every decision of the log, compact, for the recent history
  of a card, device or IP on the case page (pruned after `history_days`).
- `decision_hours`, `rule_hits`: counts per hour and decision, per day and
  rule, kept by the projector for the dashboard.
- `log_offsets`: how far the projector has read each decision log file.
- `users`, `sessions`, `notes`, `audit`, `list_entries`: people, their
  sessions, their notes, every action (who, what, when, before, after) and
  the block-list entries they added (who, when, why).
"""

from __future__ import annotations

from sqlalchemy import (
    BigInteger,
    Boolean,
    Column,
    Float,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    text,
)

metadata = MetaData()

#: Case statuses: open (in the queue), escalated (waiting for a lead), resolved (decided; final).
OPEN, ESCALATED, RESOLVED = "open", "escalated", "resolved"
UNRESOLVED = (OPEN, ESCALATED)
#: Resolutions, sent to the engine as the Feedback outcomes of the same names.
FRAUD, GENUINE = "fraud", "genuine"
#: Case kinds: a review decision, or a sample of allows (quality checks) or denies (appeals).
REVIEW, ALLOW_SAMPLE, DENY_SAMPLE = "review", "allow_sample", "deny_sample"
#: Roles.
ANALYST, LEAD = "analyst", "lead"

_ACTIVE = "status IN ('open', 'escalated')"

cases = Table(
    "cases",
    metadata,
    Column("id", BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True),
    Column("transaction_id", String(128), nullable=False, unique=True),
    Column("kind", String(16), nullable=False),
    Column("status", String(16), nullable=False, server_default=OPEN),
    Column("created_at_ms", BigInteger, nullable=False),
    Column("decided_at_ms", BigInteger, nullable=False),
    Column("event_time_ms", BigInteger, nullable=False),
    Column("decision", String(8), nullable=False),
    Column("score", Float),
    Column("degraded", Boolean, nullable=False, server_default=text("false")),
    Column("amount_minor", BigInteger, nullable=False),
    Column("currency", String(3), nullable=False),
    Column("amount_base", Float),
    Column("user_id", String(128), nullable=False, server_default=""),
    Column("card_id", String(128), nullable=False, server_default=""),
    Column("device_id", String(128), nullable=False, server_default=""),
    Column("ip", String(64), nullable=False, server_default=""),
    Column("country", String(2), nullable=False, server_default=""),
    Column("ip_country", String(2), nullable=False, server_default=""),
    Column("ip_region", String(8), nullable=False, server_default=""),
    Column("merchant_id", String(128), nullable=False, server_default=""),
    Column("merchant_category", String(8), nullable=False, server_default=""),
    Column("channel", String(16), nullable=False, server_default=""),
    Column("ruleset_version", String(128), nullable=False, server_default=""),
    Column("ruleset_digest", String(64), nullable=False, server_default=""),
    Column("model_version", String(128), nullable=False, server_default=""),
    Column("record", Text, nullable=False),
    # " CODE1 CODE2 " and " rule_a rule_b ": the queue filters on them while it walks an index in order.
    Column("reason_codes", String(1024), nullable=False, server_default=""),
    Column("rule_ids", String(2048), nullable=False, server_default=""),
    Column("claimed_by", String(64)),
    Column("claimed_at_ms", BigInteger),
    Column("escalated_by", String(64)),
    Column("resolution", String(8)),
    Column("resolved_by", String(64)),
    Column("resolved_at_ms", BigInteger),
    Column("label_state", String(8)),
    Column("label_sent_at_ms", BigInteger),
    Column("label_attempts", Integer, nullable=False, server_default="0"),
    Column("label_error", Text),
    # The queue: unresolved cases in each sort order (read forwards or backwards), the assignee filter.
    Index("cases_active_age", "decided_at_ms", "id", postgresql_where=text(_ACTIVE), sqlite_where=text(_ACTIVE)),
    Index(
        "cases_active_score",
        text("score DESC"),
        "id",
        postgresql_where=text(_ACTIVE),
        sqlite_where=text(_ACTIVE),
    ),
    Index(
        "cases_active_amount",
        text("amount_base DESC"),
        "id",
        postgresql_where=text(_ACTIVE),
        sqlite_where=text(_ACTIVE),
    ),
    Index("cases_status_age", "status", "decided_at_ms"),
    Index("cases_claimed_by", "claimed_by", "status"),
    Index("cases_resolved_at", "resolved_at_ms"),
    Index("cases_label_pending", "label_state", "resolved_at_ms"),
)

case_reasons = Table(
    "case_reasons",
    metadata,
    Column("case_id", BigInteger, ForeignKey("cases.id", ondelete="CASCADE"), nullable=False),
    Column("code", String(64), nullable=False),
    Column("rule_id", String(128), nullable=False, server_default=""),
    Column("source", String(8), nullable=False, server_default=""),
    Index("case_reasons_code", "code", "case_id"),
    Index("case_reasons_rule", "rule_id", "case_id"),
    Index("case_reasons_case", "case_id"),
)

decisions = Table(
    "decisions",
    metadata,
    Column("transaction_id", String(128), primary_key=True),
    Column("decided_at_ms", BigInteger, nullable=False),
    Column("event_time_ms", BigInteger, nullable=False),
    Column("decision", String(8), nullable=False),
    Column("score", Float),
    Column("amount_minor", BigInteger, nullable=False),
    Column("currency", String(3), nullable=False),
    Column("card_id", String(128), nullable=False, server_default=""),
    Column("device_id", String(128), nullable=False, server_default=""),
    Column("ip", String(64), nullable=False, server_default=""),
    Column("merchant_id", String(128), nullable=False, server_default=""),
    Column("reasons", String(512), nullable=False, server_default=""),
    Index("decisions_card", "card_id", "decided_at_ms"),
    Index("decisions_device", "device_id", "decided_at_ms"),
    Index("decisions_ip", "ip", "decided_at_ms"),
    Index("decisions_age", "decided_at_ms"),
)

decision_hours = Table(
    "decision_hours",
    metadata,
    Column("hour_ms", BigInteger, primary_key=True),
    Column("decision", String(8), primary_key=True),
    Column("n", BigInteger, nullable=False),
)

rule_hits = Table(
    "rule_hits",
    metadata,
    Column("day_ms", BigInteger, primary_key=True),
    Column("rule_id", String(128), primary_key=True),
    Column("n", BigInteger, nullable=False),
)

log_offsets = Table(
    "log_offsets",
    metadata,
    Column("path", String(512), primary_key=True),
    Column("position", BigInteger, nullable=False),
    Column("updated_at_ms", BigInteger, nullable=False),
)

users = Table(
    "users",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("name", String(64), nullable=False, unique=True),
    Column("role", String(16), nullable=False),
    Column("password_hash", String(256)),  # None: signs in only through the trusted proxy header
    Column("active", Boolean, nullable=False, server_default=text("true")),
    Column("created_at_ms", BigInteger, nullable=False),
)

sessions = Table(
    "sessions",
    metadata,
    Column("token_hash", String(64), primary_key=True),  # sha256 of the cookie: a stolen table opens nothing
    Column("user_id", Integer, ForeignKey("users.id", ondelete="CASCADE"), nullable=False),
    Column("csrf", String(64), nullable=False),
    Column("created_at_ms", BigInteger, nullable=False),
    Column("last_seen_ms", BigInteger, nullable=False),
    Index("sessions_user", "user_id"),
)

notes = Table(
    "notes",
    metadata,
    Column("id", BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True),
    Column("case_id", BigInteger, ForeignKey("cases.id", ondelete="CASCADE"), nullable=False),
    Column("author", String(64), nullable=False),
    Column("at_ms", BigInteger, nullable=False),
    Column("text", Text, nullable=False),
    Index("notes_case", "case_id", "at_ms"),
)

audit = Table(
    "audit",
    metadata,
    Column("id", BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True),
    Column("at_ms", BigInteger, nullable=False),
    Column("actor", String(64), nullable=False),
    Column("action", String(32), nullable=False),
    Column("case_id", BigInteger),
    Column("target", String(256), nullable=False, server_default=""),
    Column("before", Text),  # JSON of the fields the action changed, as they were
    Column("after", Text),  # ... and as they are
    Column("detail", Text, nullable=False, server_default=""),
    Index("audit_case", "case_id", "at_ms"),
    Index("audit_at", "at_ms"),
    Index("audit_actor", "actor", "at_ms"),
)

list_entries = Table(
    "list_entries",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("list_name", String(64), nullable=False),
    Column("value", String(128), nullable=False),
    Column("added_by", String(64), nullable=False),
    Column("added_at_ms", BigInteger, nullable=False),
    Column("reason", Text, nullable=False),
    Column("case_id", BigInteger),
    Column("removed_by", String(64)),
    Column("removed_at_ms", BigInteger),
    Index("list_entries_value", "list_name", "value"),
)
