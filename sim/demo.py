"""`make demo`: what the project can show end to end today.

Runs the protocol walk-through (a key born on MicroPython signs a reading that
CPython verifies). The community run of issue 8 is added here when it lands.
"""
import sys

from sim import demo_protocol


def main():
    print("EGS demo: protocol walk-through (device-side code under the MicroPython binary)")
    try:
        demo_protocol.run()
    except Exception as e:
        print(f"demo failed: {e}", file=sys.stderr)
        return 1
    print("demo finished: key generation, OCMF signing on MicroPython, verification on CPython")
    return 0


if __name__ == "__main__":
    sys.exit(main())
