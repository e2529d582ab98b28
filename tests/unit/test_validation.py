"""Request validation: ids as real systems send them, refused only for what cannot be an id."""

from __future__ import annotations

from dataclasses import replace

import pytest

from engine.transaction import Transaction
from engine.validation import InvalidTransaction, Limits, validate

T0 = 1_700_000_000_000
BASE = Transaction("v-1", T0, 100, "EUR", card_id="c1", user_id="u1")
ID_FIELDS = ["transaction_id", "user_id", "card_id", "device_id", "merchant_id"]


@pytest.mark.parametrize("name", ID_FIELDS)
@pytest.mark.parametrize(
    "value",
    [
        "ACME Coffee Shop",  # merchant names are ids, spaces inside
        "商户1",
        "北京 朝阳 商户",
        "Café Müller & Söhne",
        "Ωμέγα-42",
        "user@example.com",
        "a{b}c:d",  # Redis hash tag and separator characters
        "x" * 128,
        "字" * 128,  # the limit counts characters, not bytes
    ],
)
def test_printable_unicode_ids_are_accepted(name: str, value: str) -> None:
    assert validate(replace(BASE, **{name: value}), Limits(), None) is None


@pytest.mark.parametrize("name", ID_FIELDS)
@pytest.mark.parametrize(
    ("value", "reason"),
    [
        ("x" * 129, "is 129 characters long, the limit is 128"),
        ("a\nb", "must be printable text (no control, format or non-U+0020 space characters)"),
        ("a\tb", "must be printable text (no control, format or non-U+0020 space characters)"),
        ("a\x00b", "must be printable text (no control, format or non-U+0020 space characters)"),
        ("a\x7fb", "must be printable text (no control, format or non-U+0020 space characters)"),
        (
            "shop\u200d",
            "must be printable text (no control, format or non-U+0020 space characters)",
        ),  # zero-width joiner
        ("\u202eabc", "must be printable text (no control, format or non-U+0020 space characters)"),  # bidi override
        ("a\u00a0b", "must be printable text (no control, format or non-U+0020 space characters)"),  # no-break space
        ("商户\u3000一", "must be printable text (no control, format or non-U+0020 space characters)"),  # ideographic
        (" shop", "must not start or end with a space"),
        ("shop ", "must not start or end with a space"),
        (" ", "must not start or end with a space"),
    ],
)
def test_ids_that_cannot_be_one_entity_are_refused(name: str, value: str, reason: str) -> None:
    with pytest.raises(InvalidTransaction) as caught:
        validate(replace(BASE, **{name: value}), Limits(), None)
    assert (caught.value.field, caught.value.reason) == (name, reason)


def test_the_length_limit_is_configurable() -> None:
    txn = replace(BASE, merchant_id="m" * 20)
    assert validate(txn, Limits(max_id_length=20), None) is None
    with pytest.raises(InvalidTransaction, match="is 20 characters long, the limit is 19"):
        validate(txn, Limits(max_id_length=19), None)
