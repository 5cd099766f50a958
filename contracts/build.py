"""Compile the Vyper contracts into ABI + bytecode JSON under contracts/build/.

    .venv/bin/python contracts/build.py           # (re)write contracts/build/*.json
    .venv/bin/python contracts/build.py --check   # exit 1 if the committed build is stale

The build output is committed: the gateway on a Raspberry Pi deploys and talks to
the contracts from these JSON files and never needs the compiler. `--check` lets
CI prove that the committed bytecode is what these sources compile to.
The EVM version is pinned (shanghai: PUSH0, no transient storage) so the same
bytecode runs on Anvil and on consortium chains that lag behind mainnet forks.
"""
import argparse
import hashlib
import json
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
OUT = HERE / "build"
CONTRACTS = ("WATT", "EEA")
EVM_VERSION = "shanghai"


def compile_one(name):
    import vyper
    from vyper.compiler.settings import Settings

    path = HERE / f"{name}.vy"
    source = path.read_text()
    out = vyper.compile_code(
        source, contract_path=path.name,
        output_formats=["abi", "bytecode", "bytecode_runtime"],
        settings=Settings(evm_version=EVM_VERSION),
    )
    return {
        "contractName": name,
        "compiler": f"vyper {vyper.__version__}",
        "evmVersion": EVM_VERSION,
        "sourceSha256": hashlib.sha256(source.encode()).hexdigest(),
        "abi": out["abi"],
        "bytecode": out["bytecode"],
        "deployedBytecode": out["bytecode_runtime"],
    }


def render(artifact):
    return json.dumps(artifact, indent=1, sort_keys=True) + "\n"


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="compare with the committed build")
    args = parser.parse_args(argv)
    stale = []
    OUT.mkdir(exist_ok=True)
    for name in CONTRACTS:
        text = render(compile_one(name))
        target = OUT / f"{name}.json"
        if args.check:
            if not target.exists() or target.read_text() != text:
                stale.append(name)
        else:
            target.write_text(text)
            print(f"wrote {target.relative_to(HERE.parent)}")
    if stale:
        print(f"stale build for {', '.join(stale)}: run `python contracts/build.py`", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
