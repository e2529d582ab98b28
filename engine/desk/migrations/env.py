"""Alembic environment of the review desk: runs on the connection `engine.desk.db.migrate` hands it."""

from __future__ import annotations

from alembic import context

from engine.desk.schema import metadata

connection = context.config.attributes.get("connection")
if connection is None:
    raise RuntimeError("run the desk's migrations through engine.desk.db.migrate (risk-engine console migrates)")
context.configure(connection=connection, target_metadata=metadata, render_as_batch=True)
with context.begin_transaction():
    context.run_migrations()
