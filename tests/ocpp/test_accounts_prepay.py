"""Prepaying EEA against a real Anvil: `account deposit` moves EEA into the escrow on
chain and the book counts it once; `account credit` is a bounded, reversible,
book-only goodwill credit that is never paid out on chain and that `ledger
reconcile` reports on its own line; `ledger withdraw` pays out only what the
chain holds for the account."""
import json

from click.testing import CliRunner
from web3 import Web3

from gateway import accounts
from gateway.cli import main
from gateway.ledger import keystore, outbox
from gateway.ledger.worker import DEPOSIT_REASON
from sim.services import ANVIL_KEYS
from tests.ledger.fixtures import COMPANY, PASSWORD, addr, ledger_env_fixture  # noqa: F401
from tests.ocpp.fixtures import POOL, PRICE

EEA = 10**18


def setup(env, **ocpp):
    extra = "".join(f"{k} = {json.dumps(v)}\n" for k, v in ocpp.items())
    env.config_path.write_text(env.config_path.read_text() + f'[ocpp]\nprice_per_kwh = "{PRICE} base"\n'
                               f'energy_pool = "{POOL}"\n' + extra)
    company = env.tmp / "company.json"
    keystore.create(company, PASSWORD, ANVIL_KEYS[1], kdf="pbkdf2", iterations=1000)
    return company


def gw(env, *args):
    return CliRunner().invoke(main, [*map(str, args), "--config", str(env.config_path)],
                              env={"EGS_LEDGER_PASSWORD": None})


def escrow(env, address):
    chain = env.chain()
    return chain.call(chain.watt.functions.escrowOf(Web3.to_checksum_address(address)).call)


def book(env, tag):
    r = gw(env, "account", "show", "--id-tag", tag, "--json")
    assert r.exit_code == 0, r.output
    return int(json.loads(r.output)["eea"])


def one_line_error(r, text):
    """The refusal is the one last line (after what the command said it was about to do)."""
    lines = r.output.strip().splitlines()
    assert r.exit_code != 0 and text in lines[-1] and "error" in lines[-1], r.output
    assert "Traceback" not in r.output and len(lines) <= 2, r.output


def test_deposit_moves_eea_on_chain_and_the_book_counts_it_once(ledger_env):
    env = ledger_env
    company = setup(env)
    assert gw(env, "account", "add", "--id-tag", "TAG1").exit_code == 0
    address = json.loads(gw(env, "account", "show", "--id-tag", "TAG1", "--json").output)["address"]
    r = gw(env, "account", "deposit", "TAG1", "5", "--from-key", company, "--json")
    assert r.exit_code == 0, r.output
    d = json.loads(r.output)
    assert d["amount"] == str(5 * EEA) and d["address"] == address and d["tx_hash"].startswith("0x")
    assert escrow(env, address) == 5 * EEA
    assert book(env, "TAG1") == 5 * EEA
    # by address too, and the worker's own deposit scan does not count either twice
    r = gw(env, "account", "deposit", addr(7), "2 base", "--from-key", company)
    assert r.exit_code == 0 and "(2 base units)" in r.output, r.output
    r = gw(env, "ledger", "run", "--until-idle", "--timeout", "60")
    assert r.exit_code == 0, r.output
    assert book(env, "TAG1") == 5 * EEA and accounts.balance(env.conn(), addr(7), "EEA") == 2
    r = gw(env, "ledger", "reconcile")
    assert r.exit_code == 0 and "clean" in r.output, r.output
    # the gateway's own key holds no EEA: refused before anything is sent
    one_line_error(gw(env, "account", "deposit", "TAG1", "1"), "holds 0 EEA")
    one_line_error(gw(env, "account", "deposit", "NOPE", "1", "--from-key", company), "unknown idTag NOPE")
    one_line_error(gw(env, "account", "deposit", "TAG1", "0", "--from-key", company), "positive")
    assert escrow(env, address) == 5 * EEA and book(env, "TAG1") == 5 * EEA


