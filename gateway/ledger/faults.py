"""Crash points for the crash tests: real code paths, killed at a chosen spot.

With EGS_LEDGER_FAULT=point[:n] set, the n-th pass (default the first) of
`hit(point)` SIGKILLs the process, exactly like a power cut at that line. Unset
(always, in production) it does nothing. Points: settle_batch (inside the
settlement transaction, after a batch), after_sign (signed tx committed, not yet
broadcast), after_broadcast (broadcast, state not yet updated), after_confirm.
"""
import os
import signal

_counts = {}


def hit(point):
    spec = os.environ.get("EGS_LEDGER_FAULT")
    if not spec:
        return
    name, _, n = spec.partition(":")
    if name != point:
        return
    _counts[point] = _counts.get(point, 0) + 1
    if _counts[point] >= int(n or 1):
        os.kill(os.getpid(), signal.SIGKILL)
