"""The simulator's grid services: virtual time, gossip over the simulated links, the
straggler counter, and the partition map SimGrid knows without sending anything."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from fedsim.core.clock import Clock
from fedsim.core.services import GossipReport, GridServices
from fedsim.engine.grid import SimGrid
from fedsim.engine.links import gossip_over_links
from topologies.mixing import OnMissing


class SimServices(GridServices):
    """`GridServices` of a SimGrid."""

    def __init__(self, grid: SimGrid) -> None:
        self.grid = grid
        self.partitions = grid.partition_map()

    def clock(self) -> Clock:
        return self.grid.clock()

    def gossip(self, X: np.ndarray, W: np.ndarray, active: np.ndarray, steps: int,
               round_: int, model_nbytes: int, on_missing: OnMissing = "renormalize",
               float_mask: np.ndarray | None = None) -> tuple[np.ndarray, GossipReport]:
        return gossip_over_links(self.grid, X, W, active, steps, round_, model_nbytes,
                                 on_missing, float_mask)

    def count_stragglers(self, message_ids: Sequence[str]) -> None:
        self.grid.count_stragglers(message_ids)
