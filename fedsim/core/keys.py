"""Names of message entries that the strategies, the clients and the grids agree on."""

WORK_KEY = "work-samples"
"""Reply metric: samples the client processed (forward + backward), for compute time."""
COMPUTE_S_KEY = "compute-s"
"""Reply metric of a deployed run: wall-clock seconds the client's handler computed."""

# Error codes of replies a simulated grid makes up for what the simulated world did to a
# message. They are distinct from Flower's `ErrorCode.CLIENT_APP_RAISED_EXCEPTION` (the
# client's own code raised) so that a strategy or a report can tell a lossy link from a bug.
LOST_ON_DOWNLINK = 1001
"""The server's message was erased on the downlink."""
LOST_ON_UPLINK = 1002
"""The client's reply was erased on the uplink."""
DROPPED_OUT = 1003
"""The device went away mid-job."""
SIMULATED_LOSSES = frozenset({LOST_ON_DOWNLINK, LOST_ON_UPLINK, DROPPED_OUT})
