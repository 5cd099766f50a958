"""One thread owns the service's SQLite connection and commits in groups.

Every OCPP answer that depends on a decision (a transactionId, a settlement, a
stored meter value) is sent only after that decision is durable (synchronous=FULL).
One fsync per message would cap the central system at a few hundred messages a
second, so operations queued while a commit is in flight are run together in the
next transaction, each inside its own SAVEPOINT: one failing operation rolls back
alone, the others commit, and every caller's future resolves after the COMMIT.
SQLite work also stays off the event loop, which keeps heartbeats answered while
the disk is busy.
"""
import asyncio
import queue
import sqlite3
import threading

from gateway import db as db_mod

MAX_BATCH = 500


class DBWorker:
    def __init__(self, path, init=None):
        self.path = str(path)
        self._init = init
        self._q = queue.SimpleQueue()
        self._thread = None
        self._ready = threading.Event()
        self._error = None
        self.commits = 0
        self.operations = 0

    def start(self):
        self._thread = threading.Thread(target=self._main, name="ocpp-db", daemon=True)
        self._thread.start()
        self._ready.wait()
        if self._error is not None:
            raise self._error
        return self

    async def run(self, fn, *args, **kwargs):
        """Run fn(conn, *args, **kwargs) in the next group transaction; → its result."""
        loop = asyncio.get_running_loop()
        fut = loop.create_future()
        self._q.put((fn, args, kwargs, fut, loop))
        return await fut

    async def stop(self):
        if self._thread is None:
            return
        self._q.put(None)
        await asyncio.get_running_loop().run_in_executor(None, self._thread.join)
        self._thread = None

    @staticmethod
    def _resolve(fut, result, error):
        if fut.cancelled():
            return
        if error is not None:
            fut.set_exception(error)
        else:
            fut.set_result(result)

    def _main(self):
        try:
            conn = db_mod.connect(self.path)
            if self._init is not None:
                self._init(conn)
        except Exception as e:  # noqa: BLE001 — reported to start()
            self._error = e
            self._ready.set()
            return
        self._ready.set()
        stopping = False
        while not stopping:
            item = self._q.get()
            if item is None:
                break
            batch = [item]
            while len(batch) < MAX_BATCH:
                try:
                    nxt = self._q.get_nowait()
                except queue.Empty:
                    break
                if nxt is None:
                    stopping = True
                    break
                batch.append(nxt)
            outcomes = []
            try:
                conn.execute("BEGIN IMMEDIATE")
            except sqlite3.Error as e:
                for fn, args, kwargs, fut, loop in batch:
                    loop.call_soon_threadsafe(self._resolve, fut, None, e)
                continue
            for fn, args, kwargs, fut, loop in batch:
                conn.execute("SAVEPOINT op")
                try:
                    result = fn(conn, *args, **kwargs)
                    conn.execute("RELEASE op")
                    outcomes.append((fut, loop, result, None))
                except Exception as e:  # noqa: BLE001 — the caller's exception, delivered to it
                    conn.execute("ROLLBACK TO op")
                    conn.execute("RELEASE op")
                    outcomes.append((fut, loop, None, e))
            try:
                conn.execute("COMMIT")
                self.commits += 1
                self.operations += len(batch)
            except sqlite3.Error as e:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                outcomes = [(fut, loop, None, e) for fut, loop, _, _ in outcomes]
            for fut, loop, result, error in outcomes:
                try:
                    loop.call_soon_threadsafe(self._resolve, fut, result, error)
                except RuntimeError:  # loop closed: nobody waits any more
                    pass
        conn.close()
