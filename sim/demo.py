"""`make demo`: the protocol walk-through, then a whole community for a simulated day.

    python -m sim.demo [--households 20] [--chargers 4] [--hours 24] [--speed 720]
                       [--out demo-out/<time>] [--seed 1] [--start-hour 0] [--no-live]

First the smallest honest demonstration of the trust chain (sim/demo_protocol.py: a key
born on MicroPython signs a reading that CPython verifies), then the community
(sim/community.py) with a live view, the report (sim/report.py) with a PNG chart, and
the invariants (sim/invariants.py).
Exit status: 0 when every invariant of DESIGN.md held, 1 when one failed, 2 when the demo
could not run, 130 when interrupted. docs/demo.md explains the figures.
"""
import signal
import sys
import time
from pathlib import Path

import click

from sim import demo_protocol


def _live_table(c, snap):
    from rich.table import Table

    from sim.report import kwh, price_text

    d0, d1 = c.day
    done = min(1.0, max(0.0, (snap["sim"] - d0) / (d1 - d0)))
    t = Table(title=f"EGS community demo, {c.opts.households} households — simulated "
                    f"{time.strftime('%H:%M', time.gmtime(snap['sim']))} UTC "
                    f"({done:.0%} of the day, {c.opts.speed:g}x)", show_header=False,
              min_width=72)
    t.add_column("what", style="bold")
    t.add_column("now")
    bar = "█" * int(done * 40) + "░" * (40 - int(done * 40))
    t.add_row("day", bar)
    t.add_row("readings stored", f"{snap['readings']} from {snap['devices']} devices "
              f"(real firmware under MicroPython)")
    t.add_row("quarantined", f"{snap['quarantine']} ({snap['events']} security events)")
    t.add_row("intervals", f"{snap['intervals_settled']} settled, {snap['intervals_open']} open")
    ob = snap["outbox"]
    t.add_row("ledger outbox", f"depth {snap['outbox_depth']}; confirmed {ob.get('confirmed', 0)}")
    t.add_row("WATT supply", f"{kwh(snap['watt_supply'])} kWh")
    t.add_row("market", f"{snap['trades']} trades, {kwh(snap['traded_wh'])} kWh, last price "
              f"{price_text(snap['last_price'])} EEA/kWh, {snap['open_orders']} open orders")
    ss = snap["sessions"]
    t.add_row("charging", f"{snap['charging']} charging now; {ss.get('settled', 0)} settled, "
              f"{ss.get('review', 0)} review")
    if snap["ended"]:
        t.add_row("end of day", f"{snap['ended']}/{snap['devices']} meters switched off")
    return t


def run_community(opts, live=True, console=None):
    """Run the community and print the report. → (exit status, report data, chart path)."""
    from rich.console import Console
    from rich.live import Live

    from sim import invariants, report
    from sim.community import Community

    if console is None:
        console = Console()
        if not console.is_terminal:              # a log file or a pipe: room for the tables
            console = Console(width=150)
    community = Community(opts, say=console.print)
    started = time.monotonic()
    try:
        if live and console.is_terminal:
            with Live(console=console, refresh_per_second=4, transient=False) as view:
                community.run(progress=lambda c, snap: view.update(_live_table(c, snap)))
        else:
            last = [0.0]

            def line(c, snap):
                if snap["sim"] - last[0] >= 3 * 3600:
                    last[0] = snap["sim"]
                    console.print(f"  {time.strftime('%H:%M', time.gmtime(snap['sim']))} "
                                  f"readings {snap['readings']}, intervals settled "
                                  f"{snap['intervals_settled']}, trades {snap['trades']}, "
                                  f"sessions {snap['sessions']}, outbox {snap['outbox_depth']}")
            community.run(progress=line)
    except KeyboardInterrupt:
        console.print("[yellow]interrupted: everything the demo started has been stopped")
        return 130, None, None
    data = report.collect(community)
    checks = invariants.check(community, data)
    chart_path = community.out / "community.png"
    report.chart(data, chart_path)
    (community.out / "report.json").write_text(report.to_json(data, checks))
    report.render(data, checks, console, chart_path)
    wall = time.monotonic() - started
    t = data["timing"]
    console.print(f"wall time {wall:.0f} s (setup {t['setup_s']:.0f} s, day {t['day_s']:.0f} s, "
                  f"settling {t['finish_s']:.0f} s); report {community.out / 'report.json'}")
    ok = all(c[1] for c in checks)
    return (0 if ok else 1), data, chart_path


