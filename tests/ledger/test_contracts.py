"""The Vyper contracts in-process (titanoboa): roles, batch settlement, duplicate ids,
fixed EEA supply, exact commission split, events; and the committed build is fresh."""
import subprocess
import sys
from pathlib import Path

import boa
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gateway.ledger import commission, intents

ROOT = Path(__file__).resolve().parents[2]
UNIT = 10**18
SUPPLY = 700_000_000 * UNIT
Z32 = b"\0" * 32


def sid(n):
    return n.to_bytes(32, "big")


@pytest.fixture(scope="module")
def deployers():
    return boa.load_partial(str(ROOT / "contracts/EEA.vy")), boa.load_partial(str(ROOT / "contracts/WATT.vy"))


class World:
    def __init__(self, deployers):
        eea_d, watt_d = deployers
        self.holders = [boa.env.generate_address(n) for n in
                        ("open_issue", "company", "foundation", "team", "contribution")]
        self.admin = boa.env.generate_address("admin")
        self.gateway = boa.env.generate_address("gateway")
        self.edu = boa.env.generate_address("edu")
        self.net = boa.env.generate_address("net")
        self.eea = eea_d.deploy(*self.holders)
        with boa.env.prank(self.admin):
            self.watt = watt_d.deploy(self.eea.address, self.edu, self.net)
            self.watt.setGateway(self.gateway, True)

    def fund(self, account, amount):
        company = self.holders[1]
        with boa.env.prank(company):
            self.eea.approve(self.watt.address, amount)
            self.watt.depositFor(account, amount)

    def gw(self):
        return boa.env.prank(self.gateway)


@pytest.fixture
def w(deployers):
    with boa.env.anchor():
        yield World(deployers)


def names(logs):
    return [type(x).__name__ for x in logs]


# ---- EEA ----------------------------------------------------------------------------

def test_eea_supply_is_fixed_and_distributed_per_whitepaper(w):
    assert w.eea.totalSupply() == SUPPLY
    shares = [30, 35, 20, 10, 5]
    for holder, pct in zip(w.holders, shares):
        assert w.eea.balanceOf(holder) == SUPPLY * pct // 100
    assert w.eea.decimals() == 18 and w.eea.symbol() == "EEA"
    functions = {f["name"] for f in w.eea.abi if f["type"] == "function"}
    assert not functions & {"mint", "burn", "mintTo", "issue"}
    assert functions == {"name", "symbol", "decimals", "balanceOf", "allowance", "totalSupply",
                         "transfer", "transferFrom", "approve"}


def test_eea_transfers_keep_supply_and_check_balances(w):
    a, b = w.holders[0], boa.env.generate_address()
    with boa.env.prank(a):
        w.eea.transfer(b, 5 * UNIT)
        with boa.reverts("EEA: balance too low"):
            w.eea.transfer(b, SUPPLY)
        with boa.reverts("EEA: transfer to the zero address"):
            w.eea.transfer("0x" + "00" * 20, 1)
    with boa.env.prank(b), boa.reverts("EEA: allowance too low"):
        w.eea.transferFrom(a, b, 1)
    assert w.eea.balanceOf(b) == 5 * UNIT and w.eea.totalSupply() == SUPPLY


def test_eea_refuses_a_zero_distribution_address(deployers):
    holders = [boa.env.generate_address() for _ in range(4)]
    with boa.reverts("EEA: distribution address is zero"):
        deployers[0].deploy(*holders[:2], "0x" + "00" * 20, *holders[2:])


# ---- roles --------------------------------------------------------------------------

