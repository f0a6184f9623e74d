"""The scenario schema: pydantic models of what a run declares, and one-line errors.

A scenario declares everything a run needs: task and data split, the device
population and its links, the strategy and its hyperparameters, rounds and
deadline, the execution backend and where results go. This module is data
only: the composition root (`fedsim.scenario`) checks strategy and task names
against the installed plug-ins. A topology is the exception, because its spec
is the data strategies read: it is validated by the class its name registers
(`fedsim.core.plugins.topology_class`). Unknown keys are errors
everywhere, and every error names the field path and what is allowed.
"""

from __future__ import annotations

import types
import typing
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SerializeAsAny,
    ValidationError,
    ValidationInfo,
    WrapValidator,
    field_validator,
    model_validator,
)
from pydantic_core import PydanticCustomError

from fedsim.core.errors import ScenarioError
from fedsim.core.plugins import topology_class
from topologies import TopologySpec

MAX_ROUNDS = 10_000_000
"""Upper bound on rounds: a typo'd exponent fails at once instead of running for ever."""
NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$"
"""A run's name becomes a directory name: letters, digits, '.', '_', '-', at most 100, and
never a path (no '/', no leading '.'), so no run is written outside `output.dir`."""
MAX_CLIENTS = 1_000_000
"""Upper bound on clients.count (every device gets its own state and random streams)."""


class Spec(BaseModel):
    """Base of every scenario section: unknown keys are errors."""

    model_config = ConfigDict(extra="forbid", frozen=True)


# ---------------------------------------------------------------- devices


class LogNormal(Spec):
    """Log-normal values: `median` and `sigma` of the underlying normal."""

    dist: Literal["lognormal"]
    median: float = Field(gt=0)
    sigma: float = Field(ge=0)


class Uniform(Spec):
    dist: Literal["uniform"]
    low: float = Field(gt=0)
    high: float = Field(gt=0)

    @model_validator(mode="after")
    def _ordered(self) -> Uniform:
        if self.high < self.low:
            raise ValueError(f"high ({self.high}) must be >= low ({self.low})")
        return self


Distribution = Annotated[LogNormal | Uniform, Field(discriminator="dist")]


class AlwaysOn(Spec):
    kind: Literal["always"] = "always"


class LabelCorrelation(Spec):
    """FedAU's heterogeneous, data-correlated participation (Wang & Ji, ICLR 2024).

    One vector m ~ Dir(alpha 1_L) is drawn over the L labels, and device n gets
    p_n = min(1, max(p_min, L p sum_l q_nl m_l)), where q_n is the label
    distribution of its training data and p the availability's `p`. Devices
    holding favoured labels are online more often; the mean stays about p.
    """

    alpha: float = Field(default=0.1, gt=0, description="Dirichlet concentration of m")
    p_min: float = Field(default=0.02, gt=0, le=1, description="floor of every p_n")


class _PerDeviceP(Spec):
    """Per-device probabilities in place of the one `p` of a tier."""

    p_per_device: list[float] | None = Field(
        default=None, description="one p per device of the tier, in partition-id order; "
        "replaces p")
    label_correlation: LabelCorrelation | None = Field(
        default=None, description="p_n from each device's labels; p is their mean")

    @model_validator(mode="after")
    def _valid_per_device(self) -> _PerDeviceP:
        if self.p_per_device is not None and self.label_correlation is not None:
            raise ValueError("give p_per_device or label_correlation, not both")
        zero_ok = isinstance(self, BernoulliAvailability)  # the chains need p > 0
        for p in self.p_per_device or ():
            if not (0 <= p <= 1 and (zero_ok or p > 0)):
                bound = "in [0, 1]" if zero_ok else "in (0, 1]"
                raise ValueError(f"p_per_device: every p must be {bound}, got {p}")
        return self


class BernoulliAvailability(_PerDeviceP):
    """Available in each round independently with probability `p`."""

    kind: Literal["bernoulli"]
    p: float = Field(ge=0, le=1)


