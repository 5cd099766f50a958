"""`egs-sim`: the emulators (meters, devices running the real firmware, chargers, communities)."""
import click

from gateway.cliutil import Program
from sim import commands as sim_commands


class _Program(Program):
    prog = "egs-sim"


@click.group(cls=_Program, context_settings={"help_option_names": ["-h", "--help"]})
def main():
    """EGS emulators for development, tests and demos."""


for command in sim_commands.COMMANDS:
    main.add_command(command)


if __name__ == "__main__":
    main()
