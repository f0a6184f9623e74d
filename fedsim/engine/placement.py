"""Which workers a run gets: kinds of actors, how many of each, and what each computes on.

A kind of actor is what the backend asks of Ray for each actor (`backend.actor_resources`),
or what a device tier asks for its own (`clients.devices[*].actor_resources`): a tier of
big devices on GPU actors beside phones on CPU actors, which Flower's simulation (one
resource request for every client) cannot express. A tier's jobs go to its kind's actors
only. An actor that asks for a GPU computes on `backend.device`; one that asks for none
computes on the CPU (and Ray hides the GPUs from it), so client actors never oversubscribe
a GPU: `num_gpus: 0.25` is at most four jobs on a GPU at once.

How many actors of a kind: `num_actors` where the scenario says, else as many as the
cluster's resources hold, shared evenly between the kinds that need the same resource,
the smallest kind first (what its members do not need goes to the others); the cluster's
totals count, not what other jobs on a shared cluster hold at the moment. A request that
no node, or not the whole cluster, can hold is an error naming its field: Ray would
otherwise wait for ever for room. Results do not depend on any of this: every job seeds
torch with its own key.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from fedsim.core.errors import ScenarioError
from fedsim.core.schema import ActorResources, BackendSpec, ClientsSpec
from fedsim.engine.devices import tier_assignment

RAY_NAMES = {"num_cpus": "CPU", "num_gpus": "GPU", "memory": "memory"}
"""Our resource fields and Ray's names for the same resources."""


@dataclass(frozen=True)
class ActorGroup:
    """Workers of one kind: the Ray options each actor gets, how many, the device they
    compute on, and the partitions whose jobs they run (None: every partition)."""

    num_workers: int
    options: dict[str, float] = field(default_factory=lambda: {"num_cpus": 1.0})
    device: str = "cpu"
    partitions: frozenset[int] | None = None
    name: str = "backend"  # "backend", or the device tier's name


@dataclass(frozen=True)
class Cluster:
    """A Ray cluster's resources and each live node's, in Ray's names."""

    total: dict[str, float]
    nodes: list[dict[str, float]]


@dataclass(frozen=True)
class _Kind:
    field: str  # the scenario field that asks for it, for errors
    name: str
    resources: ActorResources
    num_actors: int | None
    partitions: frozenset[int] | None


def plan_groups(backend: BackendSpec, clients: ClientsSpec, seed: int,
                cluster: Cluster | None, local_gpus: int) -> list[ActorGroup]:
    """The run's actor groups; a `ScenarioError` naming the field when they cannot be had.

    `cluster`: the Ray cluster joined or started (None: inline workers in this process);
    `local_gpus`: the CUDA devices torch sees here (what inline workers can use).
    """
    gpus = local_gpus if cluster is None else int(sum(n.get("GPU", 0) for n in cluster.nodes))
    device = resolve_device(backend, gpus, on_ray=cluster is not None)
    kinds = _kinds(backend, clients, seed, device)
    if device != "cpu" and not any(k.resources.num_gpus for k in kinds):
        raise ScenarioError(f"backend.device: {backend.device!r} computes on actors that ask "
                            "for a GPU, and none does; set backend.actor_resources.num_gpus "
                            "(1, or 0.25 for four actors per GPU)")
    if cluster is None:
        counts = [min(k.num_actors or 1, _size(k, clients)) for k in kinds]
    else:
        counts = _fit(kinds, clients, cluster)
    return [ActorGroup(n, _ray_options(k.resources),
                       device if k.resources.num_gpus else "cpu", k.partitions, k.name)
            for k, n in zip(kinds, counts, strict=True)]


def resolve_device(backend: BackendSpec, gpus: int, on_ray: bool) -> str:
    """`backend.device` with `auto` decided, given the GPUs of this machine (inline) or of
    the Ray cluster; a CUDA device where there is none is an error naming the field."""
    if backend.device == "auto":
        return "cuda" if gpus else "cpu"
    if backend.device == "cpu":
        return "cpu"
    where = "the Ray cluster" if on_ray else "this machine (torch sees no CUDA device)"
    if not gpus:
        raise ScenarioError(f"backend.device: {backend.device!r}, but {where} has no GPU; use "
                            "cpu or auto (see the README's CUDA install route)")
    index = int(backend.device.partition(":")[2] or 0)
    if on_ray and index:
        raise ScenarioError(f"backend.device: {backend.device!r} names a GPU of this process; "
                            "Ray gives each actor its own: use cuda with "
                            "backend.actor_resources.num_gpus")
    if index >= gpus:
        raise ScenarioError(f"backend.device: {backend.device!r}, but {where} has {gpus} "
                            f"GPU(s): cuda:0 to cuda:{gpus - 1}")
    return backend.device


