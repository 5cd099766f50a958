"""What every `egs-gw` command shares: --config, --db, --json, and one-line errors.

A command is written as

    @group.command("list")
    @common_options
    def list_(app): ...

and receives an `App` holding the loaded config, a lazily opened store and the
output mode. Errors have one shape (docs/gateway.md, "When a command fails"): one line
`egs-gw: error: …` on stderr, or `{"error", "exit"}` with --json; exit 1 for what went
wrong (`UserError`, ConfigError/ValueError/OSError of the components, a failed outcome),
exit 2 for usage mistakes (`UsageError`). `Program`, the root group, enforces it for
every command below it, whatever class the command is; never a traceback.
Output for people goes through `console()`, `table()`, `iso()` and `ago()` here, so every
command prints alike; arguments every group reads (`parse_time`, `read_public_key`, secrets
through `secret_option`: from a file or stdin, never only on the command line) too.
Destructive commands ask first through `confirm()` (`--yes` for scripts).
"""
import datetime
import functools
import json
import os
import re
import sqlite3
import stat
import sys
import time
from pathlib import Path

import click
from rich.console import Console
from rich.table import Table

from gateway import config as config_mod
from gateway import db as db_mod


class UserError(click.ClickException):
    """Something the user can fix went wrong: one line on stderr, exit status 1."""

    prog = "egs-gw"
    as_json = False     # set by Program when the command line has --json

    def show(self, file=None):
        message = " ".join(self.format_message().split())     # one line, whatever it quotes
        if self.as_json:
            click.echo(json.dumps({"error": message, "exit": self.exit_code}), err=True)
        else:
            click.echo(f"{self.prog}: error: {message}", err=True)


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
        self._created = None

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
            if not path.exists():
                dirs = [d for d in path.absolute().parents if not d.exists()]
                self._created = (path, dirs)      # removed again if the command fails
            self._conn = db_mod.connect(self.db_path)
        return self._conn

    def discard_created(self):
        """A command that failed leaves no database it created, nor the directories for it."""
        if self._created is None:
            return
        path, dirs = self._created
        self._created = None
        if self._conn is not None:
            self._conn.close()
            self._conn = None
        for suffix in ("", "-wal", "-shm", "-journal"):
            Path(f"{path}{suffix}").unlink(missing_ok=True)
        for d in dirs:          # innermost first; one that holds something else stays
            try:
                d.rmdir()
            except OSError:
                break

    def emit(self, data, human=None, ok=True):
        """Print `data` as JSON with --json, else call `human(data)` (rich output).

        `ok=False` is a failed outcome (a refusal, a session left in review, a service
        down): printed all the same, then exit status 1."""
        if self.json:
            click.echo(json.dumps(data, indent=2, sort_keys=True, default=str))
        elif human is not None:
            human(data)
        else:
            click.echo(json.dumps(data, indent=2, sort_keys=True, default=str))
        if not ok:
            sys.exit(1)


def common_options(fn):
    @click.option("--config", "config_path", type=click.Path(dir_okay=False), default=None,
                  envvar="EGS_GW_CONFIG", help="Gateway config file (TOML).")
    @click.option("--db", "db_path", type=click.Path(dir_okay=False), default=None,
                  envvar="EGS_GW_DB", help="Gateway SQLite database (overrides store.db).")
    @click.option("--json", "as_json", is_flag=True, help="Machine-readable JSON output.")
    @functools.wraps(fn)
    def wrapper(config_path, db_path, as_json, **kwargs):
        app = App(config_path, db_path, as_json)
        failed = True
        try:
            result = fn(app, **kwargs)
            failed = False
            return result
        except (config_mod.ConfigError, ValueError, OSError) as e:
            if isinstance(e, UserError):
                raise
            raise UserError(str(e)) from None
        except (SystemExit, click.exceptions.Exit) as e:
            failed = (e.code if isinstance(e, SystemExit) else e.exit_code) not in (0, None)
            raise
        finally:
            if failed:
                app.discard_created()

    return wrapper


def fail(message):
    raise UserError(message)


class UsageError(UserError):
    """A mistake in how a command was called (exit status 2, like click's usage errors)."""
    exit_code = 2


def confirm(yes, question):
    """Ask before a destructive step: `--yes` skips the question; on a terminal the user is
    asked (no: exit 1, nothing done); without a terminal and without --yes, a one-line
    error and exit status 2, so a script never hangs and never destroys by accident."""
    if yes:
        return
    if not (sys.stdin.isatty() and sys.stdout.isatty()):
        raise UsageError(f"{question.rstrip('?')}: not confirmed (no terminal; give --yes)")
    if not click.confirm(question, default=False, err=True):
        raise UserError("not confirmed; nothing changed")


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


