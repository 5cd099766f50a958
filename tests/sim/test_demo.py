"""`make demo`, small and fast: a community of 3 households (real firmware under MicroPython),
the car park's PV and one charger for 2 simulated hours; the report's invariants hold, the
chart is a PNG, and nothing the demo started outlives it — also when it is interrupted."""
import io
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from rich.console import Console

from sim.services import ROOT
from sim.stack import LEDGER_KEY_ENV

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def processes_mentioning(text):
    """Live processes whose command line contains `text` (every process the demo starts
    has its output directory in its arguments)."""
    found = []
    for p in Path("/proc").iterdir():
        if not p.name.isdigit() or int(p.name) == os.getpid():
            continue
        try:
            cmd = (p / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            state = (p / "stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if text in cmd and state != "Z":
            found.append(f"{p.name}: {cmd[:160]}")
    return found


def wait_gone(text, timeout=15):
    deadline = time.monotonic() + timeout
    while processes_mentioning(text) and time.monotonic() < deadline:
        time.sleep(0.2)
    return processes_mentioning(text)


@pytest.fixture(scope="module")
def small_day(tmp_path_factory):
    from sim.community import Options
    from sim.demo import run_community

    out = tmp_path_factory.mktemp("demo") / "run"
    opts = Options(households=3, chargers=1, hours=2, start_hour=11, speed=720, out=out,
                   seed=7, charger_kw=3.7)
    text = io.StringIO()
    try:
        status, data, chart = run_community(opts, live=False,
                                            console=Console(file=text, width=150))
    finally:
        leftovers = wait_gone(str(out))
    report = json.loads((out / "report.json").read_text())
    return {"status": status, "data": data, "chart": chart, "out": out, "text": text.getvalue(),
            "report": report, "leftovers": leftovers,
            "clock_after": os.environ.get("EGS_CLOCK"),
            "key_after": os.environ.get(LEDGER_KEY_ENV)}


def test_every_invariant_holds(small_day):
    checks = {c["name"]: c for c in small_day["report"]["invariants"]}
    assert set(checks) == {"no reading lost", "energy conserved", "nothing applied twice",
                           "nothing unsigned counted", "no crash"}
    failed = [f"{c['name']}: {c['detail']}" for c in checks.values() if not c["ok"]]
    assert not failed, "\n".join(failed) + "\n" + small_day["text"][-3000:]
    assert small_day["status"] == 0
    # the checks behind them ran: settlement events counted on chain, registers compared
    on_chain = small_day["report"]["chain_settlements"]
    assert on_chain["twice"] == [] and on_chain["events"] == on_chain["ids"]
    assert on_chain["ids"] == small_day["report"]["reconcile"]["applied"] > 0
    assert "signed registers" in checks["energy conserved"]["detail"]
    assert "security event" in checks["nothing unsigned counted"]["detail"]


def test_readings_come_from_the_real_firmware(small_day):
    r = small_day["report"]
    houses = r["households"]
    assert [h["id"] for h in houses] == ["house-01", "house-02", "house-03", "carport"]
    assert {h["model"] for h in houses} >= {"sdm630", "sdm120", "sdm72"}
    # 2 simulated hours at a reading every 5 minutes: about 24 signed readings per device
    for h in houses:
        assert 20 <= h["readings"] <= 27, h
    device_logs = list((small_day["out"] / "devices").glob("*/device.log"))
    assert len(device_logs) == 4
    for log in device_logs:
        assert "romfs" in log.read_text()        # the firmware image under the MicroPython binary


def test_energy_figures_add_up(small_day):
    r = small_day["report"]
    t = r["totals"]
    assert t["exported_wh"] > 0 and t["imported_wh"] > 0 and t["generated_wh"] > t["exported_wh"]
    # signed meter readings against the simulator's truth: the meters measured what happened
    net_truth = t["generated_wh"] - t["consumed_wh"]
    net_metered = t["exported_wh"] - t["imported_wh"]
    assert abs(net_truth - net_metered) <= 0.02 * abs(net_truth) + 50
    w = r["watt"]
    assert w["minted"] == t["minted_wh"] > 0
    assert w["book_supply"] == w["chain_supply"] == w["minted"] - w["burned_intervals"] - w["burned_sessions"]
    assert r["reconcile"]["differences"] == []


def test_market_charging_and_commission(small_day):
    r = small_day["report"]
    assert r["market"]["trades"] >= 1
    ch = r["charging"]
    assert ch["sessions"] >= 1 and ch["settled"] >= 1, r["sessions"]
    for s in r["sessions"]:
        assert s["state"] == "settled" or s["review"], s
    settled = [s for s in r["sessions"] if s["state"] == "settled"]
    assert all(s["energy_eea"] > 0 and s["fee_eea"] > 0 for s in settled)
    cm = r["commission"]
    assert cm["total"] > 0
    assert cm["owners"] + cm["education"] + cm["network"] == cm["total"]
    # 80/10/10: per settlement the shares are floored, so within a few base units per batch
    assert abs(cm["education"] - cm["total"] // 10) <= 100
    assert abs(cm["owners"] - cm["total"] * 8 // 10) <= 100


def test_forged_record_quarantined_and_replay_stored_once(small_day):
    r = small_day["report"]
    q = {x["reason"]: x for x in r["security"]["quarantine"]}
    assert sorted(q) == ["bad_signature", "malformed"]
    inj = r["injected"]
    assert q["bad_signature"]["device_id"] == inj["device"]
    assert q["bad_signature"]["raw"] == inj["forged"]
    # bad input: the record cut off halfway is a clear rejection, logged, no crash
    assert q["malformed"]["raw"] == inj["truncated"] and q["malformed"]["detail"]
    assert r["security"]["events"].get("bad_signature") == 1
    assert r["security"]["events"].get("malformed") == 1
    checks = {c["name"]: c for c in r["invariants"]}
    assert "quarantined as malformed" in checks["no crash"]["detail"]


def test_chart_is_a_png(small_day):
    path = small_day["chart"]
    assert path.exists() and str(path) in small_day["text"]
    assert path.read_bytes()[:8] == PNG_MAGIC
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    img = plt.imread(path)
    assert img.shape[0] > 600 and img.shape[1] > 800


def test_report_text_names_the_figures(small_day):
    text = small_day["text"]
    for phrase in ("Energy per household", "WATT minted", "WATT burned", "market price",
                   "EEA paid for charging", "storage commission", "Charging sessions",
                   "Security events", "egs-gw ledger reconcile: clean", "PASS no reading lost"):
        assert phrase in text, phrase


def test_nothing_left_running(small_day):
    assert small_day["leftovers"] == []


def test_environment_restored(small_day):
    """The simulated clock must not outlive the run: the caller is back on the wall clock;
    the ledger's private key is not left in the environment either."""
    assert small_day["clock_after"] is None
    assert small_day["key_after"] is None


def test_interrupt_stops_everything(tmp_path):
    """Ctrl-C (SIGINT) in the middle of the day: exit 130, and every process it started is gone."""
    out = tmp_path / "interrupted"
    proc = subprocess.Popen(
        [sys.executable, "-m", "sim.demo", "--skip-protocol", "--no-live", "--households", "2",
         "--chargers", "1", "--hours", "6", "--start-hour", "8", "--out", str(out)],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True)
    lines = []
    running = threading.Event()

    def read():
        for raw in proc.stdout:
            line = raw.decode(errors="replace")
            lines.append(line)
            if "running: gateway pid" in line:
                running.set()
    threading.Thread(target=read, daemon=True).start()
    try:
        assert running.wait(90), "".join(lines)
        assert processes_mentioning(str(out)), "nothing of the community is running"
        time.sleep(1.0)                       # well into the day
        os.kill(proc.pid, signal.SIGINT)
        assert proc.wait(60) == 130, "".join(lines)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    assert wait_gone(str(out)) == []
    assert "interrupted" in "".join(lines)
