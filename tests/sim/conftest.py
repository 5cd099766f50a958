"""Emulator and demo tests share no fixtures: each module keeps its own (small_day,
sim_clock, nothing_runs); the root conftest's mosquitto and anvil serve any that need them."""
