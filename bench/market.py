"""Orders per second through the market's order book, on one core.

One random order stream (limit buys and sells around a drifting mid price, market
buys, cancels of live orders; a share of sellers without energy whose asks rest
unexecutable, and buyers near B_max) is run through gateway.market.book.Book and
then through the plain reference book (sorted lists, linear scans) in the same
run. Both must produce the same trades; the figure printed is orders/s for each
(best of three runs for the book, one for the slow reference), by CPU time of
this process pinned to one core, so other work on a shared machine does not count;
the wall-clock rate is printed next to it.

    .venv/bin/python bench/market.py [--quick] [--orders N] [--seed S]
"""
import argparse
import os
import random
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from gateway.market.book import BUY, SELL, Book, MemoryBalances, OrderError
from gateway.market.reference import ReferenceBook

TARGET = 100_000


def make_stream(n, seed, owners=2000):
    rnd = random.Random(seed)
    mid = 550_000_000_000_000_000  # 0.55 EEA per kWh
    tick = 1_000_000_000_000_000  # 0.001 EEA
    stream = []
    placed = 0
    for _ in range(n):
        r = rnd.random()
        owner = rnd.randrange(owners)
        if r < 0.60:
            side = BUY if rnd.random() < 0.5 else SELL
            # Buys below mid, sells above, with some crossing the spread.
            offset = rnd.randint(-3, 25) * tick
            price = mid - offset if side == BUY else mid + offset
            stream.append(("limit", owner, side, price, rnd.randint(50, 2000)))
            placed += 1
        elif r < 0.75:
            stream.append(("market", owner, rnd.randint(50, 1500)))
            placed += 1
        else:
            stream.append(("cancel", rnd.random()))
        if rnd.random() < 0.001:
            mid += rnd.randint(-5, 5) * tick
    return stream


def balances(owners=2000):
    watt, eea = {}, {}
    for i in range(owners):
        # 1 in 10 sellers has no energy: their asks rest and quote but never execute.
        watt[i] = 0 if i % 10 == 0 else 10**9
        eea[i] = 10**30
    return MemoryBalances(watt, eea, bmax=10**12)


def run(book_cls, stream):
    book = book_cls(balances())
    live = []
    trades = 0
    limit, market_buy, cancel = book.limit, book.market_buy, book.cancel
    t0, c0 = time.perf_counter(), time.process_time()
    for op in stream:
        kind = op[0]
        if kind == "limit":
            o, tr = limit(op[1], op[2], op[3], op[4])
            trades += len(tr)
            if o.remaining:
                live.append(o)
        elif kind == "market":
            trades += len(market_buy(op[1], op[2])[1])
        else:
            while live:
                i = int(op[1] * len(live))
                o = live[i]
                live[i] = live[-1]
                live.pop()
                if o.status == "open":
                    try:
                        cancel(o.id)
                    except OrderError:
                        continue
                    break
    return (time.process_time() - c0, time.perf_counter() - t0), trades, book


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="a short run (20,000 orders; default 100,000)")
    ap.add_argument("--orders", type=int, default=None)
    ap.add_argument("--seed", type=int, default=7)
    args = ap.parse_args(argv)
    n = args.orders or (20_000 if args.quick else 100_000)
    try:
        os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})  # one core
    except (AttributeError, OSError):
        pass
    stream = make_stream(n, args.seed)
    # Best of three for the book (the machine is shared); the reference runs once.
    (fast_s, fast_wall), fast_trades, book = min((run(Book, stream) for _ in range(3)),
                                                 key=lambda r: r[0])
    (ref_s, ref_wall), ref_trades, ref = run(ReferenceBook, stream)
    same = book.snapshot() == ref.snapshot() and fast_trades == ref_trades
    kinds = {k: sum(1 for op in stream if op[0] == k) for k in ("limit", "market", "cancel")}
    print(f"order stream: {n} operations ({kinds['limit']} limit, {kinds['market']} market, "
          f"{kinds['cancel']} cancel), {fast_trades} trades, {len(book)} orders resting at the end")
    print(f"  book (price levels + FIFO deques): {n / fast_s:12,.0f} orders/s  "
          f"({fast_s:.2f} s CPU, {n / fast_wall:,.0f}/s by wall clock)")
    print(f"  reference (sorted list, scans):    {n / ref_s:12,.0f} orders/s  "
          f"({ref_s:.2f} s CPU, {n / ref_wall:,.0f}/s by wall clock)")
    print(f"  speed-up {ref_s / fast_s:.1f}x; same trades and final book: {same}; "
          f"target {TARGET:,} orders/s: {'met' if n / fast_s >= TARGET else 'NOT met'}")
    return 0 if same else 1


if __name__ == "__main__":
    sys.exit(main())