def test_only_gateways_settle_and_only_the_admin_grants(w):
    stranger = boa.env.generate_address()
    with boa.env.prank(stranger):
        with boa.reverts("WATT: not a gateway"):
            w.watt.settleInterval(sid(1), Z32, [(stranger, 1000, 0, 0)])
        with boa.reverts("WATT: not a gateway"):
            w.watt.settleSession(sid(1), Z32, stranger, stranger, stranger, 1, 0, 0)
        with boa.reverts("WATT: not a gateway"):
            w.watt.setStorage(sid(1), stranger, 1)
        with boa.reverts("WATT: not the admin"):
            w.watt.setGateway(stranger, True)
    with w.gw(), boa.reverts("WATT: not the admin"):
        w.watt.setGateway(stranger, True)
    assert w.watt.totalSupply() == 0
    with boa.env.prank(w.admin):
        w.watt.setGateway(w.gateway, False)
    with w.gw(), boa.reverts("WATT: not a gateway"):
        w.watt.settleInterval(sid(1), Z32, [(stranger, 1000, 0, 0)])
    with boa.env.prank(w.admin):
        w.watt.proposeAdmin(stranger)
    with boa.env.prank(stranger):
        w.watt.acceptAdmin()
    with boa.env.prank(w.admin), boa.reverts("WATT: not the admin"):
        w.watt.setGateway(w.gateway, True)


def test_admin_change_is_two_step_and_only_the_proposed_address_accepts(w):
    cold, other = boa.env.generate_address("cold"), boa.env.generate_address("other")
    functions = {f["name"] for f in w.watt.abi if f["type"] == "function"}
    assert "setAdmin" not in functions                         # no one-step hand-over
    for who in (other, w.gateway):
        with boa.env.prank(who), boa.reverts("WATT: not the admin"):
            w.watt.proposeAdmin(who)
    with boa.env.prank(w.admin):
        w.watt.proposeAdmin(other)
        assert names(w.watt.get_logs()) == ["AdminProposed"]
        w.watt.proposeAdmin(cold)                              # overwrites the first proposal
    assert w.watt.pendingAdmin() == cold and w.watt.admin() == w.admin
    for who in (other, w.gateway, w.admin):
        with boa.env.prank(who), boa.reverts("WATT: not the proposed admin"):
            w.watt.acceptAdmin()
    with boa.env.prank(w.admin):                               # still the admin until accepted
        w.watt.setPools(w.edu, w.net)
    with boa.env.prank(cold):
        w.watt.acceptAdmin()
        assert names(w.watt.get_logs()) == ["AdminSet"]
    assert w.watt.admin() == cold and w.watt.pendingAdmin() == "0x" + "00" * 20
    with boa.env.prank(cold), boa.reverts("WATT: not the proposed admin"):
        w.watt.acceptAdmin()                                   # the proposal is used up
    with boa.env.prank(w.admin):                               # the old admin has no rights left
        for call in (lambda: w.watt.setGateway(other, True), lambda: w.watt.setPools(other, other),
                     lambda: w.watt.proposeAdmin(w.admin), lambda: w.watt.cancelAdminProposal()):
            with boa.reverts("WATT: not the admin"):
                call()
    with boa.env.prank(cold):
        w.watt.setGateway(other, True)
    assert w.watt.isGateway(other)
    with w.gw():                                               # the gateway settles as before
        w.watt.settleInterval(sid(1), Z32, [(other, 1000, 0, 0)])
    assert w.watt.balanceOf(other) == 1000


def test_the_admin_can_cancel_a_proposal_and_nobody_else_can(w):
    cold = boa.env.generate_address("cold")
    with boa.env.prank(w.admin):
        with boa.reverts("WATT: admin address is zero"):
            w.watt.proposeAdmin("0x" + "00" * 20)
        w.watt.proposeAdmin(cold)
    for who in (cold, w.gateway):
        with boa.env.prank(who), boa.reverts("WATT: not the admin"):
            w.watt.cancelAdminProposal()
    with boa.env.prank(w.admin):
        w.watt.cancelAdminProposal()
        assert names(w.watt.get_logs()) == ["AdminProposed"]
    assert w.watt.pendingAdmin() == "0x" + "00" * 20
    with boa.env.prank(cold), boa.reverts("WATT: not the proposed admin"):
        w.watt.acceptAdmin()
    assert w.watt.admin() == w.admin


def test_watt_has_three_decimals_and_no_public_mint(w):
    assert w.watt.decimals() == 3 and w.watt.symbol() == "WATT"
    functions = {f["name"] for f in w.watt.abi if f["type"] == "function"}
    assert not functions & {"mint", "burn"}


# ---- settlement -----------------------------------------------------------------------

