"""One ledger loop shared by `egs-gw run` (service.py) and `egs-gw ledger run`.

Each tick settles what is due (no chain needed: decisions go to the book and the
outbox) and then lets the worker move the outbox to the chain. A chain that
cannot be reached only stops the second half; settlement keeps queuing.
"""
import logging
import time

from gateway import db
from gateway.ledger import keystore, tables
from gateway.ledger.chain import Chain, ChainError, ChainUnavailable
from gateway.ledger.keystore import KeystoreError
from gateway.ledger.settings import LedgerConfigError
from gateway.ledger.settlement import Engine
from gateway.ledger.worker import Worker


class Runner:
    def __init__(self, settings, db_path, log=None):
        self.s = settings
        self.log = log or logging.getLogger("egs.ledger")
        self.conn = db.connect(db_path)
        tables.init(self.conn)
        self.engine = Engine(settings, self.log)
        self.worker = None
        self.chain_up = None
        self.last = {}
        self._problem = None

    def _worker(self):
        if self.worker is None:
            password = keystore.read_password(self.s.password_file, self.s.password_env)
            account = keystore.load(self.s.keystore, password)
            chain = Chain.from_settings(self.s)
            self.worker = Worker(self.conn, chain, account, self.s, self.log)
        return self.worker

    def tick(self, now=None):
        """One round; returns the worker's summary (or {'chain': 'down' | 'error'})."""
        sids = self.engine.step(self.conn, now)
        try:
            summary = self._worker().step()
            if self.chain_up is False:
                self.log.info("chain reachable again at %s", self.s.rpc_url)
            self.chain_up = True
            self._problem = None
        except ChainUnavailable as e:
            if self.chain_up is not False:
                self.log.warning("%s; settlements stay queued", e)
            self.chain_up = False
            summary = {"chain": "down"}
        except (ChainError, KeystoreError, LedgerConfigError) as e:
            # Not deployed yet, wrong chain id, no key or password: the operator must act.
            if str(e) != self._problem:
                self.log.error("ledger cannot reach its contracts: %s; settlements stay queued", e)
            self._problem = str(e)
            self.worker = None if isinstance(e, (KeystoreError, LedgerConfigError)) else self.worker
            self.chain_up = False
            summary = {"chain": "error", "error": str(e)}
        summary["settled"] = len(sids)
        self.last = summary
        return summary

    def busy(self):
        """More to do right away (the worker signed or confirmed something)."""
        return bool(self.last.get("signed") or self.last.get("confirmed") or self.last.get("sent"))

    def idle(self):
        return self.worker is not None and self.chain_up and self.worker.idle()

    def run_until(self, stop, until_idle=False, timeout=None):
        """Blocking loop for the CLI; `stop()` true ends it."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while not stop():
            self.tick()
            if until_idle and self.idle():
                return True
            if deadline is not None and time.monotonic() > deadline:
                return False
            if not self.busy():
                time.sleep(self.s.tick_s)
        return True

    def close(self):
        self.conn.close()


__all__ = ["ChainError", "ChainUnavailable", "Runner"]
