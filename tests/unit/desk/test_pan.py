"""Card numbers are masked wherever the desk stores or shows text; ids made of clock readings are not."""

from __future__ import annotations

from engine.desk.pan import luhn_ok, mask_pans, scrub


def test_card_numbers_are_masked_and_clock_ids_are_not() -> None:
    assert luhn_ok("4111111111111111") and not luhn_ok("4111111111111112")
    assert mask_pans("paid with 4111 1111 1111 1111 today") == "paid with •••• 1111 today"
    assert mask_pans("amex 3782-822463-10005") == "amex •••• 0005"
    assert mask_pans("t-4111111111111111-x") == "t-•••• 1111-x"
    assert mask_pans("4111111111111112") == "4111111111111112"  # fails Luhn: not a card number
    assert mask_pans("order-1796589520039149551") == "order-1796589520039149551"  # a clock reading in ns
    assert mask_pans("short 4111") == "short 4111"


def test_scrub_masks_every_string_of_a_record_keys_included() -> None:
    record = {"card_id": "4111111111111111", "attributes": {"5500005555555559": "x", "n": 4111111111111111}}
    assert scrub(record) == {"card_id": "•••• 1111", "attributes": {"•••• 5559": "x", "n": 4111111111111111}}
