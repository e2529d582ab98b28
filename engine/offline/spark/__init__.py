"""The offline engine on Apache Spark: replay, backtest, training and the parity audit beyond one machine.

The local replay (`engine.offline.replay`) runs every store call of a
history in event-time order through one in-process store. Each window group
depends only on its own entity's events, so Spark computes the same answers
where the data is, in three steps, with the very code of the local engine:

1. bind (`windows.bind_events`): each transaction, and each label as it
   becomes known, goes through the pipeline's own validation, enrichment and
   binding (`Pipeline.add_to_windows` and `Pipeline.feedback` on a store that
   only keeps what they bound): one event row per window group it touches;
2. windows (`windows.series_answers`): the events are partitioned by group
   and entity value (a hot entity split by time, with a warm-up overlap, see
   `hotkeys`), sorted as the local replay orders them, and each series is
   replayed through a `MemoryStore` (the compiled per-series loop); each
   transaction's answer for that group is joined back by row;
3. score (`score`): per partition of transactions, the pipeline runs on an
   `AnswerStore` holding the joined answers: derived features, model, rules
   and decisions, exactly as the local replay would compute them.

The per-transaction table, the summary's counts (`backtest.Tally`, merged)
and the training features come out identical to the local engine's (tested
on `local[2]` and on a standalone cluster, tests/parity/test_spark.py, tests/integration/test_spark_cluster.py).
"""
