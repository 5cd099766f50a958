"""The energy a signed reading may claim: no more than its meter can deliver.

A device's key in hostile hands signs whatever registers it likes; the signature says
who made a claim, not that it is true. So a reading is held for review (quarantine
reason `implausible_energy` with a security event: never stored as a reading, never in
an interval, never minted) when a register rose by more than its meter's maximum power
allows (`EnergyLimit.allowed_wh`) since the neighbouring readings of the same meter (by
sequence, synchronised time only), and since the latest one at least WINDOW_S older, so
that many small steps cannot add up to more than the meter's power either.

The maximum power comes from the configuration or the meter model the records name
(`EnergyLimit.max_power`; docs/gateway.md, "Held for review"). The model is the device's
own claim, and a stolen key names the highest-rated one: `ingest.max_power_w` should not
exceed the largest meter in the community, and a CT-connected meter needs its own entry.
"""
import re

# Rated maximum power: maximum current x phases x 230 V (the tolerance covers +10 % voltage).
# Keys are the MM values of firmware/meters.py's models (tests/gateway/test_ingest_hostile.py
# checks every model there has one).
RATINGS_W = {
    "SDM630": 69_000,    # Eastron SDM630 (direct connection): 10(100) A, three phases
    "SDM72": 69_000,     # Eastron SDM72D-M: 10(100) A, three phases
    "SDM120": 10_350,    # Eastron SDM120: 5(45) A, single phase
    "B23": 44_850,       # ABB B23 (direct connection): 5(65) A, three phases
    "DDSU666": 18_400,   # Chint DDSU666: 5(80) A, single phase (10(60) A variants exist: 13.8 kW)
}

TIME_SLACK_S = 2
WINDOW_S = 60
RESOLUTION_WH = 20
REGISTER_CAP_WH = 10**11    # no meter shows more; the resolution allowance stops growing here

_MM = re.compile(rb'"MM"\s*:\s*"([^"\\]{1,64})"')


def meter_model(record):
    """The meter model (OCMF "MM") of a record's payload, upper-case, or ""."""
    parts = bytes(record).split(b"|")
    m = _MM.search(parts[1] if len(parts) >= 3 else b"")
    return m.group(1).decode("utf-8", "replace").strip().upper() if m else ""


class EnergyLimit:
    """The ingest.* settings of the plausibility limit, and the check itself."""

    def __init__(self, enabled=True, max_power_w=100_000, tolerance_pct=10, model_max_power_w=None,
                 device_max_power_w=None):
        self.enabled = enabled
        self.default_w = max_power_w
        self.tolerance_pct = tolerance_pct
        self.models = {str(k).strip().upper(): v for k, v in (model_max_power_w or {}).items()}
        self.devices = dict(device_max_power_w or {})

    @classmethod
    def from_config(cls, cfg):
        return cls(cfg.get("energy_limit", True), cfg.get("max_power_w", 100_000),
                   cfg.get("energy_tolerance_pct", 10), cfg.get("model_max_power_w"),
                   cfg.get("device_max_power_w"))

    def max_power(self, device_id, model):
        """(watts, where the figure comes from) for a device whose records name `model`
        (OCMF "MM", which firmware/meters.py fills from its MODELS table)."""
        if device_id in self.devices:
            return int(self.devices[device_id]), f"ingest.device_max_power_w for {device_id}"
        if model in self.models:
            return int(self.models[model]), f"ingest.model_max_power_w for meter model {model}"
        if model in RATINGS_W:
            return RATINGS_W[model], f"rating of meter model {model}"
        return int(self.default_w), f"ingest.max_power_w (no rating for meter model {model or '(none)'!r})"

    def allowed_wh(self, power_w, seconds, register_wh):
        """The most a register may rise in `seconds` (whole-second timestamps):

            max_power_w x (seconds + TIME_SLACK_S) x (100 + tolerance_pct) % + resolution

        TIME_SLACK_S covers timestamps taken up to a second before the registers are read
        (readings a few seconds apart, or in the same second, are not held at full power);
        the resolution is RESOLUTION_WH plus the step of a float32 kWh register at that size
        (Eastron: 7.8 Wh near 100 MWh).
        """
        energy = power_w * (max(seconds, 0) + TIME_SLACK_S) * (100 + self.tolerance_pct) // 360_000
        return energy + RESOLUTION_WH + (min(max(register_wh, 0), REGISTER_CAP_WH) >> 23)

    def problem(self, earlier, later, power_w, source):
        """A one-line reason if `later` claims more than `earlier` allows, else None.

        Both are (seq, time_epoch, import_wh, export_wh) of the same meter, earlier by sequence.
        """
        seconds = later[1] - earlier[1]
        for name, i in (("import", 2), ("export", 3)):
            rise = later[i] - earlier[i]
            allowed = self.allowed_wh(power_w, seconds, later[i])
            if rise > allowed:
                return (f"{name} rose {rise} Wh in {max(seconds, 0)} s (sequence {earlier[0]} to "
                        f"{later[0]}), more than {allowed} Wh at {power_w} W ({source}); "
                        "held for review")
        return None
