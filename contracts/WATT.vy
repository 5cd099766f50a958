# pragma version ~=0.4.3
"""
@title WATT, the energy token, and the community's settlement ledger
@notice WATT is an ERC-20 with 3 decimals: 1 unit = 1 Wh, 1 token = 1 kWh.
        New WATT exists only because a gateway settled metered export, and WATT
        disappears only because a gateway settled metered import or a charging
        session. Both happen in `settle`, which carries a settlement id: an id
        that was already applied makes the call REVERT ("settlement id already
        applied"), so a retried or replayed settlement can never mint twice.

        The same contract keeps the accounts' prepaid EEA (an escrow: accounts
        deposit EEA here, and gateways move escrowed EEA for energy payments,
        trades and the storage commission in the same id-carrying calls).
        Keeping token and escrow in one contract makes one settlement one atomic
        call, with no cross-contract call per account.

        Amounts in a settlement are what the gateway decided from its own book.
        If the chain holds less than a burn, move or charge asks for (because an
        account moved tokens on chain in the meantime), the contract takes what
        is there and logs a Shortfall instead of reverting, so one account can
        never block the settlement queue; `egs-gw ledger reconcile` reports it.

        Storage commission: the EEA charged in a settlement (commissions) is
        split there and then: 10 % (rounded down) to the education pool, 80 %
        (rounded down) to the registered storage owners pro rata to capacity
        (each share rounded down), and the network pool receives the rest,
        i.e. its 10 % plus every rounding remainder. No EEA is created or lost:
        the shares always add up to the amount charged.

        Roles: gateways (granted by the admin) settle; the admin only grants and
        revokes the gateway role and sets the pools, so it can be a cold key
        apart from the gateway's hot one. The admin role moves in two steps
        (proposeAdmin, then acceptAdmin from the proposed address).
"""
from ethereum.ercs import IERC20

implements: IERC20

name: public(constant(String[32])) = "WATT"
symbol: public(constant(String[8])) = "WATT"
decimals: public(constant(uint8)) = 3

MAX_ENTRIES: constant(uint256) = 512
MAX_TRADES: constant(uint256) = 256
MAX_VIEW: constant(uint256) = 1024
MAX_OWNERS: constant(uint256) = 64
ASSET_WATT: constant(uint8) = 0
ASSET_EEA: constant(uint8) = 1


struct Entry:
    account: address
    mint: uint256
    burn: uint256
    commission: uint256


struct Trade:
    seller: address
    buyer: address
    wh: uint256
    eea: uint256


event Settled:
    sid: indexed(bytes32)
    records_hash: bytes32
    minted: uint256
    burned: uint256
    commission: uint256

event Shortfall:
    sid: indexed(bytes32)
    account: indexed(address)
    asset: uint8
    missing: uint256

event EscrowTransfer:
    sid: indexed(bytes32)
    source: indexed(address)
    target: indexed(address)
    amount: uint256

event CommissionPaid:
    sid: indexed(bytes32)
    recipient: indexed(address)
    amount: uint256

event Deposited:
    account: indexed(address)
    payer: indexed(address)
    amount: uint256

event Withdrawn:
    sid: indexed(bytes32)
    account: indexed(address)
    amount: uint256

event StorageSet:
    sid: indexed(bytes32)
    owner: indexed(address)
    capacity: uint256

event GatewaySet:
    account: indexed(address)
    enabled: bool

event PoolsSet:
    education: address
    network: address

event AdminProposed:
    admin: indexed(address)
    proposed: indexed(address)

event AdminSet:
    admin: address


balanceOf: public(HashMap[address, uint256])
allowance: public(HashMap[address, HashMap[address, uint256]])
totalSupply: public(uint256)

admin: public(address)
pendingAdmin: public(address)
isGateway: public(HashMap[address, bool])
applied: public(HashMap[bytes32, bool])

eea: public(immutable(IERC20))
escrowOf: public(HashMap[address, uint256])
escrowTotal: public(uint256)

