"""The offline doors: reading labeled history, replaying it through the pipeline, training.

Everything here drives `engine.pipeline.Pipeline` with an in-process window
store; no feature or rule is computed a second way.
"""
