"""Money typed at the account commands: one unit rule (a bare number is EEA, base units
only with 'base'), the interpreted amount said back, and a question above the threshold."""
import json

from click.testing import CliRunner

from gateway.cli import main
from tests.ocpp.fixtures import POOL, PRICE

EEA = 10**18


def run(tmp_path, *args):
    conf = tmp_path / "gw.toml"
    if not conf.exists():
        conf.write_text(f'[ocpp]\nprice_per_kwh = "{PRICE} base"\nenergy_pool = "{POOL}"\n'
                        'min_deposit_eea = "1 EEA"\n')
    return CliRunner().invoke(main, [*args, "--config", str(conf), "--db", str(tmp_path / "g.db")])


def balance(tmp_path, tag):
    r = run(tmp_path, "account", "show", "--id-tag", tag, "--json")
    assert r.exit_code == 0, r.output
    return int(json.loads(r.output)["eea"])


def test_a_bare_amount_is_eea_and_is_said_back(tmp_path):
    assert run(tmp_path, "account", "add", "--id-tag", "TAG1").exit_code == 0
    r = run(tmp_path, "account", "credit", "--id-tag", "TAG1", "--amount", "25", "--ref", "a")
    assert r.exit_code == 0, r.output
    assert "crediting 25 EEA (25000000000000000000 base units) to idTag TAG1" in r.output
    assert balance(tmp_path, "TAG1") == 25 * EEA
    r = run(tmp_path, "account", "credit", "--id-tag", "TAG1", "--amount", "5 base", "--ref", "b")
    assert r.exit_code == 0 and "(5 base units)" in r.output, r.output
    assert balance(tmp_path, "TAG1") == 25 * EEA + 5


def test_a_large_amount_needs_yes_without_a_terminal(tmp_path):
    assert run(tmp_path, "account", "add", "--id-tag", "TAG2").exit_code == 0
    r = run(tmp_path, "account", "credit", "--id-tag", "TAG2", "--amount", "500", "--ref", "x")
    assert r.exit_code == 2 and "not confirmed" in r.output and "--yes" in r.output, r.output
    assert "Traceback" not in r.output and balance(tmp_path, "TAG2") == 0
    r = run(tmp_path, "account", "credit", "--id-tag", "TAG2", "--amount", "500", "--ref", "x", "--yes")
    assert r.exit_code == 0, r.output
    assert balance(tmp_path, "TAG2") == 500 * EEA


def test_an_old_base_unit_price_in_the_config_is_refused_in_one_line(tmp_path):
    (tmp_path / "gw.toml").write_text(f'[ocpp]\nprice_per_kwh = {PRICE}\nenergy_pool = "{POOL}"\n')
    assert run(tmp_path, "account", "add", "--id-tag", "TAG3").exit_code == 0
    r = run(tmp_path, "account", "show", "--id-tag", "TAG3")
    assert r.exit_code == 1 and "a bare number is EEA" in r.output and f"'{PRICE} base'" in r.output, r.output
    assert r.output.count("\n") == 1


def test_a_bare_fee_is_eea_per_kwh(tmp_path):
    r = run(tmp_path, "charger", "add", "--id", "CP1", "--password", "longenough1", "--owner", POOL,
            "--fee", "0.05", "--json")
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout)["fee_per_kwh"] == str(5 * 10**16)
