"""What every `egs-gw` command shares: --config, --db, --json, and one-line errors.

A command is written as

    @group.command("list")
    @common_options
    def list_(app): ...

and receives an `App` holding the loaded config, a lazily opened store and the
output mode. User mistakes raise `UserError` (or ConfigError/ValueError subclasses
the components define), which print one line on stderr and exit 1, never a traceback.
Output for people goes through `console()`, `table()`, `iso()` and `ago()` here, so every
command prints alike; arguments every group reads (`parse_time`, `read_public_key`) too.
"""
import datetime
import functools
import json
import re
import sqlite3
import sys
import time
from pathlib import Path

import click
from rich.console import Console
from rich.table import Table

from gateway import config as config_mod
from gateway import db as db_mod


class UserError(click.ClickException):
    def show(self, file=None):
        click.echo(f"egs-gw: error: {self.format_message()}", err=True)


class App:
    def __init__(self, config_path, db_path, as_json):
        self.config_path = config_path
        self.json = as_json
        self.overrides = {}
        try:
            self.config = config_mod.load(config_path)
        except config_mod.ConfigError as e:
            raise UserError(str(e)) from None
        if db_path:
            self.config["store"]["db"] = db_path
        self._conn = None

    @property
    def db_path(self):
        return self.config["store"]["db"]

    def conn(self, must_exist=False):
        """The database; `must_exist` for commands about existing data, which must not
        create an empty one at a mistyped path."""
        path = Path(self.db_path)
        if must_exist and not path.exists():
            raise UserError(f"no gateway database at {path} (set --db or store.db)")
        if self._conn is None:
            self._conn = db_mod.connect(self.db_path)
        return self._conn

    def emit(self, data, human=None):
        """Print `data` as JSON with --json, else call `human(data)` (rich output)."""
        if self.json:
            click.echo(json.dumps(data, indent=2, sort_keys=True, default=str))
        elif human is not None:
            human(data)
        else:
            click.echo(json.dumps(data, indent=2, sort_keys=True, default=str))


def common_options(fn):
    @click.option("--config", "config_path", type=click.Path(dir_okay=False), default=None,
                  envvar="EGS_GW_CONFIG", help="Gateway config file (TOML).")
    @click.option("--db", "db_path", type=click.Path(dir_okay=False), default=None,
                  envvar="EGS_GW_DB", help="Gateway SQLite database (overrides store.db).")
    @click.option("--json", "as_json", is_flag=True, help="Machine-readable JSON output.")
    @functools.wraps(fn)
    def wrapper(config_path, db_path, as_json, **kwargs):
        app = App(config_path, db_path, as_json)
        try:
            return fn(app, **kwargs)
        except (config_mod.ConfigError, ValueError, OSError) as e:
            if isinstance(e, UserError):
                raise
            raise UserError(str(e)) from None

    return wrapper


def fail(message):
    raise UserError(message)


# ---- output for people ----------------------------------------------------------------

def console():
    """Standard output for people: no guessed highlighting, long lines (keys, URLs) kept whole."""
    return Console(highlight=False, soft_wrap=True)


def error_console():
    """Progress and warnings on stderr, so stdout stays one JSON document with --json."""
    return Console(stderr=True, highlight=False, soft_wrap=True)


def table(*columns, **options):
    """A rich table (`options` as rich.table.Table's: title, show_header, ...)."""
    return Table(*columns, **options)


def iso(ts):
    """Epoch seconds as ISO-8601 UTC (`2024-05-01T12:00:00Z`); None stays None."""
    if ts is None:
        return None
    return datetime.datetime.fromtimestamp(float(ts), datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def ago(ts, now=None):
    """How long ago epoch seconds `ts` was, in one unit: `45s ago`, `3h ago`, `never`."""
    if ts is None:
        return "never"
    s = int((now or time.time()) - ts)
    if s < 120:
        return f"{s}s ago"
    if s < 7200:
        return f"{s // 60}m ago"
    if s < 172800:
        return f"{s // 3600}h ago"
    return f"{s // 86400}d ago"


# ---- arguments -------------------------------------------------------------------------

_MAX_TIME = 2 ** 53


def parse_time(value, what="--since"):
    """Epoch seconds from an integer, an ISO date/time (UTC unless given) or a duration ago (15m, 2h, 1d)."""
    text = str(value).strip()
    t = None
    if re.fullmatch(r"\d+", text):
        t = int(text)
    m = re.fullmatch(r"(\d+)\s*([smhd])", text)
    if m:
        t = int(time.time()) - int(m.group(1)) * {"s": 1, "m": 60, "h": 3600, "d": 86400}[m.group(2)]
    if t is not None:
        if not -_MAX_TIME <= t <= _MAX_TIME:   # SQLite integers are 64-bit: a traceback otherwise
            raise UserError(f"{what}: {value!r} is out of range")
        return t
    try:
        dt = datetime.datetime.fromisoformat(text)
    except ValueError:
        raise UserError(f"{what}: expected epoch seconds, an ISO date/time or a duration like 2h, "
                        f"got {value!r}") from None
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=datetime.UTC)
    return int(dt.timestamp())


def read_public_key(text):
    """A device's public key given as text, or the path of a file holding it (PEM, hex, DER)."""
    from protocol.ocmf import BadKeyError, load_public_key
    p = Path(text)
    data = text
    try:
        if len(text) < 4096 and p.is_file():
            raw = p.read_bytes()
            data = raw if raw[:1] == b"\x30" else raw.decode("ascii", "replace")
    except OSError:
        pass
    try:
        return load_public_key(data)
    except BadKeyError as e:
        raise UserError(f"--pubkey: {e}") from None


def stderr(message):
    print(message, file=sys.stderr)


def _one_line(exc, ctx):
    return UserError(f"{ctx.command_path}: {exc.format_message()}")


class OneLineCommand(click.Command):
    """Usage mistakes and database errors as one line on stderr (click's default is
    usage + hint + error, and a traceback for sqlite3 errors)."""

    def parse_args(self, ctx, args):
        try:
            return super().parse_args(ctx, args)
        except click.UsageError as e:
            raise _one_line(e, ctx) from None

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except sqlite3.Error as e:
            raise UserError(f"database error: {e}") from None


class OneLineGroup(click.Group):
    """A group whose commands and subgroups report mistakes as one line too."""

    command_class = OneLineCommand

    def parse_args(self, ctx, args):
        try:
            return super().parse_args(ctx, args)
        except click.UsageError as e:
            raise _one_line(e, ctx) from None

    def resolve_command(self, ctx, args):
        try:
            return super().resolve_command(ctx, args)
        except click.UsageError as e:
            raise _one_line(e, ctx) from None


OneLineGroup.group_class = OneLineGroup