class MarkovAvailability(_PerDeviceP):
    """Two-state on/off chain with stationary on-probability `p` (FedAU's model).

    P(off->on) = q and P(on->off) = q (1/p - 1); both are scaled down together
    when the latter would exceed 1. The first round's state is Bernoulli(p).
    """

    kind: Literal["markov"]
    p: float = Field(gt=0, le=1)
    q: float = Field(gt=0, le=1)


class CyclicAvailability(_PerDeviceP):
    """On for a = max(1, round(period p)) rounds, then off for max(1, period - a) (FedAU's model).

    Every device starts off, `phase` rounds into its cycle: random per device in
    [0, off rounds) by default, or the same for all (`phase: 0` puts a device of
    period r >= 2, p = 1/r online exactly in rounds t = r, 2r, ... counted from 1).
    """

    kind: Literal["cyclic"]
    period: int = Field(ge=1)
    p: float = Field(gt=0, le=1)
    phase: int | None = Field(default=None, ge=0, description="None: random per device")


Availability = Annotated[
    AlwaysOn | BernoulliAvailability | MarkovAvailability | CyclicAvailability,
    Field(discriminator="kind"),
]


class NoStraggling(Spec):
    kind: Literal["none"] = "none"


class IidStraggling(Spec):
    """Each job is slowed by `slowdown` with probability `p`, independently."""

    kind: Literal["iid"]
    p: float = Field(ge=0, le=1)
    slowdown: float = Field(ge=1)


class GilbertElliottStraggling(Spec):
    """Bursty slowdowns: a per-device good/bad chain stepped once per round."""

    kind: Literal["gilbert_elliott"]
    p_enter: float = Field(ge=0, le=1, description="P(good -> bad) per round")
    p_exit: float = Field(gt=0, le=1, description="P(bad -> good) per round")
    slowdown: float = Field(ge=1)


class BurstyStraggling(Spec):
    """The (B, W, λ)-bursty model of sequential gradient coding (Krishnan et al., ICLR 2023).

    In every window of W rounds at most λ distinct devices (of this tier) straggle, each in one
    burst of at most B consecutive rounds. The pattern is drawn once per tier from the seed,
    round by round (`fedsim.engine.stragglers.sample_bursty_pattern`): a device
    proposes to straggle with `continue_prob` after a straggling round, else `start_prob`, and
    the proposal is kept only if the pattern still conforms. Every job of a straggling device in
    that round is slowed by `slowdown`.
    """

    kind: Literal["bursty"]
    B: int = Field(ge=1, description="longest burst, in rounds")
    W: int = Field(ge=1, description="window length, in rounds")
    lam: int = Field(ge=0, description="most distinct stragglers in any window of W rounds")
    slowdown: float = Field(ge=1)
    start_prob: float = Field(default=0.2, ge=0, le=1)
    continue_prob: float = Field(default=0.8, ge=0, le=1)

    @model_validator(mode="after")
    def _burst_fits_window(self) -> BurstyStraggling:
        if self.B > self.W:
            raise ValueError(f"B ({self.B}) must be <= W ({self.W})")
        return self


Straggling = Annotated[
    NoStraggling | IidStraggling | GilbertElliottStraggling | BurstyStraggling,
    Field(discriminator="kind"),
]


class LinkSpec(Spec):
    """One direction of a link. `bandwidth_mbps: null` means unlimited."""

    bandwidth_mbps: float | None = Field(default=None, gt=0)
    latency_s: float = Field(default=0.0, ge=0)
    noise_sigma: float = Field(default=0.0, ge=0, description="std of additive Gaussian noise")
    erasure_p: float = Field(default=0.0, ge=0, le=1, description="probability a message is lost")
    shared: bool = Field(default=False, description="uplink only: one cell whose bandwidth is "
                         "divided equally among the uploads in flight")

    @model_validator(mode="after")
    def _shared_needs_bandwidth(self) -> LinkSpec:
        if self.shared and self.bandwidth_mbps is None:
            raise ValueError("shared: a shared cell needs its bandwidth_mbps (unlimited "
                             "bandwidth has nothing to share)")
        return self


