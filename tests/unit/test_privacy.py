"""Pseudonyms, keys and IP truncation (engine.privacy)."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from engine.privacy import Pseudonyms, is_pseudonym, load_or_create_key, parse_key, truncate_ip


def test_a_pseudonym_is_stable_keyed_and_does_not_carry_the_value() -> None:
    a, b = Pseudonyms(b"a" * 32), Pseudonyms(b"b" * 32)
    assert a.of("card 1") == a.of("card 1") == Pseudonyms(b"a" * 32).of("card 1")
    assert a.of("card 1") != a.of("card 2")
    assert a.of("card 1") != b.of("card 1")  # another key, another pseudonym
    assert is_pseudonym(a.of("商户")) and "card" not in a.of("card 1")
    assert a.of("") == ""  # an absent id stays absent
    assert a.of(a.of("card 1")) == a.of("card 1")  # read back from the decision log: unchanged
    assert a.fingerprint() != b.fingerprint() and len(a.fingerprint()) == 12


def test_short_keys_are_refused() -> None:
    with pytest.raises(ValueError, match="at least 16 bytes"):
        Pseudonyms(b"short")
    with pytest.raises(ValueError, match="at least 32 hex digits"):
        parse_key("abcd")
    assert parse_key("00" * 16) == bytes(16)
    assert (
        parse_key("a passphrase of at least thirty-two characters") == b"a passphrase of at least thirty-two characters"
    )


def test_a_missing_key_is_generated_private_once(tmp_path: Path) -> None:
    path = tmp_path / "data" / "pseudonym.key"
    key, created = load_or_create_key(path)
    assert created and len(key) == 32
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert load_or_create_key(path) == (key, False)


@pytest.mark.parametrize(
    ("sent", "kept"),
    [
        ("85.214.132.117", "85.214.132.0"),
        ("2001:db8:1234:5678::1", "2001:db8:1234::"),
        ("", ""),
        ("not an ip", ""),
    ],
)
def test_ips_are_cut_to_their_network(sent: str, kept: str) -> None:
    assert truncate_ip(sent) == kept


def test_a_transaction_id_gets_the_same_pseudonym_through_its_own_cache() -> None:
    """`of_once` (transaction ids: a small cache of their own) answers what `of` answers, cached or not."""
    keys = Pseudonyms(b"k" * 32)
    ids = [f"txn-{i}" for i in range(10_000)]  # more than the small cache holds: it is cleared on the way
    once = [keys.of_once(i) for i in ids]
    assert once == [Pseudonyms(b"k" * 32).of(i) for i in ids]
    assert [keys.of_once(i) for i in ids[-10:]] == once[-10:]
    assert keys.of_once("") == "" and keys.of_once(once[0]) == once[0]  # absent stays absent; a pseudonym stays
    assert all(is_pseudonym(p) for p in once) and len(set(once)) == len(ids)
