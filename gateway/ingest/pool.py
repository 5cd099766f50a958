"""Signature verification in worker processes, driven from the asyncio loop.

Why not concurrent.futures.ProcessPoolExecutor: its management thread pickles and
unpickles in the gateway process and contends with the event loop for the GIL and its
locks, which cost more per batch than the pickling itself. Here each worker is a
process at the end of a pipe: the loop sends a batch (one pickle), and the reply is
read when the pipe becomes readable (loop.add_reader), so no thread is involved.
A worker that dies fails its pending batches; the caller verifies them in-process.
"""
import asyncio
import collections
import multiprocessing

from gateway.ingest import verify


def _worker(conn):
    while True:
        try:
            items = conn.recv()
        except (EOFError, OSError, KeyboardInterrupt):
            return
        if items is None:
            return
        conn.send(verify.verify_batch(items))


class WorkerDied(RuntimeError):
    pass


class VerifierPool:
    def __init__(self, workers, loop=None):
        ctx = multiprocessing.get_context("forkserver")
        self.loop = loop or asyncio.get_running_loop()
        self.workers = []
        for _ in range(workers):
            parent, child = ctx.Pipe()
            proc = ctx.Process(target=_worker, args=(child,), daemon=True)
            proc.start()
            child.close()
            w = {"proc": proc, "conn": parent, "pending": collections.deque(), "alive": True}
            self.workers.append(w)
            self.loop.add_reader(parent.fileno(), self._readable, w)

    def _readable(self, w):
        try:
            result = w["conn"].recv()
        except (EOFError, OSError):
            self._dead(w)
            return
        if w["pending"]:
            fut = w["pending"].popleft()
            if not fut.done():
                fut.set_result(result)

    def _dead(self, w):
        if not w["alive"]:
            return
        w["alive"] = False
        self.loop.remove_reader(w["conn"].fileno())
        while w["pending"]:
            fut = w["pending"].popleft()
            if not fut.done():
                fut.set_exception(WorkerDied("verification worker exited"))

    def submit(self, items):
        """A future of verify_batch(items), from the least busy live worker."""
        live = [w for w in self.workers if w["alive"]]
        fut = self.loop.create_future()
        if not live:
            fut.set_exception(WorkerDied("no verification worker left"))
            return fut
        w = min(live, key=lambda x: len(x["pending"]))
        try:
            w["conn"].send(items)
        except (OSError, ValueError):
            self._dead(w)
            fut.set_exception(WorkerDied("verification worker unreachable"))
            return fut
        w["pending"].append(fut)
        return fut

    def close(self):
        for w in self.workers:
            if w["alive"]:
                self.loop.remove_reader(w["conn"].fileno())
                w["alive"] = False
                try:
                    w["conn"].send(None)
                except (OSError, ValueError):
                    pass
            w["conn"].close()
        for w in self.workers:
            w["proc"].join(timeout=5)
            if w["proc"].is_alive():
                w["proc"].kill()
                w["proc"].join()