NETWORK_PRESETS: dict[str, dict[str, dict[str, Any]]] = {
    "ethernet": {"uplink": {"bandwidth_mbps": 100.0, "latency_s": 0.001},
                 "downlink": {"bandwidth_mbps": 100.0, "latency_s": 0.001}},
    "wifi": {"uplink": {"bandwidth_mbps": 53.4, "latency_s": 0.005},
             "downlink": {"bandwidth_mbps": 100.0, "latency_s": 0.005}},
    "5g": {"uplink": {"bandwidth_mbps": 30.0, "latency_s": 0.010, "shared": True},
           "downlink": {"bandwidth_mbps": 100.0, "latency_s": 0.010}},
}
"""Links of Raspberry Pis measured in "Federated Learning over 5G, WiFi, and Ethernet:
Measurements and Evaluation" (Hayek et al., arXiv:2504.04678). The paper reports ratios,
not one bandwidth per interface: on its 5G-NR SA cell an upload took 33.3x as long as
over Ethernet and 17.8x as long as over WiFi, with all devices uploading at once. Chosen
absolute values: Ethernet 100 Mbps (Fast Ethernet, what a Pi sustains through a typical
switch); WiFi uplink 100 x 17.8 / 33.3 = 53.4 Mbps, so that the two ratios hold; a 5G cell
uplink of 30 Mbps *shared* by the uploads in flight (an SDR small cell's uplink is tens of
Mbps), so that ten simultaneous uploads get 3 Mbps each, 1/33.3 of Ethernet's. Downlinks are
not the bottleneck the paper measured: 100 Mbps, not shared. Latencies are typical one-way
delays (1, 5, 10 ms), not figures from the paper."""

Preset = Literal["ethernet", "wifi", "5g"]


def _with_preset(data: Any) -> Any:
    """A mapping with `preset` gets the preset's uplink and downlink, under its own keys."""
    if not isinstance(data, dict) or data.get("preset") not in NETWORK_PRESETS:
        return data
    links = NETWORK_PRESETS[data["preset"]]
    merged = dict(data)
    for key in ("uplink", "downlink"):
        given = data.get(key)
        if given is None or isinstance(given, dict):
            merged[key] = {**links[key], **(given or {})}
    return merged


class ChannelSpec(Spec):
    """The links every device uses unless its tier has its own. `preset` fills both from
    measurements (`NETWORK_PRESETS`); keys given beside it win."""

    uplink: LinkSpec = LinkSpec()
    downlink: LinkSpec = LinkSpec()
    preset: Preset | None = None

    @model_validator(mode="before")
    @classmethod
    def _preset_links(cls, data: Any) -> Any:
        return _with_preset(data)

    @model_validator(mode="after")
    def _downlink_not_shared(self) -> ChannelSpec:
        if self.downlink.shared:
            raise PydanticCustomError("shared", "downlink.shared: sharing applies to an "
                                      "uplink only; remove it")
        return self


class ActorResources(Spec):
    """What one Ray actor asks of the cluster. An actor runs one job at a time, so
    `num_gpus: 0.25` lets at most four jobs share a GPU; an actor that asks for no GPU
    computes on the CPU and sees no GPU."""

    num_cpus: float = Field(default=1.0, gt=0)
    num_gpus: float = Field(default=0.0, ge=0, description="a fraction below 1 shares a GPU")
    memory: int | None = Field(default=None, gt=0, description="bytes Ray reserves per actor")

    @field_validator("num_gpus")
    @classmethod
    def _ray_gpu_amount(cls, num_gpus: float) -> float:
        if num_gpus > 1 and num_gpus != int(num_gpus):
            raise ValueError("Ray takes a fraction of one GPU or whole GPUs (0.25, 1, 2...)")
        return num_gpus


DEFAULT_SPEED = 1000.0
"""Samples per second of a tier that gives no compute."""

