"""Request validation: ids as real systems send them, refused only for what cannot be an id."""

from __future__ import annotations

import ipaddress
import random
from dataclasses import replace

import pytest

from engine.transaction import Transaction
from engine.validation import _V4_STARTS, InvalidTransaction, Limits, canonical, parse_ip, validate

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


# -- card data ---------------------------------------------------------------------------------------------

#: Test card numbers of the brands (published test PANs), written as gateways and people write them.
PANS = [
    "4111111111111111",  # Visa
    "4111 1111 1111 1111",
    "4111-1111-1111-1111",
    "4012888888881881",
    "4222222222222",  # Visa, 13 digits
    "5555555555554444",  # Mastercard
    "2223000048400011",  # Mastercard 2-series
    "378282246310005",  # Amex, 15 digits
    "3782 822463 10005",  # Amex as printed
    "6011111111111117",  # Discover
    "3530111333300000",  # JCB
    "6200000000000005",  # UnionPay
    "6759649826438453",  # Maestro
    "6304000000000000",  # Maestro (19-digit ranges exist; this is 16)
    "4000000000000000006",  # 19 digits
    "501800000009",  # 12 digits, Luhn-valid
]
#: Numeric-looking ids that are not card numbers: they stay accepted.
NOT_PANS = [
    "4111111111111112",  # one digit off: fails Luhn
    "1234567890123",
    "20240101123456",  # a clock reading, fails Luhn
    "12345678901",  # 11 digits, too short even though Luhn-valid
    "41111111111111111111",  # 20 digits: too long to be a PAN
    "4111111111111111x",  # not only digits
    "tok_4111111111111111",  # a token that carries digits inside
    "4111.1111.1111.1111",  # dots are not how PANs are written
]


@pytest.mark.parametrize("name", ID_FIELDS)
@pytest.mark.parametrize("pan", PANS)
def test_a_card_number_in_an_id_is_refused(name: str, pan: str) -> None:
    with pytest.raises(InvalidTransaction) as caught:
        validate(replace(BASE, **{name: pan}), Limits(), None)
    assert (caught.value.field, caught.value.reason) == (name, "looks like a card number: send a token")
    assert pan not in str(caught.value)


@pytest.mark.parametrize("pan", PANS)
def test_a_card_number_in_an_attribute_is_refused(pan: str) -> None:
    txn = replace(BASE, attributes=(("note", pan),))
    with pytest.raises(InvalidTransaction) as caught:
        validate(txn, Limits(), None)
    assert (caught.value.field, caught.value.reason) == ("attributes[note]", "looks like a card number: send a token")


@pytest.mark.parametrize("name", ID_FIELDS)
@pytest.mark.parametrize("value", NOT_PANS)
def test_numeric_ids_that_are_not_card_numbers_stay_accepted(name: str, value: str) -> None:
    assert validate(replace(BASE, **{name: value}), Limits(), None) is None
    if "4111111111111111" not in value:  # an attribute is text: a card number inside it is refused (below)
        assert validate(replace(BASE, attributes=(("ref", value),)), Limits(), None) is None


@pytest.mark.parametrize(
    "key", ["cvv", "CVV", "cvv2", "cvc", "card_cvc2", "cid", "pin", "pin_block", "pinblock", "track1", "track_2", "csc"]
)
def test_attributes_naming_card_security_data_are_refused(key: str) -> None:
    with pytest.raises(InvalidTransaction) as caught:
        validate(replace(BASE, attributes=((key, "739"),)), Limits(), None)
    assert caught.value.field == f"attributes[{key}]"
    assert "card security data" in caught.value.reason


@pytest.mark.parametrize("key", ["pincode", "shipping", "spinner", "tracking_id", "device_os", "civic"])
def test_attribute_keys_that_only_contain_such_letters_are_accepted(key: str) -> None:
    assert validate(replace(BASE, attributes=((key, "739"),)), Limits(), None) is None


