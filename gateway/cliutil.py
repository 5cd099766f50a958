"""What every `egs-gw` command shares: --config, --db, --json, and one-line errors.

A command is written as

    @group.command("list")
    @common_options
    def list_(app): ...

and receives an `App` holding the loaded config, a lazily opened store and the
output mode. User mistakes raise `UserError` (or ConfigError/ValueError subclasses
the components define), which print one line on stderr and exit 1, never a traceback.
"""
import functools
import json
import sqlite3
import sys

import click

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

    def conn(self):
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
