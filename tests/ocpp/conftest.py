"""OCPP fixtures: the central system and raw charge points are async helpers
(tests/ocpp/fixtures.py); the end-to-end test takes the ledger's ledger_env."""
from tests.ledger.fixtures import ledger_env_fixture