educationPool: public(address)
networkPool: public(address)
storageOwners: public(DynArray[address, MAX_OWNERS])
capacityOf: public(HashMap[address, uint256])
totalCapacity: public(uint256)


@deploy
def __init__(eea_token: address, education_pool: address, network_pool: address):
    assert eea_token != empty(address), "WATT: EEA address is zero"
    eea = IERC20(eea_token)
    self.admin = msg.sender
    self._set_pools(education_pool, network_pool)
    log AdminSet(admin=msg.sender)


# ---- ERC-20 -----------------------------------------------------------------

@internal
def _transfer(sender: address, receiver: address, amount: uint256):
    assert receiver != empty(address), "WATT: transfer to the zero address"
    have: uint256 = self.balanceOf[sender]
    assert have >= amount, "WATT: balance too low"
    self.balanceOf[sender] = have - amount
    self.balanceOf[receiver] += amount
    log IERC20.Transfer(sender=sender, receiver=receiver, value=amount)


@external
def transfer(receiver: address, amount: uint256) -> bool:
    self._transfer(msg.sender, receiver, amount)
    return True


@external
def transferFrom(sender: address, receiver: address, amount: uint256) -> bool:
    allowed: uint256 = self.allowance[sender][msg.sender]
    if allowed != max_value(uint256):
        assert allowed >= amount, "WATT: allowance too low"
        self.allowance[sender][msg.sender] = allowed - amount
    self._transfer(sender, receiver, amount)
    return True


@external
def approve(spender: address, amount: uint256) -> bool:
    self.allowance[msg.sender][spender] = amount
    log IERC20.Approval(owner=msg.sender, spender=spender, value=amount)
    return True


# ---- roles --------------------------------------------------------------------

@internal
def _only_admin():
    assert msg.sender == self.admin, "WATT: not the admin"


@internal
def _set_pools(education: address, network: address):
    assert education != empty(address) and network != empty(address), "WATT: pool address is zero"
    self.educationPool = education
    self.networkPool = network
    log PoolsSet(education=education, network=network)


@external
def setGateway(account: address, enabled: bool):
    self._only_admin()
    self.isGateway[account] = enabled
    log GatewaySet(account=account, enabled=enabled)


@external
def setPools(education: address, network: address):
    self._only_admin()
    self._set_pools(education, network)


@external
def proposeAdmin(new_admin: address):
    """
    @notice Step one of an admin change: the admin names its successor, who
            becomes admin only by calling `acceptAdmin` from its own key, so a
            mistyped address can never take (or strand) the admin role. A new
            proposal replaces the pending one.
    """
    self._only_admin()
    assert new_admin != empty(address), "WATT: admin address is zero"
    self.pendingAdmin = new_admin
    log AdminProposed(admin=msg.sender, proposed=new_admin)


@external
def cancelAdminProposal():
    """Withdraw the pending proposal (logged as a proposal of the zero address)."""
    self._only_admin()
    self.pendingAdmin = empty(address)
    log AdminProposed(admin=msg.sender, proposed=empty(address))


@external
def acceptAdmin():
    """Step two: the proposed address takes the admin role; the old admin keeps none."""
    assert msg.sender == self.pendingAdmin, "WATT: not the proposed admin"
    self.admin = msg.sender
    self.pendingAdmin = empty(address)
    log AdminSet(admin=msg.sender)


@internal
def _apply_once(sid: bytes32):
    """Only a gateway, and each settlement id once."""
    assert self.isGateway[msg.sender], "WATT: not a gateway"
    assert not self.applied[sid], "settlement id already applied"
    self.applied[sid] = True


# ---- escrow of prepaid EEA -------------------------------------------------------

@internal
def _deposit(account: address, amount: uint256):
    assert account != empty(address), "WATT: deposit for the zero address"
    assert extcall eea.transferFrom(msg.sender, self, amount, default_return_value=True), "WATT: EEA transfer failed"
    self.escrowOf[account] += amount
    self.escrowTotal += amount
    log Deposited(account=account, payer=msg.sender, amount=amount)


