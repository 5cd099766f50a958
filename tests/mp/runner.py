"""Run one MicroPython test module under the real `micropython` binary.

    micropython -X heapsize=100K tests/mp/runner.py tests/mp/mp_test_x.py [name_filter]

Why our own runner: pytest does not run on MicroPython.  This is the smallest
thing that works: import the module, call every function whose name starts
with `test_` (sorted by name, since MicroPython dicts do not keep definition
order), print one line per test and a summary, exit 1 when any test failed or
none was found.  Run it from the repository root (tests open files such as
tests/vectors/*.json relative to it); MICROPYPATH must contain the root so
that `import protocol.x` works.

A module may define setup_module() / teardown_module(), and a test may raise
an exception class named SkipTest (define it in the module) to be skipped.
"""
import gc
import sys
import time


def _ticks_ms():
    try:
        return time.ticks_ms()
    except AttributeError:  # CPython, for running the runner by hand
        return int(time.time() * 1000)


def _print_exc(exc):
    try:
        sys.print_exception(exc)
    except AttributeError:
        import traceback
        traceback.print_exception(exc)


def _load(arg):
    path = arg
    if path.endswith(".py"):
        slash = path.rfind("/")
        folder = path[:slash] if slash >= 0 else "."
        name = path[slash + 1:-3]
        if folder not in sys.path:
            sys.path.insert(0, folder)
    else:
        name = path
    module = __import__(name)
    for part in name.split(".")[1:]:
        module = getattr(module, part)
    return module


def run(arg, name_filter=None):
    module = _load(arg)
    names = sorted(n for n in dir(module) if n.startswith("test_")
                   and callable(getattr(module, n)))
    if name_filter:
        names = [n for n in names if name_filter in n]
    passed = failed = skipped = 0
    if hasattr(module, "setup_module"):
        module.setup_module()
    try:
        for name in names:
            gc.collect()
            start = _ticks_ms()
            try:
                getattr(module, name)()
            except Exception as exc:  # noqa: BLE001 - report every failure
                if type(exc).__name__ == "SkipTest":
                    skipped += 1
                    print("SKIP", name, exc)
                    continue
                failed += 1
                print("FAIL", name, repr(exc))
                _print_exc(exc)
                continue
            passed += 1
            print("PASS", name, f"({_ticks_ms() - start} ms)")
    finally:
        if hasattr(module, "teardown_module"):
            module.teardown_module()
    print(f"== {arg}: {passed} passed, {failed} failed, {skipped} skipped")
    if not names:
        print("== no test_* functions found")
        return 1
    return 1 if failed else 0


if __name__ == "__main__":
    if len(sys.argv) < 2:
        print("usage: micropython tests/mp/runner.py tests/mp/mp_test_x.py [name_filter]")
        sys.exit(2)
    sys.exit(run(sys.argv[1], sys.argv[2] if len(sys.argv) > 2 else None))
