"""Run by tests/test_cluster.py in a subprocess (a process joins one Ray cluster only).

Starts a Ray cluster of two raylets on this machine (`ray.cluster_utils.Cluster`, one CPU
each), then, after joining it, makes the plug-in distribution in SITE importable and
registered for this driver only: the nodes' workers get it only through the scenario's
`backend.runtime_env.py_modules`. Runs the scenario JSON in argv on the cluster, and the
same scenario inline with STRATEGY_INLINE, and prints one JSON line with both results and
the cluster's node ids.

    python tests/two_raylets.py SITE SCENARIO_JSON STRATEGY_INLINE
"""

from __future__ import annotations

import json
import sys


def main(site: str, scenario_json: str, strategy_inline: str) -> None:
    import ray
    from ray.cluster_utils import Cluster

    cluster = Cluster(initialize_head=True,
                      head_node_args={"num_cpus": 1, "include_dashboard": False})
    cluster.add_node(num_cpus=1)
    cluster.wait_for_nodes()
    ray.init(address=cluster.address, log_to_driver=False)
    sys.path.append(site)  # after joining: Ray passes the driver's path on at ray.init

    from fedsim.core.codec import flatten
    from fedsim.runner import simulate
    from fedsim.scenario import parse_scenario

    data = json.loads(scenario_json)
    data["backend"] = {**data["backend"], "address": cluster.address}
    on_cluster = simulate(parse_scenario(data))
    data["backend"] = {"kind": "inline"}
    data["strategy"] = {**data["strategy"], "name": strategy_inline}
    inline = simulate(parse_scenario(data))
    out = {"nodes": sorted(n["NodeID"] for n in ray.nodes() if n["Alive"])}
    for name, result in (("cluster", on_cluster), ("inline", inline)):
        out[name] = {"records": [{k: v for k, v in r.items() if k != "wall_time_s"}
                                 for r in result.records],
                     "summary": result.summary,
                     "model": flatten(result.arrays).tolist()}
    ray.shutdown()
    cluster.shutdown()
    print("RESULT " + json.dumps(out))


if __name__ == "__main__":
    main(*sys.argv[1:4])