def test_batch_mints_and_burns_many_accounts_in_one_call_with_events(w):
    accts = [boa.env.generate_address() for _ in range(20)]
    rh = b"\x07" * 32
    with w.gw():
        w.watt.settleInterval(sid(1), rh, [(a, 100 + i, 0, 0) for i, a in enumerate(accts)])
        logs = w.watt.get_logs()
    assert [w.watt.balanceOf(a) for a in accts] == [100 + i for i in range(20)]
    assert w.watt.totalSupply() == sum(100 + i for i in range(20))
    assert names(logs) == ["Transfer"] * 20 + ["Settled"]
    settled = logs[-1]
    assert settled.sid == sid(1) and settled.records_hash == rh and settled.minted == w.watt.totalSupply()
    assert logs[0].sender == "0x" + "00" * 20 and logs[0].receiver == accts[0]
    with w.gw():
        w.watt.settleInterval(sid(2), rh, [(a, 0, 50, 0) for a in accts])
    assert [w.watt.balanceOf(a) for a in accts] == [50 + i for i in range(20)]
    assert w.watt.applied(sid(1)) and w.watt.applied(sid(2)) and not w.watt.applied(sid(3))


def test_an_applied_settlement_id_reverts_and_changes_nothing(w):
    a = boa.env.generate_address()
    w.fund(a, 10 * UNIT)
    with w.gw():
        w.watt.settleInterval(sid(9), Z32, [(a, 1000, 0, UNIT)])
        before = (w.watt.balanceOf(a), w.watt.totalSupply(), w.watt.escrowOf(a), w.watt.escrowOf(w.net))
        for call in (lambda: w.watt.settleInterval(sid(9), Z32, [(a, 1000, 0, UNIT)]),
                     lambda: w.watt.settleSession(sid(9), Z32, a, a, a, 1, 1, 1),
                     lambda: w.watt.settleTrades(sid(9), Z32, [(a, a, 1, 1)]),
                     lambda: w.watt.setStorage(sid(9), a, 5),
                     lambda: w.watt.withdraw(sid(9), a, 1)):
            with boa.reverts("settlement id already applied"):
                call()
    assert (w.watt.balanceOf(a), w.watt.totalSupply(), w.watt.escrowOf(a), w.watt.escrowOf(w.net)) == before


def test_burn_beyond_the_balance_takes_what_is_there_and_logs_a_shortfall(w):
    a = boa.env.generate_address()
    with w.gw():
        w.watt.settleInterval(sid(1), Z32, [(a, 300, 0, 0)])
        w.watt.settleInterval(sid(2), Z32, [(a, 0, 500, 7)])
        logs = w.watt.get_logs()
    assert w.watt.balanceOf(a) == 0 and w.watt.totalSupply() == 0
    shortfalls = [x for x in logs if type(x).__name__ == "Shortfall"]
    assert [(x.account, x.asset, x.missing) for x in shortfalls] == [(a, 0, 200), (a, 1, 7)]
    assert logs[-1].burned == 300 and logs[-1].commission == 0


