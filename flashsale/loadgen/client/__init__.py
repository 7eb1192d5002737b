"""The generator's protocol clients: HTTP/1.1, websocket, the Socket.IO subset, the event loop.

Written for the hot path of thousands of customers (benchmarks/RESULTS.md section 3); nothing
here knows about the sale.
"""
