"""`egs-gw run` composition: plug-in components get the context, hooks and a clean stop."""
import asyncio
import os
import signal
import threading
import time

import pytest

from gateway import config as config_mod
from gateway import service
from gateway.ingest import settings
from tests.gateway import probe as gateway_probe
from tests.gateway.fixtures import COMMUNITY, T0, Peer, Signer, gwdb_fixture, topic  # noqa: F401


def _cfg(tmp_path, port, components):
    cfg = config_mod.load(None, {"gateway.community": COMMUNITY, "mqtt.broker": f"127.0.0.1:{port}"})
    cfg["gateway"]["components"] = components
    cfg["store"]["db"] = str(tmp_path / "gw.sqlite")
    cfg["intervals"]["tick_s"] = 0.2
    cfg["intervals"]["grace_s"] = 0
    # readings at T0, weeks before the device's registration on the wall clock
    cfg["ingest"]["max_age_s"] = 0
    cfg["ingest"]["registration_skew_s"] = 10**10
    return settings.validate(cfg)


def test_component_gets_context_hooks_and_stops_on_sigterm(tmp_path, gwdb, mosquitto, monkeypatch):
    monkeypatch.setitem(service.COMPONENTS, "probe", "tests.gateway.probe")
    s = Signer("dev1")
    s.register(gwdb)
    cfg = _cfg(tmp_path, mosquitto.port, ["probe", "market"])
    watcher = Peer(mosquitto.port, client_id="watcher")
    assert watcher.connect()
    watcher.subscribe(f"egs/v1/{COMMUNITY}/probe/cmd")

    def device():
        # wait for the service, publish readings spanning two intervals, then SIGTERM
        deadline = time.monotonic() + 20
        while "ctx" not in gateway_probe.SEEN and time.monotonic() < deadline:
            time.sleep(0.05)
        time.sleep(0.5)
        p = Peer(mosquitto.port, client_id="dev1")
        p.connect()
        for i in range(4):
            p.publish(topic("dev1"), s.record(i + 1, 100 * i, 0, T0 + 600 * i))
        while not gateway_probe.SEEN.get("closed") and time.monotonic() < deadline:
            time.sleep(0.05)
        p.close()
        os.kill(os.getpid(), signal.SIGTERM)

    threading.Thread(target=device, daemon=True).start()
    status = asyncio.run(asyncio.wait_for(service.serve(cfg), 30))
    assert status == 0
    ctx = gateway_probe.SEEN["ctx"]
    assert ctx.community == COMMUNITY and ctx.db_path == cfg["store"]["db"]
    assert ctx.config["gateway"]["components"] == ["probe", "market"]
    assert ctx.stopping.is_set() and gateway_probe.SEEN["stopped"]
    closed = gateway_probe.SEEN["closed"]
    assert {(r["device_id"], r["start"] - T0) for r in closed} == {("dev1", 0), ("dev1", 900)}
    assert watcher.get(5) == (f"egs/v1/{COMMUNITY}/probe/cmd", b'{"cmd": "bye"}')
    watcher.close()


def test_failing_component_stops_the_service_with_status_1(tmp_path, gwdb, mosquitto, monkeypatch):
    import types
    mod = types.ModuleType("probe_fail")
    mod.run = gateway_probe.fail
    monkeypatch.setitem(__import__("sys").modules, "probe_fail", mod)
    monkeypatch.setitem(service.COMPONENTS, "broken", "probe_fail")
    cfg = _cfg(tmp_path, mosquitto.port, ["broken"])
    assert asyncio.run(asyncio.wait_for(service.serve(cfg), 30)) == 1


def test_unknown_component_is_a_config_error(tmp_path, mosquitto):
    cfg = _cfg(tmp_path, mosquitto.port, ["warp-drive"])
    with pytest.raises(config_mod.ConfigError, match="gateway.components: unknown component 'warp-drive'"):
        asyncio.run(service.serve(cfg))


def test_component_not_installed_is_skipped(tmp_path, monkeypatch):
    import logging
    monkeypatch.setitem(service.COMPONENTS, "ghost", "gateway.no_such_module")
    assert service.load_components(["ghost"], logging.getLogger("t")) == []
