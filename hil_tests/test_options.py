"""The suite's own options: a bad one is a usage error before any part of the bench starts
(no bench fixture here: these run pytest on the suite in a subprocess)."""
import subprocess
import sys

import pytest

from sim.services import ROOT


@pytest.mark.parametrize("args, message", [
    (["--broker", "192.168.1.10"], "--broker must be HOST:PORT"),
    (["--broker", "host:80000"], "--broker must be HOST:PORT"),
    (["--ocpp", "host:port"], "--ocpp must be HOST:PORT"),
    (["--reading-interval", "nan"], "--reading-interval must be"),
])
def test_bad_suite_options_are_usage_errors(args, message):
    proc = subprocess.run([sys.executable, "-m", "pytest", "hil_tests", "--collect-only", "-q",
                           "-p", "no:cacheprovider", *args], cwd=ROOT, capture_output=True,
                          text=True, timeout=120, check=False)
    assert proc.returncode == pytest.ExitCode.USAGE_ERROR, proc.stdout + proc.stderr
    assert message in proc.stderr
    assert "Traceback" not in proc.stderr
