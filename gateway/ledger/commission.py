"""The storage commission: what an account owes per interval, and how it is split.

Exactly the contract's arithmetic (contracts/WATT.vy `_split`), so the gateway's
book and the chain agree to the base unit:

  due         = stored_wh * rate // 1000        (rate: EEA base units per kWh per interval)
  education   = total * 10 // 100
  owners      = total * 80 // 100, each owner  owners * capacity // total_capacity
  network     = total - education - sum(owner shares)

The network pool takes its 10 % plus every rounding remainder (and the owners'
80 % when no storage is registered), so the shares always add up to `total`.
"""


def due(stored_wh, rate):
    return stored_wh * rate // 1000 if stored_wh > 0 and rate > 0 else 0


def split(total, owners, education_pool, network_pool):
    """[(address, amount)] for a charged total; `owners` is [(address, capacity_wh)]."""
    if total <= 0:
        return []
    education = total * 10 // 100
    owners_total = total * 80 // 100
    capacity = sum(c for _, c in owners if c > 0)
    out = []
    paid = 0
    if capacity > 0:
        for owner, cap in owners:
            share = owners_total * cap // capacity if cap > 0 else 0
            if share > 0:
                out.append((owner, share))
                paid += share
    if education > 0:
        out.append((education_pool, education))
    network = total - education - paid
    if network > 0:
        out.append((network_pool, network))
    return out
