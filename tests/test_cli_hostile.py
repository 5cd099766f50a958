"""Every command of `egs-gw` and `egs-sim` against hostile command lines.

The click command trees are walked, so a command added tomorrow is covered too. Each
command gets no arguments, each required parameter left out in turn, and each of its
parameters given a malformed value (not a number, negative, 1e999999, NaN, a huge
string, bytes that are not UTF-8, a path out of the sandbox), and the shared options a
missing or wrong file. What a user relies on: never a traceback; a usage mistake exits
2 and anything else that fails exits 1; an error is one line on stderr (`… error: …`,
or a JSON object with --json); a command that failed leaves nothing on disk (no empty
database at a mistyped --db). Commands that need a running service (a charger call, the
ledger's chain) fail with exit 1 and one line, since none runs here.

The bulk runs in this process (CliRunner), a sample through the real console scripts.
Long-running commands (`run`, `ledger run`, the emulators) get only values that must be
refused before they start, through a subprocess.
"""
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import click
import pytest
from click.testing import CliRunner

from gateway.cli import main as gw_main
from sim.cli import main as sim_main

ROOT = Path(__file__).resolve().parents[1]
OUTSIDE = "../" * 16 + "egs-hostile-escape/x"     # resolves to /egs-hostile-escape/x
NUMBERS = ["abc", "-1", "1e999999", "nan"]
TEXT = ["-1", "x" * 20000, "\udcff\udcfe", OUTSIDE]


def hostile(param):
    """Malformed values for `param`: its type's worst (keeps the walk quick)."""
    t = param.type
    if isinstance(t, click.Choice):
        return ["abc", "\udcff"]
    if isinstance(t, click.types.IntParamType | click.types.FloatParamType) or t.name in (
            "eea", "price", "energy"):
        return NUMBERS
    return TEXT
SERVING = {("run",), ("ledger", "run"), ("meter",), ("device",), ("charger",)}


def leaves(group, path=()):
    for name, cmd in sorted(group.commands.items()):
        if isinstance(cmd, click.Group):
            yield from leaves(cmd, (*path, name))
        else:
            yield (*path, name), cmd


def dummy(param):
    t = param.type
    if isinstance(t, click.Choice):
        return str(t.choices[0])
    if isinstance(t, click.types._NumberRangeBase):
        lo = t.min if t.min is not None else 1
        return str(int(lo) + 1 if t.min_open else int(lo))
    if isinstance(t, click.types.IntParamType | click.types.FloatParamType):
        return "1"
    if t.name in ("eea", "price", "energy"):
        return "1"
    return "x"


def opt(param):
    return max(param.opts, key=len)


def required_args(cmd, leave_out=None):
    """Dummies for every required parameter but `leave_out`, options before arguments."""
    opts, args = [], []
    for p in cmd.params:
        if not p.required or p is leave_out:
            continue
        if isinstance(p, click.Argument):
            args.append(dummy(p))
        else:
            opts += [opt(p), dummy(p)]
    return opts, args


def with_value(cmd, param, value):
    opts, args = required_args(cmd, leave_out=param)
    if isinstance(param, click.Argument):
        pos = [p for p in cmd.params if isinstance(p, click.Argument)]
        args = [value if p is param else dummy(p) for p in pos if p.required or p is param]
        return opts + ["--"] + args
    return opts + [opt(param), value] + (["--"] + args if args else [])


def cases(group, prog):
    for path, cmd in leaves(group):
        serving = path in SERVING
        if not serving:
            yield path, "no arguments", []
        for p in cmd.params:
            if p.required and not (isinstance(p, click.Argument) and p.nargs == -1):
                opts, args = required_args(cmd, leave_out=p)
                yield path, f"without {p.name}", opts + args
        for p in cmd.params:
            if getattr(p, "is_flag", False) or p.name in ("help", "config_path", "db_path"):
                continue
            if serving and isinstance(p.type, click.types.StringParamType | click.Path):
                continue    # accepted: it would start serving
            for v in hostile(p):
                yield path, f"{p.name}={v[:12]!r}", with_value(cmd, p, v)
        if not serving and any(p.name == "db_path" for p in cmd.params):
            opts, args = required_args(cmd)
            tail = ["--"] + args if args else []
            yield path, "--db in a missing directory", opts + ["--db", "nowhere/deeper/gw.sqlite"] + tail
            yield path, "--db a directory", opts + ["--db", "."] + tail
            yield path, "--config missing", opts + ["--config", "nowhere.toml"] + tail
            yield path, "--config a directory", opts + ["--config", "."] + tail
            yield path, "--json error", opts + ["--json", "--db", "nowhere/gw.sqlite"] + tail