def _kinds(backend: BackendSpec, clients: ClientsSpec, seed: int, device: str) -> list[_Kind]:
    """The backend's kind (for tiers without their own) and each tier's own, with members."""
    own = [t for t, tier in enumerate(clients.devices) if tier.actor_resources is not None]
    if not own:
        members: list[frozenset[int] | None] = [None]
    else:
        tier_of = tier_assignment(clients, seed)
        rest = np.flatnonzero(~np.isin(tier_of, own))
        members = [frozenset(rest.tolist()) if rest.size else frozenset()]
        members += [frozenset(np.flatnonzero(tier_of == t).tolist()) for t in own]
    resources = backend.actor_resources
    if "actor_resources" not in backend.model_fields_set and device != "cpu":
        resources = ActorResources(num_gpus=1)  # `device: cuda` alone: one actor per GPU
    kinds = [_Kind("backend.actor_resources", "backend", resources, backend.num_actors,
                   members[0])]
    for t, partitions in zip(own, members[1:], strict=True):
        tier = clients.devices[t]
        assert tier.actor_resources is not None
        kinds.append(_Kind(f"clients.devices.{t}.actor_resources", tier.name,
                           tier.actor_resources, tier.num_actors, partitions))
    return [k for k in kinds if k.partitions is None or k.partitions]


def _size(kind: _Kind, clients: ClientsSpec) -> int:
    return clients.count if kind.partitions is None else len(kind.partitions)


def _ray_options(resources: ActorResources) -> dict[str, float]:
    return {key: float(value) for key, value in resources.model_dump().items()
            if value is not None}


def _request(resources: ActorResources) -> dict[str, float]:
    """Per actor, in Ray's resource names, what it asks for (nothing for zero)."""
    return {RAY_NAMES[k]: v for k, v in _ray_options(resources).items() if v}


def _fit(kinds: list[_Kind], clients: ClientsSpec, cluster: Cluster) -> list[int]:
    """Actors per kind: as asked, else an even share of the cluster; checked against the
    cluster so that no actor waits for room that will never come."""
    left = dict(cluster.total)
    counts: list[int | None] = []
    for kind in kinds:
        request = _request(kind.resources)
        if not any(all(node.get(r, 0) >= v - 1e-9 for r, v in request.items())
                   for node in cluster.nodes):
            raise ScenarioError(f"{kind.field}: no node of the Ray cluster has {_show(request)} "
                                f"for one actor (nodes: {'; '.join(map(_show, cluster.nodes))})")
        counts.append(None if kind.num_actors is None
                      else min(kind.num_actors, _size(kind, clients)))
    for kind, count in zip(kinds, counts, strict=True):
        if count is not None:
            _take(left, kind, count)
    # the smallest kinds first: one its members cap leaves the rest to the larger ones
    open_kinds = sorted((i for i, c in enumerate(counts) if c is None),
                        key=lambda i: _size(kinds[i], clients))
    for n, i in enumerate(open_kinds):
        request = _request(kinds[i].resources)
        sharing = {r: sum(1 for j in open_kinds[n:] if r in _request(kinds[j].resources))
                   for r in request}
        fits = min(math.floor(left.get(r, 0) / sharing[r] / v + 1e-9)
                   for r, v in request.items())
        counts[i] = min(max(fits, 1), _size(kinds[i], clients))
        _take(left, kinds[i], counts[i])  # type: ignore[arg-type]
    return [int(c) for c in counts]  # type: ignore[arg-type]


def _take(left: dict[str, float], kind: _Kind, count: int) -> None:
    for r, v in _request(kind.resources).items():
        if left.get(r, 0) < count * v - 1e-9:
            field = kind.field.replace("actor_resources", "num_actors")
            raise ScenarioError(
                f"{field}: {count} actor(s) of {_show(_request(kind.resources))} need "
                f"{r} {count * v:g}, and the Ray cluster has {left.get(r, 0):g} left; ask for "
                "fewer actors or smaller ones")
        left[r] = left.get(r, 0) - count * v


def _show(resources: dict[str, float]) -> str:
    return ", ".join(f"{k} {v:g}" for k, v in sorted(resources.items())
                     if k in RAY_NAMES.values()) or "nothing"
