"""The gateway's SQLite store: one file, WAL mode, shared by every component.

Each component owns its own tables and declares them with `ensure_schema`; no
component reads another's tables except through that component's functions.
WAL lets the CLI read while the service writes, and `synchronous=FULL` makes a
commit durable before we acknowledge anything to a device or post to a chain.
"""
import sqlite3
from pathlib import Path

DEFAULT_DB = "egs-gateway.sqlite"


def connect(path, *, readonly=False):
    """Open the store. Autocommit mode: callers group writes with `transaction`."""
    path = str(path)
    if readonly:
        if not Path(path).exists():
            raise FileNotFoundError(f"no gateway database at {path}")
        conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True, isolation_level=None,
                               timeout=30, check_same_thread=False)
    else:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        conn = sqlite3.connect(path, isolation_level=None, timeout=30, check_same_thread=False)
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=FULL")
    conn.execute("PRAGMA foreign_keys=ON")
    conn.row_factory = sqlite3.Row
    return conn


class transaction:
    """`with transaction(conn):` — BEGIN IMMEDIATE … COMMIT, ROLLBACK on error.

    IMMEDIATE takes the write lock up front so two writers never deadlock on upgrade.
    """

    def __init__(self, conn):
        self.conn = conn

    def __enter__(self):
        self.conn.execute("BEGIN IMMEDIATE")
        return self.conn

    def __exit__(self, exc_type, exc, tb):
        if exc_type is None:
            self.conn.execute("COMMIT")
        else:
            self.conn.execute("ROLLBACK")
        return False


def ensure_schema(conn, component, version, statements):
    """Create a component's tables once; `version` guards against silent drift.

    `statements` is a list of idempotent SQL statements (CREATE … IF NOT EXISTS).
    """
    conn.execute(
        "CREATE TABLE IF NOT EXISTS schema_versions (component TEXT PRIMARY KEY, version INTEGER NOT NULL)"
    )
    row = conn.execute("SELECT version FROM schema_versions WHERE component=?", (component,)).fetchone()
    if row is not None and row[0] > version:
        raise RuntimeError(
            f"database schema for {component} is version {row[0]}, newer than this software ({version})"
        )
    with transaction(conn):
        for sql in statements:
            conn.execute(sql)
        conn.execute(
            "INSERT INTO schema_versions(component, version) VALUES(?, ?) "
            "ON CONFLICT(component) DO UPDATE SET version=excluded.version",
            (component, version),
        )
