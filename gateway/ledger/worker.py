"""The outbox worker: intents -> signed transactions -> broadcast -> confirmed.

Exactly once, across crashes:
1. The next queued intent (strictly in outbox order) is signed with the next
   nonce, and the raw transaction is stored with its nonce and hash in ONE
   SQLite transaction before anything is broadcast.
2. Stored transactions are broadcast in nonce order. After a crash, a stored
   transaction is looked up (receipt, then the node's pool) and broadcast again
   as the same bytes: it is never re-signed with a new nonce.
3. Only when the node says its nonce is used ("nonce too low") while our hash has
   no receipt — another transaction took the nonce — is the intent signed anew,
   and then only if the contract has not applied its settlement id; if that
   second transaction still met an applied id, it would revert on chain.
4. A transaction counts once `confirmations` blocks are on top of the block
   holding it and that block is still the canonical one.
5. Fees change: a transaction the node refuses as underpriced (the base fee rose
   above its maxFeePerGas between signing and broadcast), or one the node has held
   unmined for `reprice_after_s` while the going fees rose by more than the 12.5 %
   a replacement must add, is re-signed with the SAME nonce and higher fees (within
   `max_fee_gwei`). The old one becomes 'replaced'; one nonce means at most one of
   the two can be mined, and if the old one is, the new one meets "nonce too low"
   and the applied settlement id confirms the intent (rule 3).

Several transactions may be in flight (`max_in_flight`); nonces keep them in
outbox order on chain. A transaction that reverts (it cannot, unless roles or
the contract changed) sends its intent back to the queue with a backoff that
doubles per attempt (30 s up to an hour: every retry of a revert costs gas), and
the queue waits for it, so later intents are not signed past it.

Chain unreachable: `step` raises ChainUnavailable; nothing changes in the store,
the outbox keeps growing, and the next step picks up where this one stopped.

The same loop posts EEA deposits made on chain (Deposited events, once they are
`confirmations` deep) to the balance book, so prepaid EEA is spendable.
"""
import time

from gateway import accounts
from gateway.db import transaction
from gateway.ledger import faults, intents, outbox, tables
from gateway.ledger.chain import ChainUnavailable

DEPOSIT_REASON = "eea_deposit"
RETRY_S = 30.0
# what nodes answer for a transaction whose fees are below what they accept now
UNDERPRICED = ("less than block base fee", "underpriced", "fee too low", "feetoolow",
               "fee cap less than", "max fee per gas less than")
BUMP_NUM, BUMP_DEN = 9, 8       # a replacement offers >= 112.5 % (geth wants 110 %)
MAX_RETRY_S = 3600.0  # a revert that persists (role revoked) costs gas on every retry: back off


