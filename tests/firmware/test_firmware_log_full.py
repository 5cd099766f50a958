"""The flash log when a write is cut short (flash full, I/O error), not by a power cut.

The filesystem refuses part of a record: RLIMIT_FSIZE makes the kernel stop a segment file
at a given size (write(2) writes what fits, then EFBIG), the way a full LittleFS ends an
append. The fragment must not become the place later records are written behind: a reader
stops at the first bad record, so they would be lost, and after a reboot their sequence
numbers (already published) would be used again for other readings.
"""
import json
import os
import resource
import signal
import subprocess
import sys
import textwrap

from sim.services import ROOT, micropython

MP_SCRIPT = textwrap.dedent("""
    import json, sys
    from firmware.flashlog import FlashLog

    path = sys.argv[1]
    body = b"OCMF|" + b"x" * 470                   # 504 bytes with the header
    log = FlashLog(path, 65536, 16)                # segments of 4096 bytes
    ok, failed, seq = [], 0, 1
    for _ in range(12):
        try:
            log.append(seq, 1000 + seq, seq, body)
        except OSError:
            failed += 1                            # the firmware retries with the same number
            continue
        ok.append(seq)
        seq += 1
    sent, s = [], 0
    while True:
        rec = log.next_after(s)
        if rec is None:
            break
        sent.append(rec[0])
        s = rec[0]
    again = FlashLog(path, 65536, 16)              # after a reboot
    print(json.dumps({"ok": ok, "failed": failed, "sent": sent,
                      "reopened": [r[0] for r in again.records()],
                      "last_seq": again.last_seq, "torn": again.torn}))
""")


def _limit_file_size(limit):
    def pre():
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)   # EFBIG instead of being killed
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
    return pre


def test_a_write_cut_short_under_micropython_seals_the_segment(tmp_path):
    script = tmp_path / "full.py"
    script.write_text(MP_SCRIPT)
    proc = subprocess.run(
        [micropython(), "-X", "heapsize=100K", str(script), str(tmp_path / "log")],
        cwd=ROOT, env=dict(os.environ, MICROPYPATH=f".frozen:{ROOT}"), capture_output=True,
        text=True, timeout=60, preexec_fn=_limit_file_size(1300), check=False)
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    # 1300 bytes per file: two records and a fragment of the third, then a new segment
    assert out["failed"] >= 1
    assert len(out["ok"]) > 2, f"the log got stuck behind the first fragment: {out}"
    assert out["ok"] == list(range(1, len(out["ok"]) + 1))
    assert out["sent"] == out["ok"], "every record written is replayed, in order"
    assert out["reopened"] == out["ok"] and out["last_seq"] == out["ok"][-1]
    assert out["torn"] == out["failed"]


CPY_SCRIPT = textwrap.dedent("""
    import json, os, resource, signal, sys
    sys.path.insert(0, sys.argv[2])
    from firmware.flashlog import FlashLog

    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    path = sys.argv[1]
    body = b"OCMF|" + b"x" * 470
    log = FlashLog(path, 65536, 16)
    log.append(1, 1001, 1, body)
    log.append(2, 1002, 2, body)
    seg = path + "/" + sorted(n for n in os.listdir(path) if n.endswith(".seg"))[-1]
    hard = resource.getrlimit(resource.RLIMIT_FSIZE)[1]
    resource.setrlimit(resource.RLIMIT_FSIZE, (os.stat(seg).st_size + 100, hard))
    try:
        log.append(3, 1003, 3, body)
        cut = False
    except OSError:
        cut = True
    resource.setrlimit(resource.RLIMIT_FSIZE, (hard, hard))    # space again (an ack freed it)
    log.append(3, 1003, 3, body)
    log.append(4, 1004, 4, body)
    sent, s = [], 0
    while True:
        rec = log.next_after(s)
        if rec is None:
            break
        sent.append(rec[0])
        s = rec[0]
    again = FlashLog(path, 65536, 16)
    print(json.dumps({"cut": cut, "sent": sent, "reopened": [r[0] for r in again.records()],
                      "last_seq": again.last_seq}))
""")


def test_records_after_a_cut_short_write_are_not_lost_once_space_returns(tmp_path):
    script = tmp_path / "full_cpython.py"
    script.write_text(CPY_SCRIPT)
    proc = subprocess.run([sys.executable, str(script), str(tmp_path / "log"), str(ROOT)],
                          capture_output=True, text=True, timeout=60, check=False)
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    assert out["cut"], "the file size limit did not cut the write"
    assert out["sent"] == [1, 2, 3, 4], out
    assert out["reopened"] == [1, 2, 3, 4] and out["last_seq"] == 4, out
