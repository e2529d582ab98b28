"""What tests and benchmarks share, and the only thing they share.

`redis` (a redis-server child process), `cluster` (a local Redis Cluster),
`certs` (a CA and certificates made with openssl), `mmdb` (a writer of
MaxMind DB files), `served` (a served engine's config, health, waiting),
`faults` (a `risk-engine serve` process under steady load while faults are
injected), `requests` (Score requests), `windows` (plans, events, answers)
and `models` (feature rows at a model's edges).
"""

from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent.parent
RULES = ROOT / "rules"