def test_the_mask_switch_replaces_card_numbers_by_pseudonyms_and_drops_card_secrets() -> None:
    from engine.enrich import Enricher, Money, prepare
    from engine.privacy import Pseudonyms

    keys = Pseudonyms(b"k" * 32)
    limits = Limits(card_mask=keys)
    sent = replace(
        BASE,
        card_id="4111 1111 1111 1111",
        attributes=(("cvv", "739"), ("note", "5555555555554444"), ("channel_ref", "abc")),
    )
    masked, _ = prepare(Enricher(Money("EUR", {})), sent, limits, None)
    assert masked.card_id == keys.of("4111111111111111") and masked.card_id.startswith("p:")
    assert dict(masked.attributes) == {"note": keys.of("5555555555554444"), "channel_ref": "abc"}
    text = repr(masked)
    assert "4111" not in text and "5555555555554444" not in text and "739" not in text
    again, _ = prepare(Enricher(Money("EUR", {})), replace(sent, transaction_id="v-2"), limits, None)
    assert again.card_id == masked.card_id  # the same card groups as one entity
    plain = replace(BASE, card_id="c-42")
    assert prepare(Enricher(Money("EUR", {})), plain, limits, None)[0] == plain  # nothing to mask: unchanged


@pytest.mark.parametrize(
    "text", ["card 4111 1111 1111 1111 exp 12/27", "pan=5555555555554444;", "4111-1111-1111-1111 / 739"]
)
def test_a_card_number_inside_an_attribute_text_is_refused(text: str) -> None:
    with pytest.raises(InvalidTransaction, match="looks like a card number: send a token"):
        validate(replace(BASE, attributes=(("note", text),)), Limits(), None)


@pytest.mark.parametrize("text", ["order 4111111111111112 shipped", "ua Mozilla/5.0 (X11) 20100101", "ref 12345"])
def test_texts_with_numbers_that_are_not_card_numbers_stay_accepted(text: str) -> None:
    assert validate(replace(BASE, attributes=(("note", text),)), Limits(), None) is None


def _parsed_by_ipaddress(text: str) -> tuple[object, str, bool]:
    addr = canonical(ipaddress.ip_address(text))
    return addr, str(addr), addr.is_private or addr.is_loopback or addr.is_link_local or addr.is_reserved


def test_the_fast_ipv4_path_answers_what_ipaddress_answers() -> None:
    """`parse_ip` reads canonical dotted quads itself: same address, text and private flag as `ipaddress`,
    for random addresses and for every edge of the networks `ipaddress` calls private or reserved."""
    rnd = random.Random(23)
    texts = [str(ipaddress.IPv4Address(rnd.getrandbits(32))) for _ in range(20_000)]
    for start in _V4_STARTS:
        texts += [str(ipaddress.IPv4Address(a)) for a in (start - 1, start, start + 1) if 0 <= a <= 0xFFFFFFFF]
    texts += ["0.0.0.0", "255.255.255.255", "10.0.0.1", "100.64.0.1", "192.0.0.9", "198.18.0.1", "224.0.0.1"]
    for text in texts:
        fast = parse_ip.__wrapped__(text)  # type: ignore[attr-defined]
        assert fast == _parsed_by_ipaddress(text), text
        assert type(fast[0]) is ipaddress.IPv4Address


@pytest.mark.parametrize(
    "text",
    ["01.2.3.4", "1.2.3.04", "1.2.3", "1.2.3.4.5", "256.1.1.1", " 1.2.3.4", "1.2.3.4 ", "\u0661.2.3.4", "1..2.3",
     "+1.2.3.4", "1_0.2.3.4", "", "::ffff:1.2.3.4", "2001:DB8::1", "fe80::1"],
)  # fmt: skip
def test_other_spellings_go_through_ipaddress_with_its_answer_or_error(text: str) -> None:
    try:
        expected: object = _parsed_by_ipaddress(text)
    except ValueError as exc:
        expected = str(exc)
    try:
        got: object = parse_ip.__wrapped__(text)  # type: ignore[attr-defined]
    except ValueError as exc:
        got = str(exc)
    assert got == expected
