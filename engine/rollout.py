"""Stable buckets of a transaction id: how gradual rollouts and challenger splits choose their share.

`rollout_bucket(key, transaction_id)` hashes a key (a rule id, or the
challenger split's own key) with the transaction id into one of `BUCKETS`
buckets, so a retry lands in the same bucket and each key samples its share
independently of every other key.
"""

from __future__ import annotations

import hashlib

#: Rollout buckets: a percentage is compared in hundredths (10000 buckets).
BUCKETS = 10_000


def rollout_bucket(rule_id: str, transaction_id: str) -> int:
    """The transaction's stable bucket (0..9999) for a rule's rollout (or another key's share)."""
    digest = hashlib.blake2b(f"{rule_id}\x1f{transaction_id}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") % BUCKETS
