"""Ledger fixtures: Anvil with the contracts deployed and a gateway store beside it
(ledger_env), and the gateway's cleanup of started processes."""
from tests.gateway.fixtures import cleanup_fixture
from tests.ledger.fixtures import ledger_env_fixture
