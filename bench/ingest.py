"""Gateway ingest throughput: signed readings through mosquitto into the store.

A separate process publishes pre-signed OCMF records (QoS 1, many devices) to a real
mosquitto as fast as it can; `python -m gateway.service` (= `egs-gw run`) verifies,
commits and acknowledges them. Printed: verified+committed readings per second for
each verification setting (inline, one worker process, all cores), next to the raw
`cryptography` ECDSA P-256 verify rate on one core measured in the same run (just before
and after each setting, so that a machine shared with other work compares like with like).
Target: inline/one worker >= 0.6 x raw, more with all cores.

    .venv/bin/python bench/ingest.py [--quick] [--records N] [--devices D] [--workers 0,1,-1]
"""
import argparse
import json
import multiprocessing
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

COMMUNITY = "bench"


def make_records(devices, total):
    """[(device id, secret-free public key, [records])], signed with cryptography."""
    from protocol import ocmf
    per = max(1, total // devices)
    now = int(time.time())
    out = []
    for d in range(devices):
        key = ec.generate_private_key(ec.SECP256R1())
        pub = key.public_key().public_bytes(serialization.Encoding.X962,
                                            serialization.PublicFormat.UncompressedPoint)
        dev = f"meter{d:04d}"
        recs = []
        for i in range(1, per + 1):
            payload = ocmf.build_payload(i, 1_000_000 + 7 * i, 3 * i, now - 2 * per + i, gi="EGS-BENCH",
                                         gs=dev, gv="0.1.0", mv="Eastron", mm="SDM630", ms=f"SN{d}")
            der = key.sign(payload, ec.ECDSA(hashes.SHA256()))
            recs.append("OCMF|" + payload.decode() + '|{"SA":"ECDSA-secp256r1-SHA256","SD":"'
                        + der.hex().upper() + '"}')
        out.append((dev, pub, recs))
    return out


def _cpu_s(pid):
    """User+system CPU seconds of a process."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _descendants(pid):
    children = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            ppid = int(stat.read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            continue
        children.setdefault(ppid, []).append(int(stat.parent.name))
    out, todo = [], list(children.get(pid, []))
    while todo:
        p = todo.pop()
        out.append(p)
        todo.extend(children.get(p, []))
    return out


def cpu_snapshot(pid):
    """(gateway process CPU s, {worker pid: CPU s}) - load on the machine does not change these."""
    return _cpu_s(pid), {p: _cpu_s(p) for p in _descendants(pid)}


def raw_verify_rate(devices, seconds=1.5, cpu=False):
    """cryptography verify calls per second on one core over the same records
    (per second of wall time, or with cpu=True per second of this process's CPU time)."""
    from gateway.ingest.verify import fast_parse
    items = []
    for _, pub, recs in devices:
        key = ec.EllipticCurvePublicKey.from_encoded_point(ec.SECP256R1(), pub)
        for r in recs[:2000]:
            f = fast_parse(r)
            items.append((key, f[1], f[0]))
    algo = ec.ECDSA(hashes.SHA256())
    clock = time.process_time if cpu else time.perf_counter
    best = 0.0
    for _ in range(3):
        n, t0, w0 = 0, clock(), time.perf_counter()
        while time.perf_counter() - w0 < seconds / 3:
            for key, der, payload in items[:500]:
                key.verify(der, payload, algo)
            n += min(500, len(items))
        best = max(best, n / max(clock() - t0, 1e-9))
    return best


def publisher(port, devices, out_q, go):
    """Separate process: publish every record QoS 1 as fast as the broker takes them."""
    import paho.mqtt.client as mqtt

    from protocol import topics
    c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="bench-publisher")
    c.max_inflight_messages_set(1000)
    c.max_queued_messages_set(0)
    c.connect("127.0.0.1", port)
    c.loop_start()
    msgs = []
    per = max(len(recs) for _, _, recs in devices)
    for i in range(per):                     # interleave devices, each in sequence order
        for dev, _, recs in devices:
            if i < len(recs):
                msgs.append((topics.topic(COMMUNITY, dev, "ocmf"), recs[i]))
    go.wait()
    t0 = time.perf_counter()
    infos = [c.publish(t, p, qos=1) for t, p in msgs]
    for info in infos:
        info.wait_for_publish(120)
    dt = time.perf_counter() - t0
    c.loop_stop()
    c.disconnect()
    out_q.put(len(msgs) / dt)


def _start_gateway(tmp, cfg, db_path, conn, tag):
    from gateway.ingest import store
    from sim.services import Service
    gw = Service([sys.executable, "-m", "gateway.service", "--config", cfg, "--db", db_path],
                 log_path=tmp / f"gw-{tag}.log").start()
    deadline = time.time() + 60
    while True:
        v, _ = store.get_state(conn, "service")
        if v and v.get("connected") and v.get("pid") == gw.proc.pid:
            return gw
        if time.time() > deadline or not gw.alive:
            raise RuntimeError("gateway did not start: " + (tmp / f"gw-{tag}.log").read_text()[-2000:])
        time.sleep(0.05)


def _publish(port, devices):
    q, go = multiprocessing.Queue(), multiprocessing.Event()
    pub = multiprocessing.Process(target=publisher, args=(port, devices, q, go))
    pub.start()
    time.sleep(1.0)                      # the publisher has built its messages
    go.set()
    return pub, q


def run_gateway(tmp, port, devices, workers, total, mode):
    """mode "live": the gateway runs while the publisher publishes (the rate is capped by
    the publisher); "drain": the broker queues everything for the stopped gateway's
    session first, then the gateway starts and works through it (its own capacity)."""
    from gateway import db
    from gateway.ingest import store

    tag = f"{mode}-{workers}"
    db_path = tmp / f"gw-{tag}.sqlite"
    conn = db.connect(db_path)
    store.init(conn)
    for d, (dev, pub, _) in enumerate(devices):
        store.add_device(conn, dev, pub, f"SN{d}")
    cfg = tmp / f"gw-{tag}.toml"
    cfg.write_text(f'[gateway]\ncommunity = "{COMMUNITY}"\ncomponents = []\nlog_level = "WARNING"\n'
                   f'[mqtt]\nbroker = "127.0.0.1:{port}"\nclient_id = "bench-gw-{tag}"\n'
                   f'[ingest]\nbatch_size = 1000\nworkers = {workers}\n')
    gw = _start_gateway(tmp, cfg, db_path, conn, tag)
    try:
        if mode == "drain":
            gw.stop()                                       # its session stays on the broker
            pub, q = _publish(port, devices)
            pub_rate = q.get(timeout=300)
            pub.join()
            gw = _start_gateway(tmp, cfg, db_path, conn, tag + "b")
            cpu0 = cpu_snapshot(gw.proc.pid)
        else:
            cpu0 = cpu_snapshot(gw.proc.pid)
            pub, q = _publish(port, devices)
        deadline = time.time() + 600
        while True:
            n = conn.execute("SELECT COUNT(*) FROM readings").fetchone()[0]
            if n >= total:
                t_done = time.time()
                cpu1 = cpu_snapshot(gw.proc.pid)
                break
            if time.time() > deadline or not gw.alive:
                raise RuntimeError(f"only {n} of {total} readings stored")
            time.sleep(0.02)
        first = conn.execute("SELECT MIN(received_at) FROM readings").fetchone()[0]
        if mode == "live":
            pub_rate = q.get(timeout=120)
            pub.join()
        rejected = conn.execute("SELECT COUNT(*) FROM quarantine").fetchone()[0]
        main_us = (cpu1[0] - cpu0[0]) / total * 1e6
        worker_us = sum(v - cpu0[1].get(p, 0.0) for p, v in cpu1[1].items()) / total * 1e6
        return total / (t_done - first), pub_rate, rejected, main_us, worker_us
    finally:
        gw.stop()
        conn.close()


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="small run (a few seconds)")
    ap.add_argument("--records", type=int, help="readings in total (default 20000, quick 3000)")
    ap.add_argument("--devices", type=int, default=20)
    ap.add_argument("--workers", default="0,1,-1", help="settings to measure: 0 inline, N, -1 all cores")
    ap.add_argument("--mode", default="drain,live", help="drain, live or both (comma-separated)")
    args = ap.parse_args()
    total = args.records or (3000 if args.quick else 20000)
    settings = [int(w) for w in args.workers.split(",")]
    modes = [m for m in args.mode.split(",") if m]
    if any(m not in ("drain", "live") for m in modes):
        ap.error("--mode: drain and/or live")
    from sim.services import Mosquitto

    print(f"gateway ingest benchmark: {total} readings from {args.devices} devices, "
          f"{os.cpu_count()} cores, load average {os.getloadavg()[0]:.2f}")
    t0 = time.perf_counter()
    devices = make_records(args.devices, total)
    total = sum(len(r) for _, _, r in devices)
    print(f"  signed {total} records in {time.perf_counter() - t0:.1f} s (not measured)")
    raw = raw_verify_rate(devices)
    raw_cpu = raw_verify_rate(devices, cpu=True)
    print(f"  baseline: raw cryptography verify on one core        {raw:8.0f} /s"
          f"  ({raw_cpu:.0f} per CPU second = {1e6 / raw_cpu:.0f} us each)")
    results = {"raw_verify_per_s": raw, "raw_verify_per_cpu_s": raw_cpu, "records": total, "runs": []}
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        with Mosquitto(tmp / "mosquitto") as mosq:
            for mode in modes:
                print(f"  {mode}: " + ("gateway running while the publisher publishes" if mode == "live" else
                                       "the broker holds everything, then the gateway drains it"))
                for w in settings:
                    label = {0: "inline (gateway process)", -1: f"all cores ({os.cpu_count()} workers)"}.get(
                        w, f"{w} worker process(es)")
                    before = raw_verify_rate(devices, 0.9)
                    rate, pub_rate, rejected, main_us, worker_us = run_gateway(
                        tmp, mosq.port, devices, w, total, mode)
                    local = (before + raw_verify_rate(devices, 0.9)) / 2
                    # with a core each, the busier of gateway process and workers sets the pace
                    n = w if w > 0 else (os.cpu_count() or 1) if w < 0 else 0
                    per_core = 1e6 / max(main_us, worker_us / n) if n else 1e6 / main_us
                    print(f"    verified+committed, {label:27s} {rate:8.0f} /s = {rate / local:4.2f} x raw"
                          f" ({local:.0f} /s around this run; publisher {pub_rate:.0f} /s, rejected {rejected})")
                    print(f"      CPU per reading: gateway process {main_us:5.0f} us, workers {worker_us:5.0f} us"
                          f" -> {per_core:6.0f} /s with a core each = {per_core / raw_cpu:4.2f} x raw CPU rate")
                    results["runs"].append({"mode": mode, "workers": w, "per_s": rate, "ratio": rate / local,
                                            "raw_around_per_s": local, "publisher_per_s": pub_rate,
                                            "rejected": rejected, "gateway_cpu_us": main_us,
                                            "worker_cpu_us": worker_us, "per_core_per_s": per_core,
                                            "per_core_ratio": per_core / raw_cpu})
    again = raw_verify_rate(devices)
    results["raw_verify_after_per_s"] = again
    print(f"  baseline again, after the runs                       {again:8.0f} /s")
    print("  target: >= 0.6 x raw with one worker, more with all cores. On a machine shared with other")
    print("  work the wall-clock rates move with its load; the CPU figures do not.")
    print(json.dumps(results))


if __name__ == "__main__":
    main()
