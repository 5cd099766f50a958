"""Market fixtures: the market's helpers are plain functions (tests/market/fixtures.py); the
tests on a chain take the ledger's ledger_env."""
from tests.ledger.fixtures import ledger_env_fixture
