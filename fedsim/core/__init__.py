"""The small core every layer above may import: message keys, seeding, the array codec
and training helpers, the clock protocol, the task interface and the scenario schema.

It imports nothing of the project but `topologies` (the schema names a topology).
"""