class Worker:
    def __init__(self, conn, chain, account, settings, log=None):
        self.conn = conn
        self.chain = chain
        self.account = account
        self.sender = account.address.lower()
        self.s = settings
        self.log = log
        self._fees = None

    # ---- one round ------------------------------------------------------------------

    def step(self):
        """Track, sign, broadcast, scan deposits. Returns a small progress summary."""
        self.chain.check()
        self._fees = None
        latest = self.chain.block_number()
        done = self._track(latest)
        signed = self._sign_new()
        sent = self._broadcast()
        deposits = self._scan_deposits(latest)
        return {"confirmed": done, "signed": signed, "sent": sent, "deposits": deposits,
                "pending": len(outbox.pending(self.conn, limit=10**9)), "block": latest}

    def idle(self):
        """Nothing left to do: no intent waits and no transaction is unconfirmed."""
        return not outbox.pending(self.conn, limit=1)

    # ---- receipts and confirmation ---------------------------------------------------------

    def _track(self, latest):
        confirmed = 0
        for tx in outbox.live_txs(self.conn, self.sender):
            receipt = self.chain.receipt(tx["tx_hash"])
            if receipt is None:
                if tx["state"] == "mined":  # its block was reorganised away
                    with transaction(self.conn):
                        outbox.tx_state(self.conn, tx["id"], "sent", block_number=None, block_hash=None)
                continue
            number = receipt["blockNumber"]
            block_hash = receipt["blockHash"]
            if latest - number < self.s.confirmations or self.chain.block_hash(number) != block_hash:
                if tx["state"] != "mined" or tx["block_number"] != number:
                    with transaction(self.conn):
                        outbox.tx_state(self.conn, tx["id"], "mined", block_number=number,
                                        block_hash=block_hash, gas_used=receipt["gasUsed"])
                continue
            if receipt["status"] == 1:
                with transaction(self.conn):
                    outbox.tx_state(self.conn, tx["id"], "confirmed", block_number=number,
                                    block_hash=block_hash, gas_used=receipt["gasUsed"],
                                    confirmed_at=time.time())
                    outbox.confirm(self.conn, tx["outbox_id"])
                confirmed += 1
                faults.hit("after_confirm")
            else:
                self._reverted(tx, receipt)
        return confirmed

    def _reverted(self, tx, receipt):
        applied = self.chain.applied(tx["settlement_id"])
        attempts = outbox.get(self.conn, tx["outbox_id"])["attempts"]
        delay = min(RETRY_S * 2 ** max(attempts - 1, 0), MAX_RETRY_S)
        with transaction(self.conn):
            outbox.tx_state(self.conn, tx["id"], "reverted", block_number=receipt["blockNumber"],
                            gas_used=receipt["gasUsed"], error="reverted")
            if applied:
                outbox.confirm(self.conn, tx["outbox_id"], "settlement id was already applied on chain")
            else:
                outbox.requeue(self.conn, tx["outbox_id"], f"transaction {tx['tx_hash']} reverted", delay)
        if self.log:
            (self.log.info if applied else self.log.error)(
                "settlement %s: transaction reverted (%s)", tx["settlement_id"],
                "id already applied" if applied else "will retry")

    # ---- signing --------------------------------------------------------------------

    def _next_nonce(self):
        stored = outbox.max_nonce(self.conn, self.sender)
        chain_next = self.chain.nonce(self.sender, "pending")
        return max(chain_next, 0 if stored is None else stored + 1)

    def _sign_new(self):
        signed = 0
        owners = None
        while len(outbox.live_txs(self.conn, self.sender)) < self.s.max_in_flight:
            intent = outbox.next_queued(self.conn)
            if intent is None or intent["not_before"] > time.time():
                break
            if owners is None:
                owners = len(tables.storage_owners(self.conn))
            try:
                payload = _loads(intent["payload"])
                fn, args, gas = intents.call_for(intent["kind"], intent["settlement_id"], payload, owners)
                data = self.chain.encode(fn, args)
            except (intents.IntentError, ValueError, TypeError, OverflowError) as e:
                with transaction(self.conn):
                    outbox.reject(self.conn, intent["id"], e)
                if self.log:
                    self.log.error("settlement %s rejected: %s", intent["settlement_id"], e)
                continue
            if not outbox.ever_signed(self.conn, intent["id"]) \
                    and self.chain.applied(intent["settlement_id"]):
                self._applied_elsewhere(intent)
                continue
            if self._fees is None:
                self._fees = self.chain.fees(self.s.max_fee_wei)
            nonce = self._next_nonce()
            tx = {"to": self.chain.watt.address, "data": data, "value": 0, "nonce": nonce,
                  "gas": min(gas, self.s.max_tx_gas), "chainId": self.s.chain_id, **self._fees}
            raw = self.account.sign_transaction(tx)
            with transaction(self.conn):
                outbox.record_signed(self.conn, intent["id"], self.sender, nonce,
                                     "0x" + bytes(raw.hash).hex(), "0x" + bytes(raw.raw_transaction).hex(),
                                     tx["gas"])
            signed += 1
            faults.hit("after_sign")
        return signed

    def _applied_elsewhere(self, intent):
        """Applied on chain before this store signed anything for it: a restored backup
        (the very same settlement; nothing to pay gas for), or another store using the
        same contract, whose ids can collide with ours. Confirmed without a transaction,
        as a revert would have, and said loudly."""
        note = ("settlement id was already applied on chain before this store signed it "
                "(restored backup, or another store on the same contracts)")
        with transaction(self.conn):
            outbox.confirm(self.conn, intent["id"], note)
        if self.log:
            self.log.warning("settlement %s (%s): %s", intent["settlement_id"], intent["kind"], note)

    # ---- broadcasting ---------------------------------------------------------------

    def _broadcast(self):
        sent = 0
        for tx in outbox.live_txs(self.conn, self.sender):
            if tx["state"] == "sent" and self.chain.known(tx["tx_hash"]):
                if time.time() - (tx["sent_at"] or 0) > self.s.reprice_after_s:
                    self._reprice(tx, f"unmined for {self.s.reprice_after_s:.0f} s", quiet=True)
                continue
            due = tx["state"] in ("signed", "sent")
            if due and self._push(tx):
                sent += 1
        return sent

    def _reprice(self, tx, why, quiet=False):
        """Replace `tx` by the same call with the same nonce and higher fees; True if done.

        quiet: only when the going fees are higher by a replacement's step (a transaction
        that merely waits for a block at the going price is left alone)."""
        fields = decode_raw(tx["raw_tx"])
        if self._fees is None:
            self._fees = self.chain.fees(self.s.max_fee_wei)
        new = bumped_fees(fields, self._fees, self.s.max_fee_wei)
        if new is None:
            if not quiet and self.log:
                self.log.warning("settlement %s: %s, and fees within max_fee_gwei cannot "
                                 "outbid it; waiting", tx["settlement_id"], why)
            return False
        if quiet and not fees_rose(fields, self._fees):
            return False
        body = {k: fields[k] for k in ("to", "data", "value", "nonce", "gas", "chainId")}
        raw = self.account.sign_transaction({**body, **new})
        with transaction(self.conn):
            outbox.tx_state(self.conn, tx["id"], "replaced", error=why[:500])
            outbox.record_signed(self.conn, tx["outbox_id"], self.sender, fields["nonce"],
                                 "0x" + bytes(raw.hash).hex(),
                                 "0x" + bytes(raw.raw_transaction).hex(), fields["gas"])
        if self.log:
            self.log.warning("settlement %s: transaction %s %s; replaced with the same nonce "
                             "at higher fees", tx["settlement_id"], tx["tx_hash"], why)
        return True

    def _push(self, tx):
        error = self.chain.send_raw(tx["raw_tx"])
        low = error and "nonce too low" in error.lower()
        if error is None or "already known" in error.lower() or "known transaction" in error.lower():
            faults.hit("after_broadcast")
            if tx["state"] == "signed":
                with transaction(self.conn):
                    outbox.tx_state(self.conn, tx["id"], "sent", sent_at=time.time())
            return True
        if low and self.chain.receipt(tx["tx_hash"]) is None:
            # The nonce went to another transaction: these bytes can never be mined.
            applied = self.chain.applied(tx["settlement_id"])
            with transaction(self.conn):
                outbox.tx_state(self.conn, tx["id"], "dropped", error=error)
                if applied:
                    outbox.confirm(self.conn, tx["outbox_id"], "settlement id was already applied on chain")
                else:
                    outbox.requeue(self.conn, tx["outbox_id"], f"nonce {tx['nonce']} used elsewhere")
            if self.log:
                self.log.warning("settlement %s: nonce %s was used by another transaction",
                                 tx["settlement_id"], tx["nonce"])
            return False
        if low:
            return False  # mined meanwhile; the next round confirms it
        if any(word in error.lower() for word in UNDERPRICED):
            self._reprice(tx, f"refused as underpriced ({error[:200]})")
            return False        # the replacement goes out in the next round
        if "insufficient funds" in error.lower():
            error = f"{error[:300]}: fund the gateway key {self.sender} with ETH for gas"
        with transaction(self.conn):
            outbox.tx_state(self.conn, tx["id"], tx["state"], error=error[:500])
            outbox.note_error(self.conn, tx["outbox_id"], error)
        if self.log:
            self.log.warning("settlement %s: broadcast refused: %s", tx["settlement_id"], error)
        return False

    # ---- deposits ---------------------------------------------------------------------

    def _scan_deposits(self, latest):
        upto = latest - self.s.confirmations
        start = tables.get_state(self.conn, "deposit_scan_next")
        if start is None:
            start = int(self.chain.deployment.get("block", 0))
        if upto < start:
            return 0
        events = self.chain.events(self.chain.watt, "Deposited", start, upto)
        posted = 0
        with transaction(self.conn):
            for ev in events:
                ref = f"0x{bytes(ev['transactionHash']).hex()}:{ev['logIndex']}"
                if accounts.post(self.conn, [(ev["args"]["account"], "EEA", int(ev["args"]["amount"]))],
                                 DEPOSIT_REASON, ref):
                    posted += 1
            tables.put_state(self.conn, "deposit_scan_next", upto + 1)
        return posted