@external
def deposit(amount: uint256):
    """Prepay EEA for your own account (approve this contract on EEA first)."""
    self._deposit(msg.sender, amount)


@external
def depositFor(account: address, amount: uint256):
    """Prepay EEA for someone else's account."""
    self._deposit(account, amount)


@external
def withdraw(sid: bytes32, account: address, amount: uint256):
    """Pay escrowed EEA back to its account, decided by the gateway that keeps the book."""
    self._apply_once(sid)
    have: uint256 = self.escrowOf[account]
    take: uint256 = min(have, amount)
    if take < amount:
        log Shortfall(sid=sid, account=account, asset=ASSET_EEA, missing=amount - take)
    self.escrowOf[account] = have - take
    self.escrowTotal -= take
    assert extcall eea.transfer(account, take, default_return_value=True), "WATT: EEA transfer failed"
    log Withdrawn(sid=sid, account=account, amount=take)


# ---- storage owners ------------------------------------------------------------

@external
def setStorage(sid: bytes32, owner: address, capacity: uint256):
    """Register (capacity > 0), change or remove (capacity 0) a storage owner's capacity in Wh."""
    self._apply_once(sid)
    assert owner != empty(address), "WATT: storage owner is zero"
    old: uint256 = self.capacityOf[owner]
    if old == 0 and capacity > 0:
        assert len(self.storageOwners) < MAX_OWNERS, "WATT: too many storage owners"
        self.storageOwners.append(owner)
    elif old > 0 and capacity == 0:
        n: uint256 = len(self.storageOwners)
        for i: uint256 in range(n, bound=MAX_OWNERS):
            if self.storageOwners[i] == owner:
                self.storageOwners[i] = self.storageOwners[n - 1]
                self.storageOwners.pop()
                break
    self.capacityOf[owner] = capacity
    self.totalCapacity = self.totalCapacity - old + capacity
    log StorageSet(sid=sid, owner=owner, capacity=capacity)


@view
@external
def storageOwnerCount() -> uint256:
    return len(self.storageOwners)


# ---- settlement -----------------------------------------------------------------

@internal
def _split(sid: bytes32, total: uint256):
    education: uint256 = total * 10 // 100
    owners_total: uint256 = total * 80 // 100
    paid: uint256 = 0
    cap: uint256 = self.totalCapacity
    if cap > 0:
        n: uint256 = len(self.storageOwners)
        for i: uint256 in range(n, bound=MAX_OWNERS):
            owner: address = self.storageOwners[i]
            share: uint256 = owners_total * self.capacityOf[owner] // cap
            if share > 0:
                self.escrowOf[owner] += share
                paid += share
                log CommissionPaid(sid=sid, recipient=owner, amount=share)
    network: uint256 = total - education - paid
    if education > 0:
        self.escrowOf[self.educationPool] += education
        log CommissionPaid(sid=sid, recipient=self.educationPool, amount=education)
    if network > 0:
        self.escrowOf[self.networkPool] += network
        log CommissionPaid(sid=sid, recipient=self.networkPool, amount=network)


@internal
def _take_watt(sid: bytes32, account: address, amount: uint256) -> uint256:
    """Debit up to `amount` WATT; a Shortfall records what was not there."""
    have: uint256 = self.balanceOf[account]
    take: uint256 = min(have, amount)
    if take < amount:
        log Shortfall(sid=sid, account=account, asset=ASSET_WATT, missing=amount - take)
    self.balanceOf[account] = have - take
    return take


@internal
def _take_eea(sid: bytes32, account: address, amount: uint256) -> uint256:
    """Debit up to `amount` escrowed EEA; a Shortfall records what was not there."""
    have: uint256 = self.escrowOf[account]
    take: uint256 = min(have, amount)
    if take < amount:
        log Shortfall(sid=sid, account=account, asset=ASSET_EEA, missing=amount - take)
    self.escrowOf[account] = have - take
    return take


