"""Gateway fixtures: a fresh gateway store (gwdb) and the processes to stop after a test
(cleanup)."""
from tests.gateway.fixtures import cleanup_fixture, gwdb_fixture
