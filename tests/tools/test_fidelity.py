"""The ESP32 fidelity gate (tools/fidelity.py): types against the ESP32 stubs, mpy-cross for
xtensawin within the size budget, and no float on the energy path.

Each check also runs once against a small module with known faults, so a gate that silently
stopped checking (a config that no longer includes anything, a stub path gone wrong) fails.
"""
import json
import struct
import subprocess
import textwrap
from fractions import Fraction
from pathlib import Path

import pytest

from sim.services import micropython
from tools import fidelity

ROOT = fidelity.ROOT


def _report(capsys, text):
    with capsys.disabled():
        print("\n" + text)


# -------------------------------------------------------------- the device file list

def test_every_device_side_module_is_listed_once():
    """firmware/manifest.py is the one list of what goes on the device: every .py file under
    firmware/ and protocol/ is either in it (common or one port) or named as not shipped."""
    from firmware import manifest

    on_disk = {p.relative_to(ROOT).as_posix() for d in ("firmware", "protocol")
               for p in (ROOT / d).rglob("*.py") if "__pycache__" not in p.parts}
    listed = list(manifest.COMMON) + [f for fs in manifest.PORT_FILES.values() for f in fs] \
        + list(manifest.NOT_ON_DEVICE)
    assert len(listed) == len(set(listed)), "a file is listed twice"
    assert set(listed) == on_disk, (sorted(on_disk - set(listed)), sorted(set(listed) - on_disk))
    for port in ("esp32", "unix"):
        assert fidelity.device_modules(port) == manifest.files(port)
    assert "protocol/bundle.py" in manifest.COMMON and "firmware/version.py" in manifest.COMMON


def test_release_and_emulator_ship_the_same_list():
    from firmware import manifest
    from sim.device import device_sources

    assert device_sources() == manifest.files("unix")


# ------------------------------------------------------------------------ pyright

def test_pyright_esp32_zero_errors(capsys):
    errors, warnings, analysed = fidelity.run_pyright(fidelity.ESP32_CONFIG)
    expected = fidelity.device_modules("esp32")
    _report(capsys, f"pyright esp32: {analysed} files, {len(errors)} errors, "
                    f"{len(warnings)} warnings")
    assert not errors, "device code fails the ESP32 type check:\n" + "\n".join(errors)
    assert analysed == len(expected), (analysed, expected)


def test_pyright_unix_hal_zero_errors(capsys):
    errors, warnings, analysed = fidelity.run_pyright(fidelity.UNIX_CONFIG)
    _report(capsys, f"pyright unix HAL: {analysed} files, {len(errors)} errors, "
                    f"{len(warnings)} warnings")
    assert not errors, "the unix HAL fails the unix-port type check:\n" + "\n".join(errors)
    hal = fidelity.unix_hal_modules()
    config = json.loads(fidelity.UNIX_CONFIG.read_text())
    listed = {Path(p).name for p in config["include"]}
    assert {Path(m).name for m in hal} <= listed, "a unix HAL module is missing from unix.json"
    assert analysed == len([p for p in config["include"]
                            if (fidelity.UNIX_CONFIG.parent / p).exists()])


def _canary_config(tmp_path, base, source, name="canary.py"):
    (tmp_path / name).write_text(textwrap.dedent(source))
    conf = tmp_path / "pyrightconfig.json"
    conf.write_text(json.dumps({"extends": str(base), "include": [name], "exclude": []}))
    return conf


def test_esp32_check_rejects_unix_and_cpython_only_code(tmp_path):
    conf = _canary_config(tmp_path, fidelity.ESP32_CONFIG, """\
        import time
        import machine
        import dataclasses                 # line 3: CPython only
        import termios                     # line 4: unix port only
        time.monotonic()                   # line 5: CPython's time, not MicroPython's
        machine.UART(1, 9600).no_such()    # line 6: not in the ESP32 port's UART
        time.sleep_ms(10)                  # fine on MicroPython
        import esp32
        esp32.Partition.mark_app_valid_cancel_rollback()             # fine on ESP32
        """)
    errors, _, analysed = fidelity.run_pyright(conf)
    assert analysed == 1
    lines = sorted({int(e.split(":")[1]) for e in errors})
    assert lines == [3, 4, 5, 6], errors


