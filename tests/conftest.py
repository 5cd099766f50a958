"""Shared fixtures: real mosquitto and Anvil on free loopback ports, always stopped."""
import pytest

from sim.services import Anvil, Mosquitto


@pytest.fixture
def mosquitto(tmp_path):
    """An open (anonymous) loopback broker; tests of broker security build their own."""
    with Mosquitto(tmp_path / "mosquitto") as broker:
        yield broker


@pytest.fixture
def anvil(tmp_path):
    with Anvil(tmp_path / "anvil") as chain:
        yield chain