DEVICE_CLASSES: dict[str, dict[str, float]] = {
    "phone_low": {"flops": 2e9, "memory_bytes": 2 * 2**30},
    "phone_high": {"flops": 20e9, "memory_bytes": 8 * 2**30},
    "raspberry_pi_4": {"flops": 5e9, "memory_bytes": 4 * 2**30},
    "jetson_nano": {"flops": 50e9, "memory_bytes": 4 * 2**30},
    "laptop": {"flops": 100e9, "memory_bytes": 16 * 2**30},
}
"""Named devices: FLOP/s *sustained* by small-batch fp32 training on the CPU (or the Jetson's
GPU), an order of magnitude below the chips' peak, and the RAM a training process may use.
Round figures for planning, not measurements: give `flops` and `memory_bytes` for yours."""


class DeviceTier(Spec):
    """A kind of device and the share of the population that has it.

    Compute: `speed` in samples per second whatever the model, or `flops` (FLOP/s) or a
    `device_class`: a job's compute time is then the task model's training FLOPs per
    sample (3x its forward pass, counted once) times the samples, over `flops`. A model
    whose training needs more than `memory_bytes` is refused when the run is built."""

    name: str = "device"
    share: float = Field(default=1.0, gt=0)
    speed: float | Distribution | None = Field(
        default=None, description="samples per second (null: 1000, unless flops or "
        "device_class gives the compute)")
    flops: float | Distribution | None = Field(default=None, description="FLOP/s; replaces "
                                               "speed")
    memory_bytes: float | None = Field(default=None, gt=0, description="memory a training "
                                       "process may use")
    device_class: Literal[tuple(DEVICE_CLASSES)] | None = Field(  # type: ignore[valid-type]
        default=None, description="flops and memory_bytes of a named device")
    preset: Preset | None = Field(default=None, description="this tier's uplink and downlink "
                                  "from `NETWORK_PRESETS`")
    availability: Availability = AlwaysOn()
    straggling: Straggling = NoStraggling()
    dropout_p: float = Field(default=0.0, ge=0, le=1, description="P(job abandoned midway)")
    uplink: LinkSpec | None = None
    downlink: LinkSpec | None = None
    actor_resources: ActorResources | None = Field(
        default=None, description="Ray: this tier's jobs run on actors of their own that ask "
        "for these resources (a GPU tier beside CPU phones); null: the backend's actors")
    num_actors: int | None = Field(default=None, ge=1, le=100_000, description="actors of this "
                                   "tier's own kind (null: its share of the cluster)")

    @model_validator(mode="before")
    @classmethod
    def _preset_links(cls, data: Any) -> Any:
        return _with_preset(data)

    @model_validator(mode="after")
    def _positive_speed(self) -> DeviceTier:
        if isinstance(self.speed, int | float) and self.speed <= 0:
            raise ValueError(f"speed must be > 0 samples/s, got {self.speed}")
        if isinstance(self.flops, int | float) and self.flops <= 0:
            raise ValueError(f"flops must be > 0 FLOP/s, got {self.flops}")
        rules = [k for k in ("speed", "flops", "device_class") if getattr(self, k) is not None]
        if len(rules) > 1:
            raise PydanticCustomError("compute", "give one of speed, flops, device_class "
                                      "(got {given})", {"given": ", ".join(rules)})
        if self.downlink is not None and self.downlink.shared:
            raise PydanticCustomError("shared", "downlink.shared: sharing applies to an "
                                      "uplink only; remove it")
        return self

    @property
    def samples_per_s(self) -> float | LogNormal | Uniform:
        """This tier's speed when it is given in samples per second."""
        return DEFAULT_SPEED if self.speed is None else self.speed

    @property
    def compute_flops(self) -> float | LogNormal | Uniform | None:
        """FLOP/s of this tier's devices, or None when `speed` (samples/s) rules."""
        if self.device_class is not None:
            return DEVICE_CLASSES[self.device_class]["flops"]
        return self.flops

    @property
    def memory_limit(self) -> float | None:
        if self.device_class is not None and self.memory_bytes is None:
            return DEVICE_CLASSES[self.device_class]["memory_bytes"]
        return self.memory_bytes


