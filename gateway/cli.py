"""`egs-gw`: the technician's command line. The composition root of the gateway.

Each component contributes its commands from its own module; this file only
assembles them (see DESIGN.md: nothing imports the composition root).
"""
import click

from gateway.cliutil import Program
from gateway.devices import commands as device_commands
from gateway.ingest import commands as ingest_commands
from gateway.ledger import commands as ledger_commands
from gateway.market import commands as market_commands
from gateway.run import run_cmd
from ocpp_cs import commands as ocpp_commands


@click.group(cls=Program, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="egs-edge")
def main():
    """EGS gateway: ingest signed meter readings, settle them on the ledger,
    run the OCPP central system and the community market."""


main.add_command(run_cmd)

for module in (device_commands, ingest_commands, ledger_commands, market_commands, ocpp_commands):
    for command in module.COMMANDS:
        main.add_command(command)


if __name__ == "__main__":
    main()