def check(prog, path, what, code, out, err, created):
    where = f"{prog} {' '.join(path)} ({what})"
    assert "Traceback" not in out + err, f"{where}: traceback\n{err[-3000:]}"
    assert "internal error" not in err, f"{where}: {err}"
    assert code in (0, 1, 2), f"{where}: exit {code}\n{err[-2000:]}"
    if what.startswith("without ") or what == "no arguments" and code != 0 and "Missing" in err:
        assert code == 2, f"{where}: a usage mistake exits 2, got {code}: {err}"
    if code == 1 and not err.strip():       # a failed outcome: printed on stdout, no error
        assert out.strip(), f"{where}: exit 1 and nothing said"
    elif code != 0:
        # a warning before the error is its own line (a secret given on the command line)
        lines = [x for x in err.strip().splitlines() if not x.startswith(f"{prog}: warning: ")]
        assert len(lines) == 1, f"{where}: error of {len(lines)} lines:\n{err[-3000:]}"
        line = lines[-1]
        if "--json" in what:
            body = json.loads(line)
            assert set(body) == {"error", "exit"} and body["exit"] == code, f"{where}: {line}"
        else:
            assert line.startswith(f"{prog}: error: "), f"{where}: {line}"
    if code != 0:
        assert not created, f"{where}: failed (exit {code}) but left {created} behind"


def run_in(tmp_path, n, fn):
    box = tmp_path / f"c{n}"
    box.mkdir()
    escape = Path("/egs-hostile-escape")
    before = escape.exists()
    cwd = os.getcwd()
    os.chdir(box)
    try:
        code, out, err = fn(box)
    finally:
        os.chdir(cwd)
    created = sorted(str(p.relative_to(box)) for p in box.rglob("*"))
    if escape.exists() and not before:
        shutil.rmtree(escape, ignore_errors=True)
        created.append(str(escape))
    shutil.rmtree(box, ignore_errors=True)
    return code, out, err, created


@pytest.mark.parametrize("prog,group", [("egs-gw", gw_main), ("egs-sim", sim_main)])
def test_no_command_line_makes_a_traceback(tmp_path, monkeypatch, prog, group):
    monkeypatch.delenv("EGS_GW_CONFIG", raising=False)
    monkeypatch.setenv("EGS_GW_DB", "gw.sqlite")     # relative: inside each case's sandbox
    monkeypatch.setenv("EGS_RELEASE_PUBKEY", "")
    runner = CliRunner()
    problems = []
    slow = []
    for n, (path, what, args) in enumerate(cases(group, prog)):
        if path in SERVING:
            slow.append((path, what, args))
            continue

        def invoke(box, argv=(*path, *args)):
            r = runner.invoke(group, list(argv), catch_exceptions=True)
            if r.exception is not None and not isinstance(r.exception, SystemExit):
                import traceback
                return 99, r.stdout, "Traceback\n" + "".join(traceback.format_exception(r.exception))
            return r.exit_code, r.stdout, r.stderr
        code, out, err, created = run_in(tmp_path, n, invoke)
        try:
            check(prog, path, what, code, out, err, created)
        except AssertionError as e:
            problems.append(str(e))
    # the long-running commands and a sample of the rest through the real console script
    sample = slow + [c for i, c in enumerate(cases(group, prog)) if c[0] not in SERVING and i % 97 == 0]
    module = "gateway.cli" if prog == "egs-gw" else "sim.cli"
    for n, (path, what, args) in enumerate(sample, 100000):
        def spawn(box, argv=(*path, *args)):
            env = dict(os.environ, PYTHONPATH=str(ROOT))
            argv = [a.encode("utf-8", "surrogateescape") for a in argv]
            try:
                p = subprocess.run([sys.executable, "-m", module, *argv], cwd=box, capture_output=True,
                                   env=env, timeout=30, check=False)
            except subprocess.TimeoutExpired:     # a guard, not a measure: it should have refused
                return 98, "", "still running: the value was accepted"
            return (p.returncode, p.stdout.decode("utf-8", "replace"),
                    p.stderr.decode("utf-8", "replace"))
        code, out, err, created = run_in(tmp_path, n, spawn)
        try:
            check(prog, path, what, code, out, err, created)
        except AssertionError as e:
            problems.append(str(e))
    assert not problems, f"{len(problems)} problem(s):\n\n" + "\n\n".join(problems[:40])