MAX_TRACE_DEVICES = 1_000_000


class TraceSpec(Spec):
    """Devices replayed from a trace file (`fedsim.traces`: the plain JSONL format, or a
    deployed run's directory): `sample` of them drawn with `seed`."""

    path: Path = Field(description="a .jsonl trace, or a deployed run's directory")
    sample: int | None = Field(default=None, ge=1, le=MAX_TRACE_DEVICES,
                               description="devices drawn from the trace (null: clients.count)")
    seed: int | None = Field(default=None, ge=0, lt=2**63,
                             description="seed of the draw (null: the scenario's)")


class ClientsSpec(Spec):
    """`count` devices: `trace.sample` of them from the trace, the rest from the tiers."""

    count: int = Field(ge=1, le=MAX_CLIENTS)
    devices: list[DeviceTier] = Field(default_factory=lambda: [DeviceTier()], min_length=1)
    trace: TraceSpec | None = None

    @property
    def traced(self) -> int:
        """How many of the devices come from the trace."""
        if self.trace is None:
            return 0
        return self.count if self.trace.sample is None else self.trace.sample

    @model_validator(mode="after")
    def _sample_fits(self) -> ClientsSpec:
        if self.traced > self.count:
            raise PydanticCustomError(
                "trace", "trace.sample: {sample} devices drawn from the trace, more than "
                "count ({count}); lower it or raise count", {"sample": self.traced,
                                                             "count": self.count})
        return self


# ---------------------------------------------------------------- task, training


PARTITIONERS = ("iid", "dirichlet", "shards", "inner_dirichlet", "pathological", "natural_id",
                "linear", "square", "exponential")
"""flwr-datasets' partitioners by name (`fedsim.engine.tasks.partition` maps them to classes)."""


class PartitionSpec(Spec):
    """How the training set is split over clients: one of flwr-datasets' partitioners.

    `dirichlet` is flwr-datasets' DirichletPartitioner: for each label, the
    shares of the clients are drawn from Dir(alpha) (sizes differ per client).
    `alpha` also serves `inner_dirichlet`; every other constructor argument of the
    partitioner (`partition_by`, `num_classes_per_partition`, `partition_sizes`, ...)
    goes in `params`. Tasks that generate their data say which kinds they take.
    """

    kind: Literal[PARTITIONERS] = "iid"  # type: ignore[valid-type]
    alpha: float = Field(default=0.5, gt=0)
    shards_per_client: int = Field(default=2, ge=1)
    min_partition_size: int = Field(default=2, ge=0)
    params: dict[str, Any] = Field(default_factory=dict, description="the partitioner's other "
                                   "constructor arguments")


class TaskSpec(Spec):
    name: str = "digits"
    model: str | None = None
    partition: PartitionSpec = PartitionSpec()
    validation_share: float = Field(
        default=0.1, ge=0, lt=1, description="share of the training data the server holds "
        "out as its validation set, for tasks that hold one out (`Task.validation_data`)")
    params: dict[str, Any] = Field(default_factory=dict)


class TrainingSpec(Spec):
    """Local training hyperparameters sent to clients in every train message."""

    lr: float = Field(default=0.05, gt=0)
    local_epochs: int = Field(default=1, ge=0, le=100_000)
    local_steps: int = Field(default=0, ge=0, le=100_000_000,
                             description="if > 0, overrides local_epochs")
    batch_size: int = Field(default=32, ge=1)
    momentum: float = Field(default=0.0, ge=0, lt=1)
    weight_decay: float = Field(default=0.0, ge=0)


class StrategySpec(Spec):
    name: str = "fedavg"
    params: dict[str, Any] = Field(default_factory=dict)