def test_unix_check_rejects_esp32_only_code(tmp_path):
    conf = _canary_config(tmp_path, fidelity.UNIX_CONFIG, """\
        import termios
        import esp32                       # line 2: ESP32 only
        import network                     # line 3: not on the unix port
        termios.tcgetattr(0)
        """)
    errors, _, _ = fidelity.run_pyright(conf)
    assert sorted({int(e.split(":")[1]) for e in errors}) == [2, 3], errors


def test_suppressions_name_rule_and_reason():
    _good, bad = fidelity.suppressions(fidelity.all_device_modules())
    assert not bad, "suppressions without a rule or a reason:\n" + "\n".join(bad)


def test_suppression_rules_are_enforced(tmp_path, monkeypatch):
    src = tmp_path / "firmware_x.py"
    src.write_text(textwrap.dedent("""\
        a = 1  # pyright: ignore[reportGeneralTypeIssues] -- the stub lacks this overload
        b = 2  # pyright: ignore
        c = 3  # pyright: ignore[reportFoo]
        d = 4  # type: ignore
        # pyright: basic
        """))
    monkeypatch.setattr(fidelity, "ROOT", tmp_path)
    good, bad = fidelity.suppressions(["firmware_x.py"])
    assert [g.split(":")[1] for g in good] == ["1"]
    assert [b.split(":")[1] for b in bad] == ["2", "3", "4", "5"]


# ------------------------------------------------------------------------ mpy-cross

def test_cross_compile_xtensawin_within_budget(tmp_path, capsys):
    modules = fidelity.device_modules("esp32")
    sizes = fidelity.cross_compile(modules, tmp_path)
    total = sum(sizes.values())
    budget = fidelity.APP_BUDGET
    lines = [(f"mpy-cross -march={fidelity.MARCH}: {len(sizes)} modules, total .mpy {total} "
             f"bytes (budget {budget}, {100 * total / budget:.0f} %)")]
    lines += [f"  {s:6d}  {m}" for m, s in sorted(sizes.items(), key=lambda kv: -kv[1])]
    _report(capsys, "\n".join(lines))
    assert set(sizes) == set(modules)
    for rel in modules:
        data = (tmp_path / (rel[:-3] + ".mpy")).read_bytes()
        assert data[:2] == b"M\x06", rel          # .mpy version 6, what MicroPython 1.29 loads
    assert total <= fidelity.APP_BUDGET


def test_cross_compile_reports_every_failure(tmp_path, monkeypatch):
    (tmp_path / "good.py").write_text("x = 1\n")
    (tmp_path / "bad.py").write_text("def f(:\n    pass\n")
    (tmp_path / "worse.py").write_text("nonlocal x\n")
    monkeypatch.setattr(fidelity, "ROOT", tmp_path)
    out = tmp_path / "out"
    with pytest.raises(fidelity.GateError) as e:
        fidelity.cross_compile(["good.py", "bad.py", "worse.py"], out)
    assert "bad.py" in str(e.value) and "worse.py" in str(e.value)
    assert "good.py" not in str(e.value)


def test_cross_compile_is_deterministic(tmp_path):
    rel = "protocol/ocmf.py"
    fidelity.compile_mpy(rel, tmp_path / "a.mpy")
    fidelity.compile_mpy(rel, tmp_path / "b.mpy")
    assert (tmp_path / "a.mpy").read_bytes() == (tmp_path / "b.mpy").read_bytes()


# ------------------------------------------------------------------ float on energy path

def test_no_float_on_energy_path():
    findings = fidelity.float_findings()
    assert not findings, "float arithmetic on the energy path:\n" + "\n".join(findings)


def test_float_check_finds_each_kind_of_float(tmp_path):
    (tmp_path / "energy.py").write_text(textwrap.dedent("""\
        import struct
        FMT = ">If"

        def ok(wh):
            whole, frac = divmod(wh, 1000)
            return "%d.%03d" % (whole, frac) + f"{wh:08d}" + str(2 ** 63 - 1)

        def bad(wh, raw):
            a = wh * 0.001                      # 9 literal
            b = wh / 1000                       # 10 true division
            wh /= 2                             # 11 augmented true division
            c = float(wh)                       # 12 float()
            import math                         # 13 math
            d = math.floor(wh)                  # 14 math
            e = 10 ** -3                        # 15 negative power
            f = struct.unpack(">f", raw)        # 16 struct float
            g = struct.unpack(FMT, raw)         # 17 struct float via constant
            h = "%.3f" % wh                     # 18 float formatting
            i = f"{wh:.3f}"                     # 19 float format spec
            j = wh ** wh                        # 20 power with unknown exponent

        def not_energy(x):
            return x / 2
        """))
    findings = fidelity.float_findings({"energy.py": ("ok", "bad", "gone")}, root=tmp_path)
    lines = sorted({int(f.split(":")[1]) for f in findings if "missing" not in f})
    assert lines == list(range(9, 21)), findings
    assert any("gone() missing" in f for f in findings)
    whole = fidelity.float_findings({"energy.py": None}, root=tmp_path)
    assert any(":23:" in f for f in whole)      # not_energy() is checked with the whole module
    assert fidelity.float_findings({"energy.py": ("ok",)}, root=tmp_path) == []
    assert "missing" in fidelity.float_findings({"nope.py": None}, root=tmp_path)[0]