@click.command()
@click.option("--households", default=20, show_default=True, type=click.IntRange(1, 200))
@click.option("--chargers", default=4, show_default=True, type=click.IntRange(0, 50))
@click.option("--hours", default=24.0, show_default=True, type=click.FloatRange(0.25, 72),
              help="Simulated hours.")
@click.option("--speed", default=720.0, show_default=True, type=click.FloatRange(1, 5000),
              help="Simulated seconds per real second (720: a day in 2 minutes).")
@click.option("--start-hour", default=0.0, show_default=True, type=click.FloatRange(0, 23.75),
              help="Simulated time of day (UTC) the run starts at.")
@click.option("--reading-interval", default=300.0, show_default=True, type=float,
              help="Simulated seconds between a device's readings (divides 900, or 900 "
                   "and more: the firmware also reads at every quarter hour).")
@click.option("--out", default=None, type=click.Path(file_okay=False),
              help="Output directory (default demo-out/<date-time>).")
@click.option("--charger-kw", default=22.0, show_default=True, type=click.FloatRange(1, 350),
              help="Power of each charge point (EVs charge at the lower of it and their own).")
@click.option("--seed", default=1, show_default=True, type=int)
@click.option("--no-tamper", is_flag=True, help="Do not inject the forged record.")
@click.option("--no-live", is_flag=True, help="Progress lines instead of the live view.")
@click.option("--skip-protocol", is_flag=True, help="Skip the protocol walk-through.")
def main(households, chargers, hours, speed, start_hour, reading_interval, out, charger_kw, seed,
         no_tamper, no_live, skip_protocol):
    """The EGS demo: protocol walk-through, then a community's simulated day and its report."""
    from sim.community import Options

    install_sigterm()
    out = Path(out) if out else Path("demo-out") / time.strftime("%Y%m%d-%H%M%S")
    # every argument is checked before anything runs: a bad one is one line and exit 2
    try:
        opts = Options(households=households, chargers=chargers, hours=hours, speed=speed, out=out,
                       seed=seed, start_hour=start_hour, reading_interval=reading_interval,
                       tamper=not no_tamper, charger_kw=charger_kw)
        if out.is_dir() and any(out.iterdir()):
            raise ValueError(f"--out {out} is not empty: give a new directory")
    except ValueError as e:
        _fail(e)
    try:
        if not skip_protocol:
            print("EGS demo, step 1: protocol walk-through (device-side code under the "
                  "MicroPython binary)")
            try:
                demo_protocol.run()
            except Exception as e:  # noqa: BLE001 - the demo's one-line failure
                _fail(e)
            print("key generation, OCMF signing on MicroPython, verification on CPython: done\n")
            print("EGS demo, step 2: a community's day")
        try:
            status, _, _ = run_community(opts, live=not no_live)
        except (RuntimeError, ValueError, OSError) as e:
            _fail(e)
    except KeyboardInterrupt:          # Ctrl-C before or after the community ran
        print("interrupted: everything the demo started has been stopped", file=sys.stderr)
        sys.exit(130)
    sys.exit(status)


def install_sigterm():
    """SIGTERM ends the demo like Ctrl-C (everything it started is stopped)."""
    def handler(signum, frame):
        raise KeyboardInterrupt
    signal.signal(signal.SIGTERM, handler)


def _fail(error):
    print(f"demo failed: {error}", file=sys.stderr)
    sys.exit(2)


if __name__ == "__main__":
    main()