def test_session_burns_pool_watt_and_pays_from_escrow(w):
    payer, pool, owner = (boa.env.generate_address() for _ in range(3))
    w.fund(payer, 10 * UNIT)
    with w.gw():
        w.watt.settleInterval(sid(1), Z32, [(pool, 5000, 0, 0)])
        w.watt.settleSession(sid(2), b"\x05" * 32, payer, pool, owner, 1200, 3 * UNIT, UNIT // 2)
        logs = w.watt.get_logs()
    assert w.watt.balanceOf(pool) == 3800 and w.watt.totalSupply() == 3800
    assert w.watt.escrowOf(payer) == 10 * UNIT - 3 * UNIT - UNIT // 2
    assert w.watt.escrowOf(pool) == 3 * UNIT and w.watt.escrowOf(owner) == UNIT // 2
    assert names(logs) == ["Transfer", "EscrowTransfer", "EscrowTransfer", "Settled"]
    assert w.watt.escrowTotal() == 10 * UNIT == w.eea.balanceOf(w.watt.address)


def test_trades_move_watt_to_buyers_and_escrow_to_sellers(w):
    s1, s2, b1 = (boa.env.generate_address() for _ in range(3))
    w.fund(b1, 5 * UNIT)
    with w.gw():
        w.watt.settleInterval(sid(1), Z32, [(s1, 1000, 0, 0), (s2, 2000, 0, 0)])
        w.watt.settleTrades(sid(2), Z32, [(s1, b1, 400, UNIT), (s2, b1, 600, 2 * UNIT)])
    assert (w.watt.balanceOf(s1), w.watt.balanceOf(s2), w.watt.balanceOf(b1)) == (600, 1400, 1000)
    assert (w.watt.escrowOf(s1), w.watt.escrowOf(s2), w.watt.escrowOf(b1)) == (UNIT, 2 * UNIT, 2 * UNIT)
    assert w.watt.totalSupply() == 3000


def test_deposit_and_withdraw_move_real_eea(w):
    a = boa.env.generate_address()
    company = w.holders[1]
    with boa.env.prank(company):
        w.eea.transfer(a, 3 * UNIT)
    with boa.env.prank(a):
        w.eea.approve(w.watt.address, 2 * UNIT)
        w.watt.deposit(2 * UNIT)
        assert type(w.watt.get_logs()[-1]).__name__ == "Deposited"
        with boa.reverts():
            w.watt.deposit(2 * UNIT)  # allowance used up
    assert w.watt.escrowOf(a) == 2 * UNIT and w.eea.balanceOf(a) == UNIT
    with w.gw():
        w.watt.withdraw(sid(1), a, UNIT // 4)
    assert w.eea.balanceOf(a) == UNIT + UNIT // 4
    assert w.watt.escrowOf(a) == 2 * UNIT - UNIT // 4 == w.watt.escrowTotal() == w.eea.balanceOf(w.watt.address)
    assert w.eea.totalSupply() == SUPPLY


def test_storage_registry_add_change_remove(w):
    o = [boa.env.generate_address() for _ in range(3)]
    with w.gw():
        for i, x in enumerate(o):
            w.watt.setStorage(sid(10 + i), x, 1000 * (i + 1))
        w.watt.setStorage(sid(20), o[0], 0)
        w.watt.setStorage(sid(21), o[1], 500)
    assert w.watt.storageOwnerCount() == 2 and w.watt.totalCapacity() == 500 + 3000
    assert {w.watt.storageOwners(0), w.watt.storageOwners(1)} == {o[1], o[2]}


# ---- commission split: exact ---------------------------------------------------------------

@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(fees=st.lists(st.integers(0, 10**24), min_size=1, max_size=6),
       caps=st.lists(st.integers(1, 10**9), min_size=0, max_size=5))
def test_commission_split_is_exact_and_matches_the_gateway(deployers, fees, caps):
    with boa.env.anchor():
        w = World(deployers)
        payers = [boa.env.generate_address() for _ in fees]
        owners = [boa.env.generate_address() for _ in caps]
        for p, f in zip(payers, fees):
            if f:
                w.fund(p, f)
        with w.gw():
            for i, (o, c) in enumerate(zip(owners, caps)):
                w.watt.setStorage(sid(100 + i), o, c)
            w.watt.settleInterval(sid(1), Z32, [(p, 0, 0, f) for p, f in zip(payers, fees)])
        total = sum(fees)
        got = {a: w.watt.escrowOf(a) for a in [*owners, w.edu, w.net]}
        assert sum(got.values()) == total                       # nothing created or lost
        assert all(w.watt.escrowOf(p) == 0 for p in payers)
        assert w.watt.escrowTotal() == total == w.eea.balanceOf(w.watt.address)
        assert got[w.edu] == total * 10 // 100
        owner_total = total * 80 // 100
        if caps:
            for o, c in zip(owners, caps):
                assert got[o] == owner_total * c // sum(caps)
        # the network pool gets the rest: its 10 % plus the rounding remainders (fewer
        # than one base unit per owner), or the owners' 80 % too when none is registered
        paid = sum(got[o] for o in owners)
        assert got[w.net] == total - got[w.edu] - paid
        if caps:
            assert 0 <= owner_total - paid < len(caps)
        else:
            assert got[w.net] == total - total * 10 // 100
        expected = dict.fromkeys(got, 0)
        for a, amount in commission.split(total, list(zip(owners, caps)), w.edu, w.net):
            expected[a] += amount
        assert expected == got


# ---- gas bound used by the worker ------------------------------------------------------------

def _intrinsic(calldata):
    return 21_000 + sum(16 if b else 4 for b in calldata)


def test_gas_bound_covers_a_full_batch_of_fresh_accounts_with_commission(w):
    owners = [boa.env.generate_address() for _ in range(intents.MAX_OWNERS)]
    with w.gw():
        for i, o in enumerate(owners):
            w.watt.setStorage(sid(1000 + i), o, 1000 + i)
    payers = [boa.env.generate_address() for _ in range(intents.MAX_ENTRIES)]
    company = w.holders[1]
    with boa.env.prank(company):
        w.eea.approve(w.watt.address, 2**255)
        for p in payers:
            w.watt.depositFor(p, 10**15)
    entries = [(p, 10**6 + i, 0, 10**15 - i) for i, p in enumerate(payers)]
    with w.gw():
        w.watt.settleInterval(sid(1), b"\x01" * 32, entries)
        used = w.watt._computation.get_gas_used()
    _, _, bound = intents.call_for(
        "interval", "0x" + sid(2).hex(), {"records_hash": "0x" + "01" * 32,
                                         "entries": [[p, m, b, c] for p, m, b, c in entries]},
        storage_owners=len(owners))
    from eth_abi import encode
    data = encode(["bytes32", "bytes32", "(address,uint256,uint256,uint256)[]"],
                  [sid(1), b"\x01" * 32, entries])
    total = used + _intrinsic(b"\x12\x34\x56\x78" + data)
    assert total <= bound, (total, bound)
    assert total > bound * 0.6  # the bound is not absurdly loose either


# ---- build ------------------------------------------------------------------------------------

def test_committed_build_matches_the_sources():
    res = subprocess.run([sys.executable, str(ROOT / "contracts/build.py"), "--check"],
                         capture_output=True, text=True, timeout=120, check=False)
    assert res.returncode == 0, res.stderr


def test_gas_bound_covers_full_trades_and_a_session(w):
    from eth_abi import encode
    sellers = [boa.env.generate_address() for _ in range(intents.MAX_TRADES)]
    buyers = [boa.env.generate_address() for _ in range(intents.MAX_TRADES)]
    with boa.env.prank(w.holders[1]):
        w.eea.approve(w.watt.address, 2**255)
        for b in buyers:
            w.watt.depositFor(b, 10**18)
    with w.gw():
        w.watt.settleInterval(sid(1), Z32, [(s, 1000, 0, 0) for s in sellers[:256]])
        trades = [(s, b, 700, 10**17) for s, b in zip(sellers, buyers)]
        w.watt.settleTrades(sid(2), Z32, trades)
        used = w.watt._computation.get_gas_used()
    data = encode(["bytes32", "bytes32", "(address,address,uint256,uint256)[]"], [sid(2), Z32, trades])
    _, _, bound = intents.call_for("trades", "0x" + sid(2).hex(), {
        "records_hash": "0x" + "00" * 32,
        "trades": [{"seller": s, "buyer": b, "wh": wh, "eea": e} for s, b, wh, e in trades]})
    assert used + _intrinsic(b"\0" * 4 + data) <= bound
    payer, pool, owner = (boa.env.generate_address() for _ in range(3))
    w.fund(payer, 10**18)
    with w.gw():
        w.watt.settleInterval(sid(3), Z32, [(pool, 5000, 0, 0)])
        w.watt.settleSession(sid(4), b"\x01" * 32, payer, pool, owner, 1000, 10**16, 10**15)
        used = w.watt._computation.get_gas_used()
    _, _, bound = intents.call_for("session", "0x" + sid(4).hex(), {
        "records_hash": "0x" + "01" * 32, "payer": payer, "pool": pool, "station_owner": owner,
        "energy_wh": 1000, "energy_eea": 10**16, "fee_eea": 10**15})
    assert used + 21_000 + 16 * 260 <= bound
