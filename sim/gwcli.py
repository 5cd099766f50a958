"""`egs-gw` driven from Python, as the demo and the HIL bench use it.

Each call runs the console script's own code in this process (click's runner) with
`--config FILE --json`, so a bench that issues hundreds of commands pays no Python start
per call and still exercises exactly what a technician types.
"""
import json
import threading


class CliError(RuntimeError):
    """An `egs-gw` command that exited non-zero: its exit status, stderr and stdout tail."""


_cli_lock = threading.Lock()  # click's runner swaps sys.stdout: one command at a time


def egs_gw(config_path, *args, check=True):
    """`egs-gw ARGS --config FILE --json` → the decoded JSON output.

    With check=False a failure returns {"exit_code", "stdout", "stderr"} instead of raising.
    """
    from click.testing import CliRunner

    from gateway.cli import main

    argv = [str(a) for a in args] + ["--config", str(config_path), "--json"]
    with _cli_lock:
        res = CliRunner().invoke(main, argv, catch_exceptions=False,
                                 env={"EGS_GW_CONFIG": None, "EGS_GW_DB": None})
    if res.exit_code != 0:
        if check:
            raise CliError(f"egs-gw {' '.join(argv[:3])} exited {res.exit_code}: "
                           f"{res.stderr.strip()} {res.stdout.strip()[-500:]}")
        return {"exit_code": res.exit_code, "stdout": res.stdout, "stderr": res.stderr}
    return json.loads(res.stdout) if res.stdout.strip() else {}


def toml_text(sections):
    """A TOML file from {section: {key: value}}; dict values become sub-tables."""
    out = []
    for name, body in sections.items():
        out.append(f"[{name}]")
        out.extend(f"{k} = {json.dumps(v)}" for k, v in body.items() if not isinstance(v, dict))
        for key, sub in body.items():
            if isinstance(sub, dict):
                out.append(f"[{name}.{key}]")
                out.extend(f"{k} = {json.dumps(v)}" for k, v in sub.items())
        out.append("")
    return "\n".join(out)
