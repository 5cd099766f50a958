"""The demo's report: what the community did in its day, and whether the invariants held.

Everything is read back from where the system keeps it — the gateway's SQLite store
(readings, intervals, settlement batches, balance book, trades, sessions, security
events), the devices' own flash logs, `egs-gw ledger reconcile` (the chain against the
store) — next to what the simulator made happen (PV generation and household load,
which no meter measures separately). `collect()` gathers the figures, `render()` prints
tables with rich and the invariants sim/invariants.py checked, `chart()` draws the PNG
with matplotlib (Agg backend, no display needed).
"""
import json
import time
from collections import defaultdict

from gateway.units import EEA
from sim.profiles import truth_wh
from sim.stack import QUARTER_S

WATT_REASONS = ("interval", "market_trades", "ocpp_session")


def _int(v):
    return int(v) if v is not None else 0


def _opt_int(v):
    return None if v is None else int(v)


def hhmm(t):
    return time.strftime("%H:%M", time.gmtime(t))


def kwh(wh):
    return f"{wh / 1000:,.2f}"


def eea(units):
    return f"{units / EEA:,.4f}"


def price_text(units):
    return "–" if units is None else f"{units / EEA:.4f}"


# ---------------------------------------------------------------- gathering

def collect(community):
    c = community
    conn = c.stack.db(timeout=10)
    try:
        return _collect(c, conn)
    finally:
        conn.close()


