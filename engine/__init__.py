"""Real-time transaction risk engine.

The engine owns the domain: transactions, enrichment, frequency windows, the
model, rules and the decision. It imports nothing from `engine.service` (the
gRPC layer) or `engine.offline` (replay and training), which both drive it.
"""

__version__ = "0.1.0"
