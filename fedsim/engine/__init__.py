"""The simulator engine: SimGrid (virtual time), the client pool, devices, channel,
gossip links and the concrete tasks. It never imports the strategies or the
composition root.
"""