class ClientModsSpec(Spec):
    """Flower mods (`package.module:function`, from installed packages) around the ClientApp's
    handlers, outermost first: `train` wraps every train message (whichever strategy action
    handles it), `evaluate` every evaluate message. Client-side DP needs its clipping mod here,
    e.g. `train: [flwr.clientapp.mod:fixedclipping_mod]`."""

    train: tuple[str, ...] = ()
    evaluate: tuple[str, ...] = ()


class RuntimeEnvSpec(Spec):
    """What Ray ships to every actor of the run, so that the nodes of a cluster need only
    Ray and Python (docs/cluster.md)."""

    working_dir: str | None = Field(default=None, description="a local directory (or a URI): "
                                    "the actors' current directory, for data files")
    py_modules: tuple[str, ...] = Field(default=(), description="installed distributions to "
                                        "ship by name (fedsim, your plug-ins' package)")
    pip: tuple[str, ...] = Field(default=(), description="requirements each node installs")


class BackendSpec(Spec):
    kind: Literal["ray", "inline"] = "ray"
    num_actors: int | None = Field(default=None, ge=1, le=100_000,
                                   description="default: as many as the cluster's resources hold")
    address: str | None = Field(default=None, description="join this Ray cluster")
    device: str = Field(default="cpu", pattern=r"^(cpu|auto|cuda(:[0-9]+)?)$",
                        description="cpu | cuda | cuda:N | auto (cuda where actors have a GPU)")
    actor_resources: ActorResources = Field(
        default=ActorResources(), description="what each actor asks of Ray (default: 1 CPU, "
        "and 1 GPU when device is cuda)")
    runtime_env: RuntimeEnvSpec | None = None
    vectorize: int = Field(
        default=0, ge=0, le=10_000, description="train the clients of a round in groups of "
        "this many, G consecutive in sample order, as one batched computation (0: one client "
        "at a time); default train action (FedAvg, FedProx...) and stateless clients only")


class EvaluationSpec(Spec):
    centralized_every: int = Field(default=1, ge=0, description="0 = never")
    federated_every: int = Field(
        default=1, ge=0, description="federated evaluation every k rounds (0 = never); how many "
                                     "nodes evaluate is the strategy's fraction_evaluate")


class MlflowSpec(Spec):
    tracking_uri: str = Field(description="where MLflow keeps runs, e.g. a folder "
                              "(`file:./mlruns`) or a tracking server's http(s) URL")
    experiment: str = "fedsim"


class OutputSpec(Spec):
    dir: Path = Path("runs")
    plots: bool = True
    timeline_nodes: int = Field(
        default=32, ge=0, le=10_000, description="devices whose events timeline.json and "
        "timeline.png show (0: no timeline); sampled evenly within each tier when there are more")
    tensorboard: bool = Field(default=False, description="log every round's metrics and the "
                              "scenario to RUN_DIR/tensorboard (needs `tensorboard`)")
    mlflow: MlflowSpec | None = Field(default=None, description="log every round's metrics "
                                      "and the scenario to MLflow (needs `mlflow-skinny`)")


class CheckpointSpec(Spec):
    """Save what resuming needs every `every` rounds (0 = never); `fedsim run --resume DIR`."""

    every: int = Field(default=0, ge=0, le=MAX_ROUNDS, description="rounds between checkpoints")


class DeploySpec(Spec):
    """How the same run behaves on real devices (`flwr run`), where time is wall-clock time."""

    reply_timeout_s: float | None = Field(
        default=None, gt=0, description="wall-clock seconds the server waits for replies in a "
        "round (null: wait for every node); `deadline_s` is virtual time and is not used here")


class AppWorkSpec(Spec):
    """How much a job of a foreign app computed, in samples: its virtual compute time is that
    divided by the device's speed. The app's replies carry `num-examples` (Flower's
    strategies weigh by it) but not how often each example was seen."""

    metric: str | None = Field(
        default=None, description="a reply metric that holds the samples a job processed")
    epochs_key: str | None = Field(
        default=None, description="the app.run_config key of the local epochs: a train job's "
        "work is num-examples x that value (default: one epoch)")

    @model_validator(mode="after")
    def _one_rule(self) -> AppWorkSpec:
        if self.metric is not None and self.epochs_key is not None:
            raise ValueError("give metric or epochs_key, not both")
        return self


