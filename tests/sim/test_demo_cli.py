"""`python -m sim.demo` refuses bad options before it starts anything, ends a Ctrl-C during
the protocol walk-through cleanly, and the report's energy check ties the signed registers
to the intervals and the settlements (sim/invariants.py metered_vs_settled)."""
import sqlite3

import pytest
from click.testing import CliRunner

from sim import demo


@pytest.fixture
def nothing_runs(monkeypatch):
    """The walk-through and the community must not start: each would record its call."""
    calls = []
    monkeypatch.setattr(demo.demo_protocol, "run", lambda *a, **k: calls.append("protocol"))
    monkeypatch.setattr(demo, "run_community",
                        lambda *a, **k: calls.append("community") or (0, None, None))
    monkeypatch.setattr(demo, "install_sigterm", lambda: None)
    return calls


@pytest.mark.parametrize("args, message", [
    (["--hours", "nan"], "--hours"),
    (["--speed", "nan"], "--speed"),
    (["--start-hour", "nan"], "--start-hour"),
    (["--charger-kw", "nan"], "--charger-kw"),
    (["--reading-interval", "nan"], "--reading-interval"),
    (["--reading-interval", "inf"], "--reading-interval"),
    (["--reading-interval", "0"], "--reading-interval"),
    (["--reading-interval", "-300"], "--reading-interval"),
    (["--reading-interval", "7"], "--reading-interval"),
    (["--reading-interval", "100000"], "--reading-interval"),
])
def test_bad_values_are_one_line_before_anything_runs(nothing_runs, tmp_path, args, message):
    res = CliRunner().invoke(demo.main, [*args, "--out", str(tmp_path / "out")])
    assert res.exit_code == 2, res.output
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("demo failed: ") and message in lines[0]
    assert nothing_runs == []
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("args, message", [
    (["--households", "0"], "--households"),
    (["--chargers", "-1"], "--chargers"),
    (["--hours", "0.1"], "--hours"),
    (["--speed", "0"], "--speed"),
    (["--speed", "inf"], "--speed"),
    (["--households", "many"], "--households"),
])
def test_out_of_range_is_refused_by_click(nothing_runs, tmp_path, args, message):
    res = CliRunner().invoke(demo.main, [*args, "--out", str(tmp_path / "out")])
    assert res.exit_code == 2 and message in res.stderr
    assert nothing_runs == []


@pytest.mark.parametrize("interval", ["300", "900", "1800", "0.5"])
def test_good_reading_intervals_are_accepted(nothing_runs, tmp_path, interval):
    res = CliRunner().invoke(demo.main, ["--reading-interval", interval, "--out",
                                         str(tmp_path / "out")])
    assert res.exit_code == 0, res.stderr
    assert nothing_runs == ["protocol", "community"]


def test_an_output_directory_in_use_is_refused_first(nothing_runs, tmp_path):
    (tmp_path / "report.json").write_text("{}")
    res = CliRunner().invoke(demo.main, ["--out", str(tmp_path)])
    assert res.exit_code == 2 and "not empty" in res.stderr
    assert nothing_runs == []


def test_ctrl_c_during_the_walkthrough_exits_130(nothing_runs, monkeypatch, tmp_path):
    def interrupted(*a, **k):
        raise KeyboardInterrupt
    monkeypatch.setattr(demo.demo_protocol, "run", interrupted)
    res = CliRunner().invoke(demo.main, ["--out", str(tmp_path / "out")])
    assert res.exit_code == 130 and "interrupted" in res.stderr
    assert "Traceback" not in res.output + res.stderr
    assert nothing_runs == []


# ---------------------------------------------------------------- metered vs settled

DAY_END = 10_000
ACCOUNT = "0x" + "ab" * 20


def store(readings, intervals, batch):
    """The columns of the gateway's tables the check reads."""
    conn = sqlite3.connect(":memory:")
    conn.executescript("""
        CREATE TABLE devices (id TEXT, account TEXT);
        CREATE TABLE readings (device_id TEXT, seq INTEGER, time_epoch INTEGER,
                               import_wh INTEGER, export_wh INTEGER, time_trusted INTEGER);
        CREATE TABLE intervals (device_id TEXT, start INTEGER, end INTEGER, import_wh INTEGER,
                                export_wh INTEGER, state TEXT);
        CREATE TABLE ledger_batch_accounts (account TEXT, export_wh INTEGER, import_wh INTEGER);
    """)
    conn.execute("INSERT INTO devices VALUES ('d1', ?)", (ACCOUNT,))
    for seq, (t, imp, exp) in enumerate(readings, 1):
        conn.execute("INSERT INTO readings VALUES ('d1', ?, ?, ?, ?, 1)", (seq, t, imp, exp))
    for start, imp, exp in intervals:
        conn.execute("INSERT INTO intervals VALUES ('d1', ?, ?, ?, ?, 'settled')",
                     (start, start + 900, imp, exp))
    for imp, exp in batch:
        conn.execute("INSERT INTO ledger_batch_accounts VALUES (?, ?, ?)", (ACCOUNT, exp, imp))
    return conn


# readings at 8300 s, 9200 s and 10 010 s (just after the day's end at 10 000 s); the two
# intervals (8200-9100, 9100-10 000) split what the registers counted up to the end
READINGS = [(8300, 1000, 5000), (9200, 1100, 5600), (10_010, 1210, 6300)]
INTERVALS = [(8200, 90, 500), (9100, 110, 700)]


def test_energy_check_passes_when_registers_intervals_and_settlements_agree():
    from sim.invariants import metered_vs_settled

    conn = store(READINGS, INTERVALS, [(90, 500), (110, 700)])
    assert metered_vs_settled(conn, DAY_END) == []


def test_energy_check_catches_intervals_that_exceed_the_signed_registers():
    from sim.invariants import metered_vs_settled

    inflated = [(8200, 90, 500), (9100, 110, 900)]         # 200 Wh of export nobody signed
    conn = store(READINGS, inflated, [(90, 500), (110, 900)])
    problems = metered_vs_settled(conn, DAY_END)
    assert len(problems) == 1 and "export 1400 Wh" in problems[0] and "600..1300" in problems[0]


def test_energy_check_catches_a_settlement_that_differs_from_the_intervals():
    from sim.invariants import metered_vs_settled

    conn = store(READINGS, INTERVALS, [(90, 500)])           # one interval never settled
    problems = metered_vs_settled(conn, DAY_END)
    assert len(problems) == 1 and ACCOUNT in problems[0]


def test_energy_check_catches_energy_without_readings():
    from sim.invariants import metered_vs_settled

    conn = store([], INTERVALS, [(90, 500), (110, 700)])
    assert any("no trusted reading" in p for p in metered_vs_settled(conn, DAY_END))
