"""The CLI's calls to chargers, queued in `ocpp_commands` for the running service.

The CLI queues a row and waits; the service claims it (`queued` → `sent`), sends
the CALL and records the answer (`done` / `failed`). A row the CLI gave up on is
`expired` and never sent later; one the service could not finish is `failed`.

Secrets (the AuthorizationKey a charger is onboarded with, any configuration key
named like a password) stay in a row only while it is `queued`: the service
claims the row with the secret and stores it redacted in the same operation, and
an expired row is redacted too. Answers are redacted before they are stored.
"""
import json
import re

from ocpp_cs.store.base import StoreError, now

# the CS → charger calls the CLI may queue (Core profile + TriggerMessage)
COMMAND_ACTIONS = ("RemoteStartTransaction", "RemoteStopTransaction", "Reset", "UnlockConnector",
                   "ChangeAvailability", "ChangeConfiguration", "GetConfiguration", "ClearCache",
                   "TriggerMessage")

# configuration keys whose values are secrets (OCPP 1.6 security whitepaper: AuthorizationKey)
SECRET_KEY = re.compile(r"authorizationkey|passw(?:or)?d|secret|token|credential|privatekey",
                        re.IGNORECASE)
REDACTED = "<redacted>"


def secret_fields(action, payload):
    """The configuration keys in a ChangeConfiguration payload whose value is a secret."""
    if action != "ChangeConfiguration" or not isinstance(payload, dict):
        return []
    key = payload.get("key")
    return [key] if isinstance(key, str) and SECRET_KEY.search(key) else []


def redact(action, payload):
    """A command payload or answer fit to store or log: secret values replaced."""
    if not isinstance(payload, dict):
        return payload
    out = dict(payload)
    if secret_fields(action, out) and "value" in out:
        out["value"] = REDACTED
    if isinstance(out.get("configurationKey"), list):   # GetConfiguration answer
        out["configurationKey"] = [
            dict(k, value=REDACTED) if isinstance(k, dict) and isinstance(k.get("key"), str)
            and SECRET_KEY.search(k["key"]) and "value" in k else k
            for k in out["configurationKey"]]
    return out


def _redact_row(conn, row):
    if secret_fields(row["action"], json.loads(row["payload"])):
        conn.execute("UPDATE ocpp_commands SET payload=? WHERE id=?",
                     (json.dumps(redact(row["action"], json.loads(row["payload"]))), row["id"]))


def queue_command(conn, charger_id, action, payload):
    if action not in COMMAND_ACTIONS:
        raise StoreError(f"unknown command {action}")
    cur = conn.execute("INSERT INTO ocpp_commands(charger_id, action, payload) VALUES(?, ?, ?)",
                       (charger_id, action, json.dumps(payload)))
    return cur.lastrowid


def claim_commands(conn, limit=50):
    rows = conn.execute("SELECT * FROM ocpp_commands WHERE state='queued' ORDER BY id LIMIT ?",
                        (limit,)).fetchall()
    claimed = []
    for row in rows:
        cur = conn.execute("UPDATE ocpp_commands SET state='sent', updated_at=? "
                           "WHERE id=? AND state='queued'", (now(), row["id"]))
        if cur.rowcount == 1:
            claimed.append(row)         # the service keeps the secret in memory only
            _redact_row(conn, row)
    return claimed


def finish_command(conn, command_id, result=None, error=None):
    conn.execute("UPDATE ocpp_commands SET state=?, result=?, error=?, updated_at=? WHERE id=?",
                 ("failed" if error else "done",
                  json.dumps(_redact_result(conn, command_id, result))
                  if result is not None else None, error, now(), command_id))


def _redact_result(conn, command_id, result):
    row = conn.execute("SELECT action FROM ocpp_commands WHERE id=?", (command_id,)).fetchone()
    return redact(row["action"] if row else "", result)


def abandon_command(conn, command_id, error):
    """A sent command whose answer will never be recorded (the service stops) fails."""
    conn.execute("UPDATE ocpp_commands SET state='failed', error=?, updated_at=? "
                 "WHERE id=? AND state='sent'", (error, now(), command_id))


def expire_command(conn, command_id):
    """The CLI gave up waiting: a still-queued command is never sent later."""
    cur = conn.execute("UPDATE ocpp_commands SET state='expired', updated_at=? "
                       "WHERE id=? AND state='queued'", (now(), command_id))
    if cur.rowcount == 1:
        _redact_row(conn, get_command(conn, command_id))
    return cur.rowcount == 1


def get_command(conn, command_id):
    return conn.execute("SELECT * FROM ocpp_commands WHERE id=?", (command_id,)).fetchone()