def _collect(c, conn):
    facts = c.facts
    day_start, day_end = c.day
    q = lambda sql, *a: conn.execute(sql, a).fetchall()

    book = defaultdict(int)          # (address, asset, reason) -> amount
    for r in q("SELECT address, asset, reason, amount, delta FROM balance_entries"):
        book[(r["address"], r["asset"], r["reason"])] += _int(r["amount"] if r["amount"] is not None
                                                              else r["delta"])
    balance = defaultdict(int)
    for (a, asset, _), v in book.items():
        balance[(a, asset)] += v

    per_account = {r["account"]: r for r in q(
        "SELECT account, SUM(export_wh) ex, SUM(import_wh) im, SUM(minted_wh) minted, "
        "SUM(burned_wh) burned, SUM(grid_import_wh) grid FROM ledger_batch_accounts GROUP BY account")}
    commission_paid = defaultdict(int)
    for r in q("SELECT account, commission_eea FROM ledger_batch_accounts"):
        commission_paid[r["account"]] += int(r["commission_eea"])

    households = []
    for h in c.households:
        rows = q("SELECT seq, time_epoch, import_wh, export_wh FROM readings WHERE device_id=? "
                 "AND time_trusted=1 ORDER BY seq", h.id)
        first, last = (rows[0], rows[-1]) if rows else (None, None)
        gen = con = 0.0
        if first is not None:
            gen, con = truth_wh(h, c.weather, first["time_epoch"], last["time_epoch"])
        iv = q("SELECT SUM(export_wh) ex, SUM(import_wh) im, COUNT(*) n, SUM(estimated) est, "
               "SUM(state='settled') settled FROM intervals WHERE device_id=?", h.id)[0]
        acc = per_account.get(h.account)
        sold = q("SELECT COALESCE(SUM(COALESCE(settled_wh, wh)), 0) wh, COUNT(*) n FROM market_trades "
                 "WHERE seller=?", h.account)[0]
        bought = q("SELECT COALESCE(SUM(COALESCE(settled_wh, wh)), 0) wh, COUNT(*) n FROM market_trades "
                   "WHERE buyer=?", h.account)[0]
        households.append({
            "id": h.id, "kind": h.kind, "model": h.model, "pv_kwp": h.pv_peak_w / 1000,
            "readings": len(rows),
            "from": first["time_epoch"] if first else None, "to": last["time_epoch"] if last else None,
            "generated_wh": round(gen), "consumed_wh": round(con),
            "exported_wh": (last["export_wh"] - first["export_wh"]) if first else 0,
            "imported_wh": (last["import_wh"] - first["import_wh"]) if first else 0,
            "interval_export_wh": _int(iv["ex"]), "interval_import_wh": _int(iv["im"]),
            "intervals": _int(iv["n"]), "estimated": _int(iv["est"]), "settled": _int(iv["settled"]),
            "minted_wh": _int(acc["minted"]) if acc else 0,
            "burned_wh": _int(acc["burned"]) if acc else 0,
            "grid_import_wh": _int(acc["grid"]) if acc else 0,
            "settled_export_wh": _int(acc["ex"]) if acc else 0,
            "settled_import_wh": _int(acc["im"]) if acc else 0,
            "sold_wh": sold["wh"], "bought_wh": bought["wh"],
            "commission_eea": commission_paid.get(h.account, 0),
            "watt": balance[(h.account, "WATT")], "eea": balance[(h.account, "EEA")],
        })
    keys = ("generated_wh", "consumed_wh", "exported_wh", "imported_wh", "minted_wh", "burned_wh",
            "grid_import_wh", "sold_wh", "bought_wh", "readings", "intervals", "settled")
    totals = {k: sum(h[k] for h in households) for k in keys}

    # WATT
    minted = sum(_int(r["minted"]) for r in per_account.values())
    burned = sum(_int(r["burned"]) for r in per_account.values())
    session_burn = -sum(v for (a, asset, reason), v in book.items()
                        if asset == "WATT" and reason == "ocpp_session")
    watt_book = sum(v for (a, asset), v in balance.items() if asset == "WATT")

    # market
    trades = [dict(r) for r in q(
        "SELECT t.id, t.buyer, t.seller, t.price, t.wh, t.eea, t.created_at, t.interval_start, "
        "t.settled_wh, o.source FROM market_trades t JOIN market_orders o ON o.id = t.buy_order "
        "ORDER BY t.id")]
    for t in trades:
        t["price"] = int(t["price"])
        t["eea"] = int(t["eea"])
    traded_wh = sum(t["wh"] for t in trades)
    traded_eea = sum(t["eea"] for t in trades)
    hourly = defaultdict(lambda: [0, 0])
    for t in trades:
        hr = int(t["created_at"] // 3600 * 3600)
        hourly[hr][0] += t["wh"]
        hourly[hr][1] += t["eea"]
    market = {
        "trades": len(trades), "wh": traded_wh, "eea": traded_eea,
        "vwap": traded_eea * 1000 // traded_wh if traded_wh else None,
        "min": min((t["price"] for t in trades), default=None),
        "max": max((t["price"] for t in trades), default=None),
        "session_trades": sum(1 for t in trades if t["source"] == "session"),
        "session_wh": sum(t["wh"] for t in trades if t["source"] == "session"),
        "hourly": [(hr, wh, e * 1000 // wh if wh else None) for hr, (wh, e) in sorted(hourly.items())],
        "orders": dict(q("SELECT source, COUNT(*) FROM market_orders GROUP BY source")),
        "open_orders": q("SELECT COUNT(*) FROM market_orders WHERE status='open'")[0][0],
        "shortfall_wh": sum(_int(r[0]) for r in q("SELECT shortfall_wh FROM market_settlements")),
    }

    # charging
    sessions = []
    for r in q("SELECT * FROM ocpp_transactions ORDER BY id"):
        filled = q("SELECT COALESCE(SUM(t.wh), 0) FROM market_trades t JOIN market_orders o "
                   "ON o.id = t.buy_order WHERE o.source='session' AND o.ref=?",
                   f"{r['charger_id']}:{r['id']}")[0][0]
        sessions.append({
            "id": r["id"], "charger": r["charger_id"], "id_tag": r["id_tag"], "state": r["state"],
            "start": r["start_epoch"], "stop": r["stop_epoch"], "energy_wh": _int(r["energy_wh"]),
            "source": r["energy_source"], "price": _int(r["price_per_kwh"]) or None,
            "energy_eea": _int(r["energy_eea"]), "fee_eea": _int(r["fee_eea"]),
            "market_wh": filled, "review": r["review_reason"], "flags": json.loads(r["flags"]),
            "settlement_id": r["settlement_id"]})
    settled_sessions = [s for s in sessions if s["state"] == "settled"]
    charging = {
        "sessions": len(sessions), "settled": len(settled_sessions),
        "review": sum(1 for s in sessions if s["state"] == "review"),
        "energy_wh": sum(s["energy_wh"] for s in settled_sessions),
        "market_wh": sum(s["market_wh"] for s in settled_sessions),
        "energy_eea": sum(s["energy_eea"] for s in settled_sessions),
        "fee_eea": sum(s["fee_eea"] for s in settled_sessions),
        "arrivals": facts.get("ev_arrivals", 0), "refused": facts.get("ev_refused", 0),
    }

    # commission and its split
    total_comm = sum(int(r[0]) for r in q("SELECT commission FROM ledger_batches"))
    owners = {o for o, _ in c.storage}
    interval_eea = {a: v for (a, asset, reason), v in book.items()
                    if asset == "EEA" and reason == "interval" and v > 0}
    split = {"owners": sum(v for a, v in interval_eea.items() if a in owners),
             "education": interval_eea.get(c.stack.education, 0),
             "network": interval_eea.get(c.stack.network, 0)}
    commission = {"total": total_comm, **split,
                  "per_owner": {a: interval_eea.get(a, 0) for a, _ in c.storage}}

    # security
    events = dict(q("SELECT kind, COUNT(*) FROM security_events GROUP BY kind"))
    quarantine = [dict(r) for r in q("SELECT id, device_id, seq, reason, detail, raw, count "
                                     "FROM quarantine ORDER BY id")]
    for r in quarantine:
        if isinstance(r["raw"], bytes):
            r["raw"] = r["raw"].decode("utf-8", "replace")
    ocpp_events = dict(q("SELECT kind, COUNT(*) FROM ocpp_events GROUP BY kind"))
    service = q("SELECT value FROM gateway_state WHERE key='service'")
    service = json.loads(service[0][0]) if service else {}

    # per interval, for the chart
    per_interval = defaultdict(lambda: {"export": 0, "import": 0})
    for r in q("SELECT start, SUM(export_wh) ex, SUM(import_wh) im FROM intervals "
               "GROUP BY start ORDER BY start"):
        per_interval[r["start"]] = {"export": r["ex"], "import": r["im"]}
    truth = {}
    for start in per_interval:
        g = u = 0.0
        for h, row in zip(c.households, households, strict=True):
            if row["from"] is None:
                continue
            a, b = max(start, row["from"]), min(start + QUARTER_S, row["to"])
            if b > a:
                gi, ci = truth_wh(h, c.weather, a, b)
                g += gi
                u += ci
        truth[start] = (g, u)
    charge_iv = defaultdict(float)
    for s in settled_sessions:
        if s["stop"] and s["stop"] > s["start"]:
            t = s["start"]
            while t < s["stop"]:
                b = min(s["stop"], (t // QUARTER_S + 1) * QUARTER_S)
                charge_iv[int(t // QUARTER_S * QUARTER_S)] += s["energy_wh"] * (b - t) / (s["stop"] - s["start"])
                t = b

    return {
        "community": c.opts.households, "day": [day_start, day_end], "speed": c.opts.speed,
        "households": households, "totals": totals,
        "watt": {"minted": minted, "burned_intervals": burned, "burned_sessions": session_burn,
                 "book_supply": watt_book,
                 "chain_supply": _opt_int((facts.get("reconcile") or {}).get("watt_supply"))},
        "market": market, "trades": trades, "charging": charging, "sessions": sessions,
        "commission": commission,
        "security": {"events": events, "quarantine": quarantine, "ocpp_events": ocpp_events},
        "service": service,
        "reconcile": facts.get("reconcile"),
        "chain_settlements": facts.get("chain_settlements"),
        "intervals": [{"start": s, **per_interval[s], "generated": truth[s][0], "consumed": truth[s][1],
                       "charging": charge_iv.get(s, 0.0)} for s in sorted(per_interval)],
        "samples": c.samples,
        "timing": {k: facts.get(k) for k in ("setup_s", "day_s", "finish_s")},
        "injected": c.injected,
    }


# ---------------------------------------------------------------- rendering

def render(data, checks, console, chart_path=None):
    from rich import box
    from rich.table import Table

    d0, d1 = data["day"]
    console.rule(f"[bold]Report: {time.strftime('%Y-%m-%d %H:%M', time.gmtime(d0))} – "
                 f"{time.strftime('%Y-%m-%d %H:%M', time.gmtime(d1))} UTC (simulated)")

    t = Table(title="Energy per household (kWh; generated/consumed: the simulator's truth, "
                    "exported/imported: the signed meter readings)", box=box.SIMPLE_HEAD)
    for col in ("household", "meter", "PV kWp", "readings", "generated", "consumed", "exported",
                "imported", "minted", "burned", "grid", "sold", "bought", "WATT end"):
        t.add_column(col, justify="left" if col in ("household", "meter") else "right")
    for h in data["households"]:
        t.add_row(h["id"], h["model"], f"{h['pv_kwp']:.1f}" if h["pv_kwp"] else "–",
                  str(h["readings"]), kwh(h["generated_wh"]), kwh(h["consumed_wh"]),
                  kwh(h["exported_wh"]), kwh(h["imported_wh"]), kwh(h["minted_wh"]),
                  kwh(h["burned_wh"]), kwh(h["grid_import_wh"]), kwh(h["sold_wh"]),
                  kwh(h["bought_wh"]), kwh(h["watt"]))
    tot = data["totals"]
    t.add_row("[bold]total", "", "", str(tot["readings"]), kwh(tot["generated_wh"]),
              kwh(tot["consumed_wh"]), kwh(tot["exported_wh"]), kwh(tot["imported_wh"]),
              kwh(tot["minted_wh"]), kwh(tot["burned_wh"]), kwh(tot["grid_import_wh"]),
              kwh(tot["sold_wh"]), kwh(tot["bought_wh"]), "", style="bold")
    console.print(t)

    w = data["watt"]
    m = data["market"]
    ch = data["charging"]
    cm = data["commission"]
    s = Table(box=box.SIMPLE_HEAD, show_header=False, title="Ledger, market, charging")
    s.add_column("what")
    s.add_column("figure", justify="right")
    s.add_column("note")
    s.add_row("WATT minted (exported energy)", kwh(w["minted"]) + " kWh", "interval settlement")
    s.add_row("WATT burned (household consumption)", kwh(w["burned_intervals"]) + " kWh",
              "up to each account's balance; the rest is grid import")
    s.add_row("WATT burned (EV charging)", kwh(w["burned_sessions"]) + " kWh", "the energy pool's")
    s.add_row("WATT supply", kwh(w["book_supply"]) + " kWh",
              f"chain totalSupply {kwh(w['chain_supply'])} kWh" if w["chain_supply"] is not None else "")
    s.add_row("trades", f"{m['trades']} ({kwh(m['wh'])} kWh)",
              f"{m['session_trades']} of them EV session buys ({kwh(m['session_wh'])} kWh)")
    s.add_row("market price (EEA/kWh)", price_text(m["vwap"]),
              f"volume-weighted; range {price_text(m['min'])} – {price_text(m['max'])}")
    s.add_row("EEA paid for traded energy", eea(m["eea"]) + " EEA", "buyers to sellers")
    s.add_row("charging sessions", f"{ch['settled']} settled, {ch['review']} review",
              f"{ch['arrivals']} EV arrivals, {ch['refused']} refused at authorization")
    s.add_row("energy charged", kwh(ch["energy_wh"]) + " kWh",
              f"{kwh(ch['market_wh'])} kWh bought at the market for the sessions")
    s.add_row("EEA paid for charging", eea(ch["energy_eea"] + ch["fee_eea"]) + " EEA",
              f"energy {eea(ch['energy_eea'])} to the pool + fees {eea(ch['fee_eea'])} to station owners")
    total = cm["total"]
    pct = (lambda v: f"{100 * v / total:.1f} %") if total else (lambda v: "–")
    s.add_row("storage commission charged", eea(total) + " EEA",
              f"owners {eea(cm['owners'])} ({pct(cm['owners'])}), education {eea(cm['education'])} "
              f"({pct(cm['education'])}), network {eea(cm['network'])} ({pct(cm['network'])})")
    console.print(s)

    if m["hourly"]:
        ht = Table(title="Market price over the day (volume-weighted, EEA/kWh)", box=box.SIMPLE_HEAD)
        ht.add_column("hour")
        ht.add_column("traded kWh", justify="right")
        ht.add_column("price", justify="right")
        for hr, wh, p in m["hourly"]:
            ht.add_row(hhmm(hr), kwh(wh), price_text(p))
        console.print(ht)

    if data["sessions"]:
        st = Table(title="Charging sessions", box=box.SIMPLE_HEAD)
        for col in ("tx", "charger", "idTag", "start", "stop", "kWh", "market kWh", "EEA/kWh",
                    "energy EEA", "fee EEA", "state"):
            st.add_column(col, justify="right" if col not in ("charger", "idTag", "state") else "left")
        for x in data["sessions"]:
            st.add_row(str(x["id"]), x["charger"], x["id_tag"], hhmm(x["start"]),
                       hhmm(x["stop"]) if x["stop"] else "–", kwh(x["energy_wh"]), kwh(x["market_wh"]),
                       price_text(x["price"]), eea(x["energy_eea"]), eea(x["fee_eea"]),
                       x["state"] + (f" ({x['review'][:60]})" if x["review"] else ""))
        console.print(st)

    sec = data["security"]
    et = Table(title="Security events", box=box.SIMPLE_HEAD)
    et.add_column("kind")
    et.add_column("count", justify="right")
    for k, n in sorted(sec["events"].items()):
        et.add_row(k, str(n))
    for k, n in sorted(sec["ocpp_events"].items()):
        if k not in ("session_settled",):
            et.add_row(f"ocpp: {k}", str(n))
    console.print(et)
    for qr in sec["quarantine"]:
        console.print(f"  quarantined #{qr['id']} {qr['device_id']} seq {qr['seq']}: "
                      f"[bold]{qr['reason']}[/] — {qr['detail'][:100]}")
    inj = data.get("injected")
    if inj:
        console.print(f"  injected at {hhmm(inj['at'])} with {inj['device']}'s broker credential: "
                      f"its record #{inj['seq']} with 50 kWh more export (signature kept) → "
                      f"quarantined; the genuine record replayed → acknowledged as a duplicate, "
                      f"stored once ({data['service'].get('duplicates', 0)} duplicates in all); "
                      f"the forged record cut off halfway → quarantined as malformed")

    rec = data["reconcile"] or {}
    diffs = rec.get("differences")
    console.print("egs-gw ledger reconcile: "
                  + ("[bold green]clean[/]" if diffs == [] else f"[bold red]{len(diffs or [])} differences[/]")
                  + f" at block {rec.get('block')}: {rec.get('applied')} settlements applied, "
                    f"{rec.get('pending')} pending, {rec.get('accounts')} accounts")
    for x in (diffs or [])[:10]:
        console.print(f"  [red]{x}")

    console.rule("Invariants (DESIGN.md)")
    for name, ok, detail in checks:
        console.print(f"{'[bold green]PASS' if ok else '[bold red]FAIL'}[/] {name}: {detail}")
    if chart_path:
        console.print(f"chart: {chart_path}")


# ---------------------------------------------------------------- chart

def chart(data, path):
    import matplotlib

    matplotlib.use("Agg")
    from datetime import UTC, datetime

    import matplotlib.dates as mdates
    import matplotlib.pyplot as plt

    dt = lambda t: datetime.fromtimestamp(t, UTC)
    iv = data["intervals"]
    fig, (ax1, ax2, ax3) = plt.subplots(3, 1, figsize=(12, 10), sharex=True,
                                        gridspec_kw={"height_ratios": [3, 2, 2]})
    n = data["community"]
    fig.suptitle(f"EGS community demo: {n} households, simulated "
                 f"{time.strftime('%Y-%m-%d', time.gmtime(data['day'][0]))} "
                 f"({data['speed']:g}x)", fontsize=13)
    if iv:
        x = [dt(r["start"] + QUARTER_S / 2) for r in iv]
        width = QUARTER_S / 86400 * 0.9
        ax1.bar(x, [r["export"] / 1000 for r in iv], width=width, color="#2e9e44",
                label="exported (metered, signed)")
        ax1.bar(x, [-r["import"] / 1000 for r in iv], width=width, color="#888888",
                label="imported (metered, signed)")
        ax1.plot(x, [r["generated"] / 1000 for r in iv], color="#f2a900", lw=2,
                 label="PV generation (simulated)")
        ax1.plot(x, [-r["consumed"] / 1000 for r in iv], color="#c0392b", lw=2,
                 label="household consumption (simulated)")
        if any(r["charging"] for r in iv):
            ax1.plot(x, [-r["charging"] / 1000 for r in iv], color="#1f5fbf", lw=1.5, ls="--",
                     label="EV charging")
    ax1.axhline(0, color="black", lw=0.6)
    ax1.set_ylabel("kWh per 15 min\n(+ out of the homes, − into)")
    ax1.legend(loc="upper left", fontsize=8, ncol=2)
    ax1.grid(alpha=0.3)

    trades = data["trades"]
    if trades:
        user = [t for t in trades if t["source"] != "session"]
        sess = [t for t in trades if t["source"] == "session"]
        for group, color, label in ((user, "#6a3d9a", "household trades"),
                                    (sess, "#1f5fbf", "EV session buys")):
            if group:
                ax2.scatter([dt(t["created_at"]) for t in group], [t["price"] / EEA for t in group],
                            s=[max(8, min(200, t["wh"] / 40)) for t in group], alpha=0.55,
                            color=color, label=label)
        hourly = [(hr, p) for hr, _, p in data["market"]["hourly"] if p is not None]
        if hourly:                   # one bar per hour with trades (no line across quiet hours)
            ax2.hlines([p / EEA for _, p in hourly], [dt(hr) for hr, _ in hourly],
                       [dt(hr + 3600) for hr, _ in hourly], color="black", lw=2,
                       label="hourly volume-weighted price")
        ax2.legend(loc="upper left", fontsize=8)
    else:
        ax2.text(0.5, 0.5, "no trades", transform=ax2.transAxes, ha="center")
    ax2.set_ylabel("market price\nEEA per kWh")
    ax2.grid(alpha=0.3)

    samples = data["samples"]
    if samples:
        ax3.plot([dt(s[0]) for s in samples], [s[1] / 1000 for s in samples], color="#2e9e44", lw=2,
                 label="WATT supply (balance book; = chain totalSupply at the end)")
        ax3.fill_between([dt(s[0]) for s in samples], [s[1] / 1000 for s in samples],
                         color="#2e9e44", alpha=0.15)
    if data["watt"]["chain_supply"] is not None and samples:
        ax3.scatter([dt(samples[-1][0])], [data["watt"]["chain_supply"] / 1000], color="black",
                    zorder=3, label="chain totalSupply after reconcile")
    ax3.set_ylabel("WATT supply\n(kWh)")
    ax3.legend(loc="upper left", fontsize=8)
    ax3.grid(alpha=0.3)
    ax3.xaxis.set_major_formatter(mdates.DateFormatter("%H:%M", tz=UTC))
    ax3.set_xlabel("simulated time (UTC)")
    d0, d1 = data["day"]
    right = max([d1 + 600] + [s[0] + 300 for s in samples])
    ax3.set_xlim(dt(d0 - 600), dt(right))
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def to_json(data, checks):
    out = dict(data)
    out["invariants"] = [{"name": n, "ok": ok, "detail": d} for n, ok, d in checks]
    return json.dumps(out, indent=1, default=str)
