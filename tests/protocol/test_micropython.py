"""Run every tests/mp/mp_test_*.py under the real MicroPython unix port.

One pytest case per module: `micropython -X heapsize=100K tests/mp/runner.py <module>`
from the repository root, with MICROPYPATH = ".frozen:<root>" so that `import protocol.x`
and `import firmware.x` resolve.  A module that needs another heap says so in a comment
line `# mp-heapsize: 200K` near its top.  See tests/mp/README.md.
"""
import os
import re
import subprocess
import textwrap
from pathlib import Path

import pytest

from sim.services import micropython

ROOT = Path(__file__).resolve().parents[2]
MP_DIR = ROOT / "tests" / "mp"
MODULES = sorted(MP_DIR.glob("mp_test_*.py"))
DEFAULT_HEAP = "100K"


def heapsize(module: Path) -> str:
    head = module.read_text()[:2000]
    m = re.search(r"^#\s*mp-heapsize:\s*(\d+[KM]?)\s*$", head, re.MULTILINE)
    return m.group(1) if m else DEFAULT_HEAP


def run_module(module: Path, timeout=300):
    env = dict(os.environ, MICROPYPATH=f".frozen:{ROOT}")
    return subprocess.run(
        [micropython(), "-X", f"heapsize={heapsize(module)}", str(MP_DIR / "runner.py"),
         str(module.relative_to(ROOT) if module.is_relative_to(ROOT) else module)],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout, check=False)


@pytest.mark.parametrize("module", MODULES, ids=[m.stem for m in MODULES])
def test_module_under_micropython(module):
    proc = run_module(module)
    output = proc.stdout + proc.stderr
    assert proc.returncode == 0, f"{module.name} failed under micropython:\n{output}"
    assert re.search(r"== .*: \d+ passed, 0 failed", output), output


def test_runner_reports_failures_and_exit_status(tmp_path):
    """The runner itself: a failing test, a passing one, a skip, an empty module."""
    mod = tmp_path / "mp_test_selfcheck.py"
    mod.write_text(textwrap.dedent("""
        class SkipTest(Exception):
            pass

        def test_ok():
            assert 1 + 1 == 2

        def test_broken():
            assert [1, 2] == [2, 1], "lists differ"

        def test_skipped():
            raise SkipTest("needs hardware")

        def helper_not_a_test():
            raise RuntimeError("must not run")
    """))
    proc = run_module(mod, timeout=60)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "PASS test_ok" in proc.stdout
    assert "FAIL test_broken" in proc.stdout and "lists differ" in proc.stdout
    assert "SKIP test_skipped needs hardware" in proc.stdout
    assert "must not run" not in proc.stdout
    assert "1 passed, 1 failed, 1 skipped" in proc.stdout

    empty = tmp_path / "mp_test_empty.py"
    empty.write_text("X = 1\n")
    proc = run_module(empty, timeout=60)
    assert proc.returncode == 1 and "no test_* functions found" in proc.stdout

    good = tmp_path / "mp_test_good.py"
    good.write_text("def test_a():\n    pass\n")
    proc = run_module(good, timeout=60)
    assert proc.returncode == 0, proc.stdout + proc.stderr
