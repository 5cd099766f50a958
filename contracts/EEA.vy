# pragma version ~=0.4.3
"""
@title EEA, the EGS ecosystem asset
@notice A plain ERC-20 whose whole supply, 700,000,000 EEA (18 decimals), is
        minted once in the constructor to the five holders the whitepaper names:
        30 % open issue, 35 % company, 20 % foundation, 10 % founding team,
        5 % contribution reward. There is no mint function, so the supply can
        never grow; there is no burn either, so it never shrinks.
"""
from ethereum.ercs import IERC20

implements: IERC20

name: public(constant(String[32])) = "EGS Ecosystem Asset"
symbol: public(constant(String[8])) = "EEA"
decimals: public(constant(uint8)) = 18

UNIT: constant(uint256) = 10 ** 18
SUPPLY: constant(uint256) = 700_000_000 * UNIT
OPEN_ISSUE: constant(uint256) = 210_000_000 * UNIT
COMPANY: constant(uint256) = 245_000_000 * UNIT
FOUNDATION: constant(uint256) = 140_000_000 * UNIT
FOUNDING_TEAM: constant(uint256) = 70_000_000 * UNIT
CONTRIBUTION: constant(uint256) = 35_000_000 * UNIT

balanceOf: public(HashMap[address, uint256])
allowance: public(HashMap[address, HashMap[address, uint256]])
totalSupply: public(uint256)


@deploy
def __init__(open_issue: address, company: address, foundation: address,
             founding_team: address, contribution: address):
    assert OPEN_ISSUE + COMPANY + FOUNDATION + FOUNDING_TEAM + CONTRIBUTION == SUPPLY
    self._grant(open_issue, OPEN_ISSUE)
    self._grant(company, COMPANY)
    self._grant(foundation, FOUNDATION)
    self._grant(founding_team, FOUNDING_TEAM)
    self._grant(contribution, CONTRIBUTION)
    self.totalSupply = SUPPLY


@internal
def _grant(holder: address, amount: uint256):
    assert holder != empty(address), "EEA: distribution address is zero"
    self.balanceOf[holder] += amount
    log IERC20.Transfer(sender=empty(address), receiver=holder, value=amount)


@internal
def _transfer(sender: address, receiver: address, amount: uint256):
    assert receiver != empty(address), "EEA: transfer to the zero address"
    have: uint256 = self.balanceOf[sender]
    assert have >= amount, "EEA: balance too low"
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
        assert allowed >= amount, "EEA: allowance too low"
        self.allowance[sender][msg.sender] = allowed - amount
    self._transfer(sender, receiver, amount)
    return True


@external
def approve(spender: address, amount: uint256) -> bool:
    self.allowance[msg.sender][spender] = amount
    log IERC20.Approval(owner=msg.sender, spender=spender, value=amount)
    return True
