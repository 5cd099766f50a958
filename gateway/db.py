"""The gateway's SQLite store: one file, WAL mode, shared by every component.

Each component owns its own tables and declares them with `ensure_schema`; no
component reads another's tables except through that component's functions.
WAL lets the CLI read while the service writes, and `synchronous=FULL` makes a
commit durable before we acknowledge anything to a device or post to a chain.

The file holds secrets (device registrations, ledger state, chargers' password hashes):
it and its -wal/-shm files are created 0600, and files of ours found more open are
tightened with a warning.
"""
import logging
import os
import sqlite3
from pathlib import Path

DEFAULT_DB = "egs-gateway.sqlite"
SIDE_FILES = ("", "-wal", "-shm", "-journal")

log = logging.getLogger("egs.gateway.db")


def _tighten(path):
    """chmod 0600 the database and its side files when they are ours and more open."""
    for suffix in SIDE_FILES:
        f = f"{path}{suffix}"
        try:
            st = os.stat(f)
            if st.st_uid != os.geteuid() or not st.st_mode & 0o077:
                continue
            os.chmod(f, 0o600)
        except OSError:         # not there (a side file comes and goes), or not ours to change
            continue
        log.warning("%s was readable by others (mode %04o): changed to 0600", f, st.st_mode & 0o777)


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
        _tighten(path)
        # SQLite creates the -wal and -shm files with the database's mode, under the umask
        old = os.umask(0o077)
        try:
            conn = sqlite3.connect(path, isolation_level=None, timeout=30, check_same_thread=False)
            conn.execute("PRAGMA journal_mode=WAL")
        finally:
            os.umask(old)
        _tighten(path)
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