@internal
def _move_eea(sid: bytes32, source: address, target: address, amount: uint256):
    if amount == 0:
        return
    take: uint256 = self._take_eea(sid, source, amount)
    self.escrowOf[target] += take
    log EscrowTransfer(sid=sid, source=source, target=target, amount=take)


@external
def settleInterval(sid: bytes32, records_hash: bytes32, entries: DynArray[Entry, MAX_ENTRIES]):
    """
    @notice Settle one batch of a 15-minute interval: per account, mint WATT for
            exported Wh, burn WATT for imported Wh, and charge the storage
            commission in escrowed EEA (split at once, see the contract notice).
            `records_hash` is the keccak256 the gateway computed over the signed
            OCMF records the batch rests on (docs/ledger.md says how).
    """
    self._apply_once(sid)
    minted: uint256 = 0
    burned: uint256 = 0
    commission: uint256 = 0
    for e: Entry in entries:
        if e.mint > 0:
            self.balanceOf[e.account] += e.mint
            minted += e.mint
            log IERC20.Transfer(sender=empty(address), receiver=e.account, value=e.mint)
        if e.burn > 0:
            take: uint256 = self._take_watt(sid, e.account, e.burn)
            burned += take
            log IERC20.Transfer(sender=e.account, receiver=empty(address), value=take)
        if e.commission > 0:
            commission += self._take_eea(sid, e.account, e.commission)
    self.totalSupply = self.totalSupply + minted - burned
    if commission > 0:
        self._split(sid, commission)
    log Settled(sid=sid, records_hash=records_hash, minted=minted, burned=burned, commission=commission)


@external
def settleSession(sid: bytes32, records_hash: bytes32, payer: address, pool: address,
                  station_owner: address, energy_wh: uint256, energy_eea: uint256, fee_eea: uint256):
    """
    @notice Settle a charging session: the pool's WATT for the energy is burned,
            the payer's escrowed EEA pays the pool for the energy and the station
            owner the fee.
    """
    self._apply_once(sid)
    burned: uint256 = 0
    if energy_wh > 0:
        burned = self._take_watt(sid, pool, energy_wh)
        self.totalSupply -= burned
        log IERC20.Transfer(sender=pool, receiver=empty(address), value=burned)
    self._move_eea(sid, payer, pool, energy_eea)
    self._move_eea(sid, payer, station_owner, fee_eea)
    log Settled(sid=sid, records_hash=records_hash, minted=0, burned=burned, commission=0)


@external
def settleTrades(sid: bytes32, records_hash: bytes32, trades: DynArray[Trade, MAX_TRADES]):
    """
    @notice Settle matched market trades: WATT moves from seller to buyer, the
            buyer's escrowed EEA moves to the seller.
    """
    self._apply_once(sid)
    for t: Trade in trades:
        if t.wh > 0:
            take: uint256 = self._take_watt(sid, t.seller, t.wh)
            self.balanceOf[t.buyer] += take
            log IERC20.Transfer(sender=t.seller, receiver=t.buyer, value=take)
        self._move_eea(sid, t.buyer, t.seller, t.eea)
    log Settled(sid=sid, records_hash=records_hash, minted=0, burned=0, commission=0)


# ---- views for the gateway's reconciliation ------------------------------------------

@view
@external
def balancesOf(accounts: DynArray[address, MAX_VIEW]) -> (DynArray[uint256, MAX_VIEW], DynArray[uint256, MAX_VIEW]):
    """WATT balances and escrowed EEA of many accounts in one call."""
    watt: DynArray[uint256, MAX_VIEW] = []
    escrow: DynArray[uint256, MAX_VIEW] = []
    for a: address in accounts:
        watt.append(self.balanceOf[a])
        escrow.append(self.escrowOf[a])
    return watt, escrow
