"""The community's peer-to-peer energy market (whitepaper 7.2–7.3).

book.py       the order book: price-time priority, unexecutable asks, B_max, EEA cover
journal.py    its tables and journal (a restart rebuilds the exact same book)
exchange.py   the book on the gateway store; market_buy_for_session for charging
settlement.py trades settled per interval in batches through the ledger outbox
agents.py     zero-intelligence agents at users' target prices
sizing.py     the whitepaper's storage table and B_max
commands.py   `egs-gw market …`;  service.py  its part of `egs-gw run`

Kept free of imports so `import gateway.market` costs nothing; the central system
uses `from gateway.market.exchange import market_buy_for_session`.
"""
