"""The verification worker processes: same verdicts as in-process, and a dead worker
is noticed (the service then verifies in its own process)."""
import asyncio
import os
import signal

import pytest

from gateway.ingest import verify
from gateway.ingest.pool import VerifierPool, WorkerDied
from tests.gateway.fixtures import T0, Signer


def test_workers_verify_like_the_gateway_process_and_deaths_are_noticed():
    s, other = Signer(), Signer()
    items = [(s.record(i, 10 * i, 0, T0 + i).encode(), s.pub) for i in range(1, 40)]
    items += [(s.record(99, 1, 0, T0, key=other.key).encode(), s.pub), (b"junk", s.pub)]

    async def scenario():
        pool = VerifierPool(2)
        try:
            results = await asyncio.gather(pool.submit(items[:20]), pool.submit(items[20:]))
            assert results[0] + results[1] == verify.verify_batch(items)
            assert results[1][-2][:2] == ("reject", "bad_signature")
            assert results[1][-1][:2] == ("reject", "malformed")
            os.kill(pool.workers[0]["proc"].pid, signal.SIGKILL)
            pool.workers[0]["proc"].join()
            await asyncio.sleep(0.2)             # the pipe's end is seen by the loop
            assert await pool.submit(items[:5]) == verify.verify_batch(items[:5])
            os.kill(pool.workers[1]["proc"].pid, signal.SIGKILL)
            pool.workers[1]["proc"].join()
            with pytest.raises(WorkerDied):
                for _ in range(3):
                    await asyncio.wait_for(pool.submit(items[:5]), 5)
        finally:
            pool.close()

    asyncio.run(scenario())
