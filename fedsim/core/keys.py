"""Names of message entries that the strategies, the clients and the grids agree on."""

WORK_KEY = "work-samples"
"""Reply metric: samples the client processed (forward + backward), for compute time."""
