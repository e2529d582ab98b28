"""The first schema: cases, their reasons, decisions, counts, log offsets, users, sessions, notes, audit, lists.

Revision ID: 0001
Revises:
Create Date: 2026-12-06 20:59:06.951690
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "audit",
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), autoincrement=True, nullable=False),
        sa.Column("at_ms", sa.BigInteger(), nullable=False),
        sa.Column("actor", sa.String(length=64), nullable=False),
        sa.Column("action", sa.String(length=32), nullable=False),
        sa.Column("case_id", sa.BigInteger(), nullable=True),
        sa.Column("target", sa.String(length=256), server_default="", nullable=False),
        sa.Column("before", sa.Text(), nullable=True),
        sa.Column("after", sa.Text(), nullable=True),
        sa.Column("detail", sa.Text(), server_default="", nullable=False),
        sa.PrimaryKeyConstraint("id"),
    )
    with op.batch_alter_table("audit", schema=None) as batch_op:
        batch_op.create_index("audit_actor", ["actor", "at_ms"], unique=False)
        batch_op.create_index("audit_at", ["at_ms"], unique=False)
        batch_op.create_index("audit_case", ["case_id", "at_ms"], unique=False)

    op.create_table(
        "cases",
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), autoincrement=True, nullable=False),
        sa.Column("transaction_id", sa.String(length=128), nullable=False),
        sa.Column("kind", sa.String(length=16), nullable=False),
        sa.Column("status", sa.String(length=16), server_default="open", nullable=False),
        sa.Column("created_at_ms", sa.BigInteger(), nullable=False),
        sa.Column("decided_at_ms", sa.BigInteger(), nullable=False),
        sa.Column("event_time_ms", sa.BigInteger(), nullable=False),
        sa.Column("decision", sa.String(length=8), nullable=False),
        sa.Column("score", sa.Float(), nullable=True),
        sa.Column("degraded", sa.Boolean(), server_default=sa.text("false"), nullable=False),
        sa.Column("amount_minor", sa.BigInteger(), nullable=False),
        sa.Column("currency", sa.String(length=3), nullable=False),
        sa.Column("amount_base", sa.Float(), nullable=True),
        sa.Column("user_id", sa.String(length=128), server_default="", nullable=False),
        sa.Column("card_id", sa.String(length=128), server_default="", nullable=False),
        sa.Column("device_id", sa.String(length=128), server_default="", nullable=False),
        sa.Column("ip", sa.String(length=64), server_default="", nullable=False),
        sa.Column("country", sa.String(length=2), server_default="", nullable=False),
        sa.Column("ip_country", sa.String(length=2), server_default="", nullable=False),
        sa.Column("ip_region", sa.String(length=8), server_default="", nullable=False),
        sa.Column("merchant_id", sa.String(length=128), server_default="", nullable=False),
        sa.Column("merchant_category", sa.String(length=8), server_default="", nullable=False),
        sa.Column("channel", sa.String(length=16), server_default="", nullable=False),
        sa.Column("ruleset_version", sa.String(length=128), server_default="", nullable=False),
        sa.Column("ruleset_digest", sa.String(length=64), server_default="", nullable=False),
        sa.Column("model_version", sa.String(length=128), server_default="", nullable=False),
        sa.Column("record", sa.Text(), nullable=False),
        sa.Column("reason_codes", sa.String(length=1024), server_default="", nullable=False),
        sa.Column("rule_ids", sa.String(length=2048), server_default="", nullable=False),
        sa.Column("claimed_by", sa.String(length=64), nullable=True),
        sa.Column("claimed_at_ms", sa.BigInteger(), nullable=True),
        sa.Column("escalated_by", sa.String(length=64), nullable=True),
        sa.Column("resolution", sa.String(length=8), nullable=True),
        sa.Column("resolved_by", sa.String(length=64), nullable=True),
        sa.Column("resolved_at_ms", sa.BigInteger(), nullable=True),
        sa.Column("label_state", sa.String(length=8), nullable=True),
        sa.Column("label_sent_at_ms", sa.BigInteger(), nullable=True),
        sa.Column("label_attempts", sa.Integer(), server_default="0", nullable=False),
        sa.Column("label_error", sa.Text(), nullable=True),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("transaction_id"),
    )
    with op.batch_alter_table("cases", schema=None) as batch_op:
        batch_op.create_index(
            "cases_active_age",
            ["decided_at_ms", "id"],
            unique=False,
            postgresql_where=sa.text("status IN ('open', 'escalated')"),
            sqlite_where=sa.text("status IN ('open', 'escalated')"),
        )
        batch_op.create_index(
            "cases_active_amount",
            [sa.literal_column("amount_base DESC"), "id"],
            unique=False,
            postgresql_where=sa.text("status IN ('open', 'escalated')"),
            sqlite_where=sa.text("status IN ('open', 'escalated')"),
        )
        batch_op.create_index(
            "cases_active_score",
            [sa.literal_column("score DESC"), "id"],
            unique=False,
            postgresql_where=sa.text("status IN ('open', 'escalated')"),
            sqlite_where=sa.text("status IN ('open', 'escalated')"),
        )
        batch_op.create_index("cases_claimed_by", ["claimed_by", "status"], unique=False)
        batch_op.create_index("cases_label_pending", ["label_state", "resolved_at_ms"], unique=False)
        batch_op.create_index("cases_resolved_at", ["resolved_at_ms"], unique=False)
        batch_op.create_index("cases_status_age", ["status", "decided_at_ms"], unique=False)

    op.create_table(
        "decision_hours",
        sa.Column("hour_ms", sa.BigInteger(), nullable=False),
        sa.Column("decision", sa.String(length=8), nullable=False),
        sa.Column("n", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("hour_ms", "decision"),
    )
    op.create_table(
        "decisions",
        sa.Column("transaction_id", sa.String(length=128), nullable=False),
        sa.Column("decided_at_ms", sa.BigInteger(), nullable=False),
        sa.Column("event_time_ms", sa.BigInteger(), nullable=False),
        sa.Column("decision", sa.String(length=8), nullable=False),
        sa.Column("score", sa.Float(), nullable=True),
        sa.Column("amount_minor", sa.BigInteger(), nullable=False),
        sa.Column("currency", sa.String(length=3), nullable=False),
        sa.Column("card_id", sa.String(length=128), server_default="", nullable=False),
        sa.Column("device_id", sa.String(length=128), server_default="", nullable=False),
        sa.Column("ip", sa.String(length=64), server_default="", nullable=False),
        sa.Column("merchant_id", sa.String(length=128), server_default="", nullable=False),
        sa.Column("reasons", sa.String(length=512), server_default="", nullable=False),
        sa.PrimaryKeyConstraint("transaction_id"),
    )
    with op.batch_alter_table("decisions", schema=None) as batch_op:
        batch_op.create_index("decisions_age", ["decided_at_ms"], unique=False)
        batch_op.create_index("decisions_card", ["card_id", "decided_at_ms"], unique=False)
        batch_op.create_index("decisions_device", ["device_id", "decided_at_ms"], unique=False)
        batch_op.create_index("decisions_ip", ["ip", "decided_at_ms"], unique=False)

    op.create_table(
        "list_entries",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("list_name", sa.String(length=64), nullable=False),
        sa.Column("value", sa.String(length=128), nullable=False),
        sa.Column("added_by", sa.String(length=64), nullable=False),
        sa.Column("added_at_ms", sa.BigInteger(), nullable=False),
        sa.Column("reason", sa.Text(), nullable=False),
        sa.Column("case_id", sa.BigInteger(), nullable=True),
        sa.Column("removed_by", sa.String(length=64), nullable=True),
        sa.Column("removed_at_ms", sa.BigInteger(), nullable=True),
        sa.PrimaryKeyConstraint("id"),
    )
    with op.batch_alter_table("list_entries", schema=None) as batch_op:
        batch_op.create_index("list_entries_value", ["list_name", "value"], unique=False)

    op.create_table(
        "log_offsets",
        sa.Column("path", sa.String(length=512), nullable=False),
        sa.Column("position", sa.BigInteger(), nullable=False),
        sa.Column("updated_at_ms", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("path"),
    )
    op.create_table(
        "rule_hits",
        sa.Column("day_ms", sa.BigInteger(), nullable=False),
        sa.Column("rule_id", sa.String(length=128), nullable=False),
        sa.Column("n", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("day_ms", "rule_id"),
    )
    op.create_table(
        "users",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("name", sa.String(length=64), nullable=False),
        sa.Column("role", sa.String(length=16), nullable=False),
        sa.Column("password_hash", sa.String(length=256), nullable=True),
        sa.Column("active", sa.Boolean(), server_default=sa.text("true"), nullable=False),
        sa.Column("created_at_ms", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("name"),
    )
    op.create_table(
        "case_reasons",
        sa.Column("case_id", sa.BigInteger(), nullable=False),
        sa.Column("code", sa.String(length=64), nullable=False),
        sa.Column("rule_id", sa.String(length=128), server_default="", nullable=False),
        sa.Column("source", sa.String(length=8), server_default="", nullable=False),
        sa.ForeignKeyConstraint(["case_id"], ["cases.id"], ondelete="CASCADE"),
    )
    with op.batch_alter_table("case_reasons", schema=None) as batch_op:
        batch_op.create_index("case_reasons_case", ["case_id"], unique=False)
        batch_op.create_index("case_reasons_code", ["code", "case_id"], unique=False)
        batch_op.create_index("case_reasons_rule", ["rule_id", "case_id"], unique=False)

    op.create_table(
        "notes",
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), autoincrement=True, nullable=False),
        sa.Column("case_id", sa.BigInteger(), nullable=False),
        sa.Column("author", sa.String(length=64), nullable=False),
        sa.Column("at_ms", sa.BigInteger(), nullable=False),
        sa.Column("text", sa.Text(), nullable=False),
        sa.ForeignKeyConstraint(["case_id"], ["cases.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id"),
    )
    with op.batch_alter_table("notes", schema=None) as batch_op:
        batch_op.create_index("notes_case", ["case_id", "at_ms"], unique=False)

    op.create_table(
        "sessions",
        sa.Column("token_hash", sa.String(length=64), nullable=False),
        sa.Column("user_id", sa.Integer(), nullable=False),
        sa.Column("csrf", sa.String(length=64), nullable=False),
        sa.Column("created_at_ms", sa.BigInteger(), nullable=False),
        sa.Column("last_seen_ms", sa.BigInteger(), nullable=False),
        sa.ForeignKeyConstraint(["user_id"], ["users.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("token_hash"),
    )
    with op.batch_alter_table("sessions", schema=None) as batch_op:
        batch_op.create_index("sessions_user", ["user_id"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("sessions", schema=None) as batch_op:
        batch_op.drop_index("sessions_user")

    op.drop_table("sessions")
    with op.batch_alter_table("notes", schema=None) as batch_op:
        batch_op.drop_index("notes_case")

    op.drop_table("notes")
    with op.batch_alter_table("case_reasons", schema=None) as batch_op:
        batch_op.drop_index("case_reasons_rule")
        batch_op.drop_index("case_reasons_code")
        batch_op.drop_index("case_reasons_case")

    op.drop_table("case_reasons")
    op.drop_table("users")
    op.drop_table("rule_hits")
    op.drop_table("log_offsets")
    with op.batch_alter_table("list_entries", schema=None) as batch_op:
        batch_op.drop_index("list_entries_value")

    op.drop_table("list_entries")
    with op.batch_alter_table("decisions", schema=None) as batch_op:
        batch_op.drop_index("decisions_ip")
        batch_op.drop_index("decisions_device")
        batch_op.drop_index("decisions_card")
        batch_op.drop_index("decisions_age")

    op.drop_table("decisions")
    op.drop_table("decision_hours")
    with op.batch_alter_table("cases", schema=None) as batch_op:
        batch_op.drop_index("cases_status_age")
        batch_op.drop_index("cases_resolved_at")
        batch_op.drop_index("cases_label_pending")
        batch_op.drop_index("cases_claimed_by")
        batch_op.drop_index(
            "cases_active_score",
            postgresql_where=sa.text("status IN ('open', 'escalated')"),
            sqlite_where=sa.text("status IN ('open', 'escalated')"),
        )
        batch_op.drop_index(
            "cases_active_amount",
            postgresql_where=sa.text("status IN ('open', 'escalated')"),
            sqlite_where=sa.text("status IN ('open', 'escalated')"),
        )
        batch_op.drop_index(
            "cases_active_age",
            postgresql_where=sa.text("status IN ('open', 'escalated')"),
            sqlite_where=sa.text("status IN ('open', 'escalated')"),
        )

    op.drop_table("cases")
    with op.batch_alter_table("audit", schema=None) as batch_op:
        batch_op.drop_index("audit_case")
        batch_op.drop_index("audit_at")
        batch_op.drop_index("audit_actor")

    op.drop_table("audit")
