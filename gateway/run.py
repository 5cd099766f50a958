"""`egs-gw run`, the command that starts the service (`gateway/service.py`).

Kept apart from `gateway/cli.py` so `python -m gateway` starts the service without
importing every component's commands (web3 alone costs a second on a Pi).
"""
import sys

import click

from gateway import config as config_mod
from gateway import service
from gateway.cliutil import OneLineCommand, common_options
from gateway.ingest import settings
from gateway.ingest.mqtt import read_password


@click.command("run", cls=OneLineCommand)
@common_options
@click.option("--broker", help="MQTT broker HOST:PORT (mqtt.broker).")
@click.option("--mqtt-user", help="MQTT user name (mqtt.user).")
@click.option("--mqtt-password-file", type=click.Path(dir_okay=False),
              help="File holding the MQTT password (mqtt.password_file).")
@click.option("--community", help="Community id (gateway.community).")
@click.option("--ocpp", metavar="HOST:PORT", help="Listen address of the OCPP central system.")
@click.option("--workers", type=int, help="Verification processes: 0 inline, -1 all cores (ingest.workers).")
def run_cmd(app, broker, mqtt_user, mqtt_password_file, community, ocpp, workers):
    """Run the gateway service: MQTT ingest, intervals and the installed components.

    Logs go to stderr; with --json, one JSON object per line (at, level, logger, message).
    """

    service.declare_sections()
    cfg = config_mod.load(app.config_path, {
        "mqtt.broker": broker, "mqtt.user": mqtt_user, "mqtt.password_file": mqtt_password_file,
        "gateway.community": community, "ingest.workers": workers,
    })
    cfg["store"]["db"] = app.db_path
    settings.validate(cfg)
    if ocpp is not None:
        settings.host_port(ocpp, "--ocpp", default_port=9000)
        for key in ("listen", "bind", "address"):
            if key in cfg.get("ocpp", {}):
                cfg["ocpp"][key] = ocpp
                break
    read_password(cfg["mqtt"]["password_file"])
    sys.exit(service.main(cfg, ocpp, as_json=app.json))
