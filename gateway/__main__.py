"""`python -m gateway [options]` is `egs-gw run [options]`, without loading the command
modules of every other component (quicker to start)."""
from gateway import service
from gateway.run import run_cmd

service.declare_sections()
run_cmd(prog_name="egs-gw run")
