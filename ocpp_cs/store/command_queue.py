"""The CLI's calls to chargers, queued in `ocpp_commands` for the running service.

The CLI queues a row and waits; the service claims it (`queued` → `sent`), sends
the CALL and records the answer (`done` / `failed`). A row the CLI gave up on is
`expired` and never sent later; one the service could not finish is `failed`.
"""
import json

from ocpp_cs.store.base import StoreError, now

# the CS → charger calls the CLI may queue (Core profile + TriggerMessage)
COMMAND_ACTIONS = ("RemoteStartTransaction", "RemoteStopTransaction", "Reset", "UnlockConnector",
                   "ChangeAvailability", "ChangeConfiguration", "GetConfiguration", "ClearCache",
                   "TriggerMessage")

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
            claimed.append(row)
    return claimed


def finish_command(conn, command_id, result=None, error=None):
    conn.execute("UPDATE ocpp_commands SET state=?, result=?, error=?, updated_at=? WHERE id=?",
                 ("failed" if error else "done", json.dumps(result) if result is not None else None,
                  error, now(), command_id))


def abandon_command(conn, command_id, error):
    """A sent command whose answer will never be recorded (the service stops) fails."""
    conn.execute("UPDATE ocpp_commands SET state='failed', error=?, updated_at=? "
                 "WHERE id=? AND state='sent'", (error, now(), command_id))


def expire_command(conn, command_id):
    """The CLI gave up waiting: a still-queued command is never sent later."""
    cur = conn.execute("UPDATE ocpp_commands SET state='expired', updated_at=? "
                       "WHERE id=? AND state='queued'", (now(), command_id))
    return cur.rowcount == 1


def get_command(conn, command_id):
    return conn.execute("SELECT * FROM ocpp_commands WHERE id=?", (command_id,)).fetchone()
