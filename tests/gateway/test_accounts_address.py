"""gateway.accounts.normalize_address: the one gate every EVM address of the balance book
passes (provisioning, ledger settings, storage, settlement). Malformed or hostile text must be
refused, never stored as an account of its own."""
import pytest

from gateway.accounts import BalanceError, normalize_address

GOOD = "0x" + "ab12" * 10


@pytest.mark.parametrize("text,stored", [
    (GOOD, GOOD),
    ("0x" + "AB12" * 10, GOOD),                 # checksum case folds to one account
    ("0X" + "ab12" * 10, GOOD),
    ("  " + GOOD + "\n", GOOD),                 # surrounding blanks from a config file
])
def test_valid_addresses_normalise_to_one_spelling(text, stored):
    assert normalize_address(text) == stored


@pytest.mark.parametrize("text", [
    "0x" + "1_" + "2" * 38,                     # int(..., 16) takes digit separators
    "0x-" + "a" * 39,                           # ... a sign
    "0x+" + "a" * 39,
    "0x " + "a" * 39,                           # ... a leading blank
    "0x" + "a" * 39 + "g",                      # not hex
    "0x" + "a" * 39 + "\u0661",                 # a non-ASCII digit (ARABIC-INDIC ONE)
    "0x" + "a" * 39,                            # too short
    "0x" + "a" * 41,                            # too long
    "ab" * 21,                                  # no 0x
    "",
    "0x12",
])
def test_malformed_addresses_are_refused(text):
    with pytest.raises(BalanceError, match="not an EVM address"):
        normalize_address(text)