def decode_raw(raw_hex):
    """The fields of a signed transaction we made (EIP-1559 type 2, or legacy)."""
    import rlp
    from web3 import Web3

    raw = bytes.fromhex(raw_hex.removeprefix("0x"))
    if raw[0] == 2:
        f = rlp.decode(raw[1:])
        return {"chainId": _int(f[0]), "nonce": _int(f[1]), "maxPriorityFeePerGas": _int(f[2]),
                "maxFeePerGas": _int(f[3]), "gas": _int(f[4]),
                "to": Web3.to_checksum_address(f[5]),
                "value": _int(f[6]), "data": "0x" + f[7].hex(), "type": 2}
    f = rlp.decode(raw)
    v = _int(f[6])
    return {"nonce": _int(f[0]), "gasPrice": _int(f[1]), "gas": _int(f[2]),
            "to": Web3.to_checksum_address(f[3]), "value": _int(f[4]), "data": "0x" + f[5].hex(),
            "chainId": (v - 35) // 2 if v >= 35 else None}


def _int(b):
    return int.from_bytes(b, "big")


def _step(old):
    return -(-old * BUMP_NUM // BUMP_DEN)        # ceil(old × 9/8)


def bumped_fees(old, fresh, cap):
    """Fee fields for a replacement of `old`: the going fees, but at least a replacement
    step above the old ones; None when that would exceed the cap."""
    if "gasPrice" in old:
        price = max(fresh.get("gasPrice", fresh.get("maxFeePerGas", 0)), _step(old["gasPrice"]))
        return None if price > cap else {"gasPrice": price}
    tip = max(fresh.get("maxPriorityFeePerGas", 0), _step(old["maxPriorityFeePerGas"]))
    fee = max(fresh.get("maxFeePerGas", fresh.get("gasPrice", 0)), _step(old["maxFeePerGas"]), tip)
    if fee > cap:
        return None
    return {"maxFeePerGas": fee, "maxPriorityFeePerGas": tip, "type": 2}


def fees_rose(old, fresh):
    """The going fees are at least a replacement step above the transaction's."""
    if "gasPrice" in old:
        return fresh.get("gasPrice", fresh.get("maxFeePerGas", 0)) >= _step(old["gasPrice"])
    return fresh.get("maxFeePerGas", 0) >= _step(old["maxFeePerGas"])


def _loads(text):
    import json
    return json.loads(text)


__all__ = ["DEPOSIT_REASON", "ChainUnavailable", "Worker"]
