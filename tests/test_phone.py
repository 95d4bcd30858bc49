"""phone.py: the one rule for phone numbers (validate, normalise, mask, transfer targets)."""

from __future__ import annotations

import pytest

import phone


@pytest.mark.parametrize("raw,masked", [
    ("+15551234567", "+1******4567"), ("5551234567", "******4567"), ("+1 (555) 123-4567", "+1******4567"),
    ("tel:+15551234567", "+1******4567"), ("sip:+15551234567@trunk.example.com", "+1******4567"),
    ("", "unknown"), (None, "unknown"), ("anonymous", "unknown"), ("1234", "****"),
])
def test_mask(raw: str | None, masked: str) -> None:
    assert phone.mask(raw) == masked


@pytest.mark.parametrize("text,number", [
    ("room call-_+15551234567_aBc3", "+15551234567"), ("participant sip_+15551234567", "+15551234567"),
    ("{'renter_phone': '555-123-4567'}", "555-123-4567"), ("call me on 555 123 4567 please", "555 123 4567"),
    ("+44 20 7946 0958 at 2030-01-12T10:00:00", "+44 20 7946 0958"),
    ("identity sip_15551234567", "15551234567"), ("ext 555-123-4567x12", "555-123-4567"),
    ("glued+15551234567", "+15551234567"), ("1.555.123.4567", "1.555.123.4567"),
])
def test_mask_text_hides_every_number_in_any_text(text: str, number: str) -> None:
    assert phone.mask_text(text) == text.replace(number, phone.mask(number))


@pytest.mark.parametrize("text", ["EX-101 for 2030-01-12 to 2030-01-15", "turns=3/4 duration=42s", "ref R7K3QX",
                                  "2030-01-12 2030-01-15", "at 1733112345.125 took 0.1234567s",
                                  "2026-12-02 04:38:57,123 INFO", "ws://10.20.30.40:7880 and 192.168.100.200",
                                  "speech_1234567abc RM_a12345678 version=g5858035"])
def test_mask_text_leaves_dates_ids_and_counts_alone(text: str) -> None:
    assert phone.mask_text(text) == text


@pytest.mark.parametrize("raw", ["+1 555 123 4567", "555-123-4567", "(555) 123.4567", "5551234"])
def test_a_plausible_booking_number_is_kept_as_given(raw: str) -> None:
    assert phone.clean_booking_phone(f"  {raw} ") == raw


@pytest.mark.parametrize("raw", ["12", "call me", "=HYPERLINK(1)", "+1 555 123 4567 ext 9", "1" * 16, "5" * 40])
def test_an_implausible_booking_number_is_refused(raw: str) -> None:
    with pytest.raises(ValueError):
        phone.clean_booking_phone(raw)


@pytest.mark.parametrize("a,b,same", [
    ("+15551234567", "555-123-4567", True), ("+15551234567", "+1 555 123 4567", True),
    ("+15551234567", "+15551234568", False), ("5551234567", "+15551234567", True), ("1234567", "+15551234567", False), ("", "", False),
    ("+4420794609581", "5551234567", False),
])
def test_same_number_matches_with_and_without_the_country_code(a: str, b: str, same: bool) -> None:
    assert phone.same_number(a, b) is same


def test_transfer_uri() -> None:
    assert phone.transfer_uri("+15550001111") == "tel:+15550001111"
    assert phone.transfer_uri("sip:desk@pbx.example.com") == "sip:desk@pbx.example.com"
    assert phone.transfer_uri("") == ""