def test_goodwill_credit_is_bounded_reversible_never_withdrawn_and_reconciled(ledger_env):
    env = ledger_env
    setup(env, goodwill_max_per_account="10 EEA", goodwill_max_total="15 EEA")
    for tag in ("TAG1", "TAG2"):
        assert gw(env, "account", "add", "--id-tag", tag).exit_code == 0
    address = json.loads(gw(env, "account", "show", "--id-tag", "TAG1", "--json").output)["address"]
    env.deposit(address, 2 * EEA)
    assert gw(env, "ledger", "run", "--until-idle", "--timeout", "60").exit_code == 0
    r = gw(env, "account", "credit", "--id-tag", "TAG1", "--amount", "3", "--ref", "g1")
    assert r.exit_code == 0, r.output
    assert book(env, "TAG1") == 5 * EEA
    # reconcile stays clean and names the book-only credit on a line of its own
    r = gw(env, "ledger", "reconcile")
    assert r.exit_code == 0 and "clean" in r.output and "book-only" in r.output and "3 EEA" in r.output, r.output
    report = json.loads(gw(env, "ledger", "reconcile", "--json").output)
    assert report["differences"] == [] and report["book_only"] == {address: str(3 * EEA)}
    # the book-only part is never paid out on chain
    one_line_error(gw(env, "ledger", "withdraw", address, "3"), "book-only")
    assert outbox.counts(env.conn()).get("queued", 0) == 0
    # bounded per account and in total
    one_line_error(gw(env, "account", "credit", "--id-tag", "TAG1", "--amount", "8", "--ref", "g2"),
                   "goodwill_max_per_account")
    assert gw(env, "account", "credit", "--id-tag", "TAG2", "--amount", "10", "--ref", "g3").exit_code == 0
    one_line_error(gw(env, "account", "credit", "--id-tag", "TAG1", "--amount", "3", "--ref", "g4"),
                   "goodwill_max_total")
    assert book(env, "TAG1") == 5 * EEA
    # reversible, with a note, never below zero and never more than was credited
    one_line_error(gw(env, "account", "debit", "--id-tag", "TAG1", "--amount", "4", "--note", "typo"),
                   "only 3 EEA")
    r = gw(env, "account", "debit", "--id-tag", "TAG1", "--amount", "3", "--note", "credited by mistake")
    assert r.exit_code == 0, r.output
    assert book(env, "TAG1") == 2 * EEA
    notes = [r[0] for r in env.conn().execute("SELECT ref FROM balance_entries WHERE address=? AND "
                                              "reason='goodwill_reversal'", (address,))]
    assert len(notes) == 1 and "credited by mistake" in notes[0]
    # the cap counts what is outstanding: the reversed 3 EEA may be credited again
    assert gw(env, "account", "credit", "--id-tag", "TAG1", "--amount", "3", "--ref", "g5").exit_code == 0
    r = gw(env, "ledger", "reconcile")
    assert r.exit_code == 0 and "clean" in r.output, r.output


def test_withdraw_refuses_what_the_chain_does_not_hold(ledger_env):
    env = ledger_env
    a = addr(1)
    env.deposit(a, 2 * EEA)
    assert gw(env, "ledger", "run", "--until-idle", "--timeout", "60").exit_code == 0
    conn = env.conn()
    # the book says more than the chain holds (a deposit recorded by hand)
    accounts.credit(conn, a, "EEA", 3 * EEA, reason=DEPOSIT_REASON, ref="0xhand:0")
    one_line_error(gw(env, "ledger", "withdraw", a, "4"), "holds 2 EEA")
    assert outbox.counts(conn).get("queued", 0) == 0 and accounts.balance(conn, a, "EEA") == 5 * EEA
    # what is already queued to leave the escrow counts against it
    r = gw(env, "ledger", "withdraw", a, "1.5")
    assert r.exit_code == 0, r.output
    one_line_error(gw(env, "ledger", "withdraw", a, "1"), "not enough EEA on chain")
    assert gw(env, "ledger", "withdraw", a, "0.5").exit_code == 0