class AppSpec(Spec):
    """A Flower app nobody wrote for fedsim: its ServerApp runs on the simulated grid, its
    ClientApp on the simulated devices (`node_config` partition-id/num-partitions, as on a
    SuperNode). Both come from installed packages only (`fedsim.core.imports`)."""

    server: str = Field(description="'package.module:attribute' of a flwr ServerApp")
    client: str = Field(description="'package.module:attribute' of a flwr ClientApp")
    run_config: dict[str, int | float | str | bool] = Field(
        default_factory=dict, description="the app's run config (what `flwr run -c` sets)")
    work: AppWorkSpec = AppWorkSpec()


APP_DECIDES = ("task", "training", "strategy", "client_mods", "topology", "evaluation",
               "checkpoint", "deploy")
"""Sections a scenario with an `app` leaves out: the app's own code decides them."""


def _topology(value: Any, handler: Any, info: ValidationInfo) -> TopologySpec:
    """A topology mapping validated by the class its `name` registers; its one-line error
    (`topology.FIELD: ...`) is kept whole."""
    if isinstance(value, TopologySpec):
        return value
    if not isinstance(value, dict):
        raise PydanticCustomError("plugin", "{line}", {"line": "name: expected a mapping "
                                                       "such as {name: ring}"})
    try:
        spec = topology_class(value.get("name"))
        return spec.model_validate(value, context=info.context)
    except ScenarioError as exc:  # no such topology, or it failed to load
        line = str(exc)
    except ValidationError as exc:
        line = describe_error(exc, spec)
    raise PydanticCustomError("plugin", "{line}", {"line": line})


class Scenario(Spec):
    name: str = Field(pattern=NAME_PATTERN, description="letters, digits, '.', '_', '-'")
    seed: int = Field(default=0, ge=0, lt=2**63)
    app: AppSpec | None = Field(default=None, description="run this Flower app instead of a "
                                "task and strategy")
    rounds: int | None = Field(default=None, ge=1, le=MAX_ROUNDS, validate_default=True,
                               description="required unless `app` is given (the app decides)")
    deadline_s: float | None = Field(default=None, gt=0, description="virtual seconds per round")
    task: TaskSpec = TaskSpec()
    training: TrainingSpec = TrainingSpec()
    clients: ClientsSpec
    channel: ChannelSpec = ChannelSpec()
    strategy: StrategySpec = StrategySpec()
    client_mods: ClientModsSpec = ClientModsSpec()
    backend: BackendSpec = BackendSpec()
    evaluation: EvaluationSpec = EvaluationSpec()
    output: OutputSpec = OutputSpec()
    topology: Annotated[SerializeAsAny[TopologySpec], WrapValidator(_topology)] | None = Field(
        default=None, description="for decentralized strategies; `fedsim topologies` lists them")
    checkpoint: CheckpointSpec = CheckpointSpec()
    deploy: DeploySpec = DeploySpec()

    @property
    def algorithm(self) -> str:
        """What runs: the strategy's name, or the app's ServerApp reference."""
        return self.strategy.name if self.app is None else self.app.server

    @field_validator("rounds")
    @classmethod
    def _rounds_unless_app(cls, rounds: int | None, info: ValidationInfo) -> int | None:
        if rounds is None and "app" in info.data and info.data["app"] is None:
            raise PydanticCustomError("missing", "Field required")
        return rounds

    @model_validator(mode="after")
    def _app_decides(self) -> Scenario:
        if self.app is None:
            return self
        given = [key for key in ("rounds", *APP_DECIDES) if key in self.model_fields_set]
        if given:
            raise PydanticCustomError(
                "app_decides", "the app's own code decides this (its rounds and "
                "hyperparameters go in app.run_config); remove {field}, or remove app",
                {"field": given[0]})
        return self


