"""The central system's tables and every decision that must be durable.

One module per facet: `schema` (the tables), `chargers`, `id_tags` (idTags → prepaid
accounts), `transactions` (StartTransaction, the rows), `metering` (meter values, raw
and signed), `billing` (StopTransaction, review, settlement), `command_queue` (the
CLI's calls to chargers), and `base` (error type, clock, event log) under them all.
They import one way, in that order, and this package re-exports their public names,
so callers write `store.settle(...)`.

Functions take an open connection and expect the caller's transaction
(`gateway.db.transaction`, or the service's group commit in `ocpp_cs/dbworker.py`),
so a decision, its balance-book entries and its ledger outbox intent land together.
"""
from ocpp_cs.store.base import (
    INT64_MAX,
    INT64_MIN,
    StoreError,
    event,
    in_int64,
    iso,
    now,
    parse_time,
)
from ocpp_cs.store.billing import (
    SESSION_REASON,
    assess,
    configured_price,
    records_hash,
    settle,
    stop_transaction,
    void,
)
from ocpp_cs.store.chargers import (
    CHARGER_ID,
    add_charger,
    check_charger_id,
    connectors,
    count_pending,
    get_charger,
    list_chargers,
    note_pending,
    record_announced_keys,
    record_boot,
    record_status,
    touch,
    update_charger,
)
from ocpp_cs.store.command_queue import (
    COMMAND_ACTIONS,
    abandon_command,
    claim_commands,
    expire_command,
    finish_command,
    get_command,
    queue_command,
)
from ocpp_cs.store.id_tags import (
    add_id_tag,
    authorize,
    get_id_tag,
    id_tag_info,
    list_id_tags,
    set_id_tag_status,
    strip_suffix,
    tag_address,
)
from ocpp_cs.store.metering import (
    MAX_REGISTER_DIGITS,
    energy_wh_of,
    meter_values,
    record_meter_values,
)
from ocpp_cs.store.schema import SCHEMA, SCHEMA_VERSION, init
from ocpp_cs.store.transactions import (
    CONCURRENT_WINDOW_S,
    get_transaction,
    list_transactions,
    start_transaction,
)

__all__ = [
    "CHARGER_ID",
    "COMMAND_ACTIONS",
    "CONCURRENT_WINDOW_S",
    "INT64_MAX",
    "INT64_MIN",
    "MAX_REGISTER_DIGITS",
    "SCHEMA",
    "SCHEMA_VERSION",
    "SESSION_REASON",
    "StoreError",
    "abandon_command",
    "add_charger",
    "add_id_tag",
    "assess",
    "authorize",
    "check_charger_id",
    "claim_commands",
    "configured_price",
    "connectors",
    "count_pending",
    "energy_wh_of",
    "event",
    "expire_command",
    "finish_command",
    "get_charger",
    "get_command",
    "get_id_tag",
    "get_transaction",
    "id_tag_info",
    "in_int64",
    "init",
    "iso",
    "list_chargers",
    "list_id_tags",
    "list_transactions",
    "meter_values",
    "note_pending",
    "now",
    "parse_time",
    "queue_command",
    "record_announced_keys",
    "record_boot",
    "record_meter_values",
    "record_status",
    "records_hash",
    "set_id_tag_status",
    "settle",
    "start_transaction",
    "stop_transaction",
    "strip_suffix",
    "tag_address",
    "touch",
    "update_charger",
    "void",
]