class Seconds(click.ParamType):
    """A duration in seconds: a finite number from 0 (click's float takes nan and 1e999999 = inf,
    which would wait forever)."""

    name = "seconds"

    def convert(self, value, param, ctx):
        if isinstance(value, int | float) and not isinstance(value, bool):
            number = float(value)
        else:
            try:
                number = float(str(value).strip())
            except ValueError:
                self.fail(f"not a number of seconds: {value!r}", param, ctx)
        if not 0 <= number <= 10 ** 9:      # also false for nan
            self.fail(f"{value!r} is not a number of seconds from 0 to 1e9", param, ctx)
        return number


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


def _warn(message):
    ctx = click.get_current_context(silent=True)
    prog = getattr(ctx.find_root().command, "prog", UserError.prog) if ctx else UserError.prog
    click.echo(f"{prog}: warning: {message}", err=True)


def read_secret(path, what, warn=_warn):
    """The secret in file `path`: its first line, without the line ending. `-` is stdin,
    asked for with hidden input when stdin is a terminal. A file its group or others may
    read is warned about in one line (the secret is accepted); one that cannot be read is
    a UserError naming `what`."""
    if str(path) == "-":
        if sys.stdin.isatty():          # "--wifi-password-file" asks "wifi password: "
            name = what.lstrip("-").removesuffix("-file").replace("-", " ")
            return click.prompt(name, hide_input=True, err=True)
        return sys.stdin.readline().rstrip("\r\n")
    try:
        with open(path, encoding="utf-8") as f:
            mode = os.fstat(f.fileno()).st_mode
            text = f.readline().rstrip("\r\n")
    except (OSError, UnicodeDecodeError) as e:
        reason = getattr(e, "strerror", None) or "not UTF-8 text"
        raise UserError(f"{what}: cannot read {path}: {reason}") from None
    if stat.S_ISREG(mode) and mode & 0o077:
        warn(f"{what}: {path} is readable by others (mode {mode & 0o777:04o}); chmod 600 it")
    return text


def secret_option(value, path, option, required=False, allow_empty=False):
    """A secret a command takes as `--X-file PATH` (`read_secret`) or, still accepted, as
    `--X VALUE` with a one-line warning that the value shows in shell history and `ps`.
    Neither given: None, or when `required` a hidden prompt on a terminal (a usage error
    without one). `option` is the old option's name, `--X`."""
    file_option = f"{option}-file"
    if value is not None and path is not None:
        raise UsageError(f"give {option} or {file_option}, not both")
    if path is not None:
        value = read_secret(path, file_option)
        if not value and not allow_empty:
            raise UserError(f"{file_option}: {'stdin' if str(path) == '-' else path} is empty")
    elif value is not None:
        if value:
            _warn(f"{option} puts the secret in shell history and `ps`; "
                  f"use {file_option} FILE (- for stdin)")
    elif required:
        if not sys.stdin.isatty():
            raise UsageError(f"missing {file_option} (or a terminal to ask on)")
        value = click.prompt(option.lstrip("-").replace("-", " "), hide_input=True, err=True)
    return value


def stderr(message):
    print(message, file=sys.stderr)


def _one_line(exc, ctx):
    path = (exc.ctx or ctx).command_path.partition(" ")[2] if (exc.ctx or ctx) else ""
    return UsageError(f"{path}: {exc.format_message()}" if path else exc.format_message())


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


def _wants_json(args):
    args = [str(a) for a in args]
    return "--json" in (args[:args.index("--")] if "--" in args else args)


class Program(OneLineGroup):
    """The root group of a console script (`egs-gw`, `egs-sim`): every error below it,
    whatever command raised it, leaves in the one shape of `UserError` (JSON with --json),
    usage mistakes with exit status 2, anything else with 1. An unexpected exception is a
    defect: one line naming it (the traceback with EGS_TRACEBACK=1), exit status 1."""

    prog = "egs-gw"
    _json = False

    def main(self, args=None, prog_name=None, **extra):
        args = list(sys.argv[1:] if args is None else args)
        self._json = _wants_json(args)
        return super().main(args, prog_name=prog_name or self.prog, **extra)

    def _shaped(self, e):
        if isinstance(e, UserError):
            out = e
        elif isinstance(e, click.UsageError):
            out = _one_line(e, e.ctx)
        elif isinstance(e, click.ClickException):
            out = UserError(e.format_message())
            out.exit_code = e.exit_code
        elif isinstance(e, sqlite3.Error):
            out = UserError(f"database error: {e}")
        else:
            out = UserError(f"internal error (a defect, please report it): {type(e).__name__}: {e}")
        out.prog, out.as_json = self.prog, self._json
        return out

    def _guarded(self, fn, *args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except (click.exceptions.Exit, click.Abort, EOFError, BrokenPipeError):
            raise
        except Exception as e:
            if os.environ.get("EGS_TRACEBACK") and not isinstance(e, click.ClickException):
                raise
            raise self._shaped(e) from None

    def make_context(self, info_name, args, parent=None, **extra):
        return self._guarded(super().make_context, info_name, args, parent=parent, **extra)

    def invoke(self, ctx):
        return self._guarded(super().invoke, ctx)