# Energy values where even a double has lost whole Wh (> 2**53): a float anywhere on the path,
# including in a helper the static check cannot see, changes a digit.
MP_EXACT = r"""
import json, os, sys
from firmware import meters, flashlog
from protocol import ocmf
cases = json.loads(open(sys.argv[1]).read())
out = {"f32": [], "u64": [], "kwh": []}
for bits, mul, div in cases["f32"]:
    out["f32"].append(str(meters.decode(bits.to_bytes(4, "big"), 0, "f32", mul, div)))
for raw in cases["u64"]:
    out["u64"].append(str(meters.decode(raw.to_bytes(8, "big"), 0, "u64", 10, 1)))
for wh in cases["kwh"]:
    out["kwh"].append(ocmf.wh_to_kwh_str(wh))
imp, exp = cases["payload"]
out["payload"] = ocmf.build_payload(4294967295, imp, exp, 1795000000, gi="EGS", gs="dev-1",
    gv="0.1.0", mv="Eastron", mm="SDM630", ms="123").decode()
log = flashlog.FlashLog(cases["dir"], max_bytes=64 * 1024, segments=4)
for i, (a, b) in enumerate(cases["log"]):
    log.append(i + 1, a, b, "r%d" % i)
log = flashlog.FlashLog(cases["dir"], max_bytes=64 * 1024, segments=4)
out["log"] = [[str(r[1]), str(r[2])] for r in log.records()]
print(json.dumps(out))
"""


def _f32_exact(bits, mul, div):
    value = Fraction(struct.unpack(">f", bits.to_bytes(4, "big"))[0]) * mul / div
    return round(value)                    # Fraction rounds half to even, exactly


def test_energy_exact_beyond_double_precision_under_micropython(tmp_path):
    f32 = [(0x7F7FFFFF, 1000, 1),           # largest float32 kWh: 39 digits of Wh
           (0x5F000000, 1000, 1),           # 2**63 kWh
           (0x4B800001, 1000, 1),           # 2**24 + 2 kWh, float32's integer limit
           (0x47C0E6B7, 1000, 1),           # 98,765.43 kWh as the meter stores it
           (0x3D800000, 1000, 1),           # 0.0625 kWh: a tie, half to even
           (0x00000001, 1000, 1),           # smallest subnormal
           (0x5A000001, 1, 100)]
    u64 = [2 ** 64 - 2, 2 ** 53 + 1, 9876543210123456789]
    kwh = [2 ** 63 - 1, 2 ** 53 + 1, 98765432, 0, 7]
    payload = [2 ** 63 - 1, 2 ** 53 + 1]
    log = [(2 ** 64 - 1, 2 ** 53 + 1), (2 ** 63 + 12345, 0)]
    cases = {"f32": f32, "u64": u64, "kwh": kwh, "payload": payload, "log": log,
             "dir": str(tmp_path / "log")}
    (tmp_path / "cases.json").write_text(json.dumps(cases))
    proc = subprocess.run([micropython(), "-X", "heapsize=200K", "-c",
                           MP_EXACT.replace("sys.argv[1]", repr(str(tmp_path / "cases.json")))],
                          cwd=ROOT, env={"MICROPYPATH": str(ROOT), "PATH": "/usr/bin:/bin"},
                          capture_output=True, text=True, timeout=120, check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["f32"] == [str(_f32_exact(*c)) for c in f32]
    assert out["u64"] == [str(v * 10) for v in u64]
    assert out["kwh"] == [f"{v // 1000}.{v % 1000:03d}" for v in kwh]
    assert '"RV":9223372036854775.807' in out["payload"]
    assert '"RV":9007199254740.993' in out["payload"]
    assert '"PG":"F4294967295"' in out["payload"]
    assert out["log"] == [[str(a), str(b)] for a, b in log]