def scenario_to_dict(scenario: Scenario) -> dict[str, Any]:
    return scenario.model_dump(mode="json")


# ---------------------------------------------------------------- errors


def _allowed_keys(model: type[BaseModel], loc: tuple[int | str, ...]) -> list[str] | None:
    """Field names allowed at `loc` (pydantic's error location), best effort."""
    node: Any = model
    for part in loc:
        node = _descend(node, part)
        if node is None:
            return None
    node = _unwrap(node, None)
    if isinstance(node, type) and issubclass(node, BaseModel):
        return list(node.model_fields)
    return None


def _unwrap(tp: Any, tag: int | str | None) -> Any:
    """Strip Annotated/Optional; pick the union member whose discriminator is `tag`."""
    while typing.get_origin(tp) is Annotated:
        tp = typing.get_args(tp)[0]
    args = typing.get_args(tp)
    if args and typing.get_origin(tp) in (typing.Union, types.UnionType):
        models = [a for a in args if isinstance(a, type) and issubclass(a, BaseModel)]
        for member in models:
            for field in member.model_fields.values():
                literal = typing.get_args(field.annotation)
                if typing.get_origin(field.annotation) is Literal and tag in literal:
                    return member
        return models[0] if len(models) == 1 else None
    return tp


def _is_tag(node: Any, part: int | str) -> bool:
    """Whether `part` is the discriminator tag pydantic puts in the location of a tagged
    union's error (`bernoulli` in `availability.bernoulli.p`): not a key the user wrote."""
    while typing.get_origin(node) is Annotated:
        node = typing.get_args(node)[0]
    if typing.get_origin(node) not in (typing.Union, types.UnionType):
        return False
    member = _unwrap(node, part)
    return (isinstance(member, type) and issubclass(member, BaseModel)
            and part not in member.model_fields)


def _user_path(model: type[BaseModel], loc: tuple[int | str, ...]) -> str:
    """The dotted path of `loc` as it is written in a scenario (and in `--set`)."""
    node: Any = model
    parts = []
    for part in loc:
        if node is None or not _is_tag(node, part):
            parts.append(str(part))
        node = None if node is None else _descend(node, part)
    return ".".join(parts)


def _descend(node: Any, part: int | str) -> Any:
    node = _unwrap(node, part)
    if isinstance(node, type) and issubclass(node, BaseModel):
        if isinstance(part, str) and part in node.model_fields:
            return node.model_fields[part].annotation
        return node  # a discriminator tag in the location: stay on the member
    origin = typing.get_origin(node)
    if origin in (list, dict) and typing.get_args(node):
        return typing.get_args(node)[-1]
    return None


def describe_error(exc: ValidationError, model: type[BaseModel], prefix: str = "") -> str:
    """One line for a pydantic error: field path, what is wrong, what is allowed."""
    errors = exc.errors()
    err = errors[0]
    # a check of a whole model names the field it is about in its context
    loc = tuple(err["loc"]) or tuple(filter(None, [err.get("ctx", {}).get("field")]))
    path = prefix + _user_path(model, loc) if loc else prefix.rstrip(".") or "(top level)"
    if err["type"] == "plugin":  # a plug-in's own one-line error, below `path`
        line = f"{path}.{err['ctx']['line']}"
    elif err["type"] == "extra_forbidden":
        allowed = _allowed_keys(model, loc[:-1])
        hint = f" (allowed: {', '.join(allowed)})" if allowed else ""
        line = f"{path}: unknown key{hint}"
    elif err["type"] == "missing":
        line = f"{path}: required field is missing"
    else:
        got = err.get("input")
        shown = f" (got {got!r})" if not isinstance(got, dict | list) else ""
        line = f"{path}: {err['msg']}{shown}"
    if len(errors) > 1:
        line += f" [and {len(errors) - 1} more problem(s)]"
    return line
