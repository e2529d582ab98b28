"""The review desk: cases from the decision log, an analyst console in the browser, labels back to the engine.

It sits above the engine: it reads the decision log the server writes
(`--decision-log`), keeps cases in a database (PostgreSQL, or SQLite for
first looks), serves server-rendered pages to analysts and leads, sends
their resolutions to the engine as `Feedback` labels (the rpc the gateway's
case tools would call) and writes their blocks into the list files the
rule set reloads. The engine core never imports it.

Modules: `schema` (tables), `db` (connections and migrations), `projector`
(decision log -> cases), `cases` (the queue and every case action, each
with its audit entry), `labels` (resolutions -> Feedback), `blocks` (list
files), `auth` (users, sessions, CSRF), `wording` (reasons and model
contributions in plain words), `dashboard`, `web` (the pages) and `console`
(the command).
"""
