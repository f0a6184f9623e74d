"""Every built-in Flower strategy, by name, with hyperparameters from its signature.

The parameter model of each strategy is derived from its constructor, so a
scenario can set any argument Flower documents and a typo is an error. The
node-count minimums default to 1 rather than Flower's 2: in a simulation,
nothing comes online while the server waits, so a stricter minimum can only
stall (the runner turns such a stall into an error naming the parameter).

A callable argument (`train_metrics_aggr_fn`, Bulyan's `selection_rule`, ...)
is given as `package.module:function` of an installed package, checked when
the scenario is read. Flower's differential-privacy wrappers wrap one of the
built-ins given under their `strategy` parameter (`{name, params}`, the same
shape as the scenario's own `strategy` section). The client-side wrappers
need Flower's clipping mod on the clients' train messages (`client_mods`).
"""

from __future__ import annotations

import collections.abc
import inspect
import types
import typing
from collections.abc import Callable
from typing import Annotated, Any, Literal

from flwr.clientapp import mod as flwr_mods
from flwr.serverapp import strategy as flwr_strategies
from flwr.serverapp.strategy import Strategy
from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    ValidationInfo,
    create_model,
    model_validator,
)
from pydantic_core import PydanticCustomError

from fedsim.core.errors import ScenarioError
from fedsim.core.imports import installed_object
from strategies import BuildContext, StrategyInfo

_BUILTINS = ("FedAvg", "FedProx", "FedAdam", "FedAdagrad", "FedYogi", "FedAvgM", "FedMedian",
             "FedTrimmedAvg", "Krum", "MultiKrum", "Bulyan", "QFedAvg")
# name -> (Flower's wrapper, the mod it needs on the clients' train messages, if any)
_DP_WRAPPERS = {
    "dp_fixed_clipping": ("DifferentialPrivacyServerSideFixedClipping", None),
    "dp_adaptive_clipping": ("DifferentialPrivacyServerSideAdaptiveClipping", None),
    "dp_client_fixed_clipping": ("DifferentialPrivacyClientSideFixedClipping",
                                 "fixedclipping_mod"),
    "dp_client_adaptive_clipping": ("DifferentialPrivacyClientSideAdaptiveClipping",
                                    "adaptiveclipping_mod"),
}
UNSUPPORTED = {
    name: "it aggregates XGBoost trees, and fedsim has no tree-based task (its tasks are "
          "torch models) nor xgboost among its dependencies"
    for name in ("FedXgbBagging", "FedXgbCyclic")
}
"""Flower's built-ins that fedsim cannot run, and why."""
_SIM_DEFAULTS = {"min_train_nodes": 1, "min_evaluate_nodes": 1, "min_available_nodes": 1}
_NOT_SETTABLE = ("accountant",)  # a PrivacyAccountant object: no scenario form for it yet


def _takes_callable(annotation: Any) -> bool:
    members = (typing.get_args(annotation)
               if typing.get_origin(annotation) in (typing.Union, types.UnionType)
               else (annotation,))
    return any(member is collections.abc.Callable
               or typing.get_origin(member) is collections.abc.Callable for member in members)


def _arguments(cls: type) -> list[inspect.Parameter]:
    return list(inspect.signature(cls.__init__, eval_str=True).parameters.values())[1:]


def _callable_fields(cls: type) -> tuple[str, ...]:
    return tuple(p.name for p in _arguments(cls) if _takes_callable(p.annotation))


def _installed_callable(ref: str, info: ValidationInfo) -> str:
    """Check, when the scenario is read, that `ref` names a callable of an installed package
    (the builder imports it again; the scenario keeps the reference, which is data)."""
    field = info.field_name or "reference"
    try:
        obj = installed_object(ref, field)
    except ScenarioError as exc:  # the path is prefixed by pydantic's location
        raise PydanticCustomError("reference", "{reason}",
                                  {"reason": str(exc).removeprefix(f"{field}: ")}) from None
    if not callable(obj):
        raise PydanticCustomError("reference", "{ref} is not callable", {"ref": repr(ref)})
    return ref


_Reference = Annotated[str, AfterValidator(_installed_callable)]


def _params_model(cls: type, **overrides: Any) -> type[BaseModel]:
    """A pydantic model of the constructor's arguments; a callable is a `module:attr` string;
    `overrides` replace arguments' (annotation, default)."""
    fields: dict[str, Any] = {}
    for p in _arguments(cls):
        if p.name in _NOT_SETTABLE:
            continue
        default = _SIM_DEFAULTS.get(p.name, p.default)
        annotation = _Reference | None if _takes_callable(p.annotation) else p.annotation
        fields[p.name] = overrides.get(
            p.name, (annotation, ... if default is inspect.Parameter.empty else default))
    return create_model(f"{cls.__name__}Params", __config__=ConfigDict(extra="forbid"), **fields)


def _summary(cls: type) -> str:
    return "Flower: " + (cls.__doc__ or cls.__name__).strip().splitlines()[0]


def _construct(cls: type, params: BaseModel, **extra: Any) -> Strategy:
    """`cls` built from validated params, its callable arguments imported."""
    kwargs = params.model_dump(exclude=set(extra))
    for name in _callable_fields(cls):
        if kwargs.get(name) is not None:
            kwargs[name] = installed_object(kwargs[name], name)
    return cls(**kwargs, **extra)


def _builder(cls: type) -> Callable[[BaseModel, BuildContext], Strategy]:
    def build(params: BaseModel, context: BuildContext) -> Strategy:
        return _construct(cls, params)

    return build


_INNER = {name.lower(): getattr(flwr_strategies, name) for name in _BUILTINS}
_INNER_PARAMS = {key: _params_model(cls) for key, cls in _INNER.items()}


def _inner_spec(key: str) -> type[BaseModel]:
    """`{name: key, params: ...}`: one member of the union a DP wrapper's `strategy` takes."""
    params = _INNER_PARAMS[key]
    required = any(f.is_required() for f in params.model_fields.values())
    return create_model(f"{params.__name__}Spec", __config__=ConfigDict(extra="forbid"),
                        name=(Literal[key], ...),
                        params=(params, ... if required else Field(default_factory=params)))


_INNER_SPECS = {key: _inner_spec(key) for key in _INNER}
_InnerStrategy = Annotated[typing.Union[tuple(_INNER_SPECS.values())],  # noqa: UP007
                           Field(discriminator="name")]


def _dp_params_model(cls: type) -> type[BaseModel]:
    """The wrapper's own arguments, its inner strategy as `{name, params}` (default FedAvg),
    and `num_sampled_clients` optional (default: what the inner strategy samples)."""
    return _params_model(
        cls,
        num_sampled_clients=(int | None, Field(
            default=None, ge=1, description="nodes sampled per round; default: the inner "
            "strategy's fraction_train of all nodes, at least its min_train_nodes")),
        strategy=(_InnerStrategy, Field(
            default_factory=lambda: _INNER_SPECS["fedavg"](name="fedavg"),
            description="the wrapped strategy, {name, params}, one of Flower's built-ins")))


def _sampled_per_round(strategy: Any, num_nodes: int) -> int:
    """How many nodes FedAvg's `configure_train` samples when every node is online."""
    return max(int(num_nodes * strategy.fraction_train), strategy.min_train_nodes)


def _dp_builder(cls: type, mod: str | None) -> Callable[[BaseModel, BuildContext], Strategy]:
    def build(params: BaseModel, context: BuildContext) -> Strategy:
        if mod is not None:
            _require_train_mod(context, getattr(flwr_mods, mod))
        spec: Any = params.strategy  # type: ignore[attr-defined]
        inner = _construct(_INNER[spec.name], spec.params)
        sampled = (params.num_sampled_clients  # type: ignore[attr-defined]
                   or _sampled_per_round(inner, context.num_nodes))
        return _construct(cls, params, strategy=inner, num_sampled_clients=sampled)

    return build


def _require_train_mod(context: BuildContext, mod: Callable[..., Any]) -> None:
    """A client-side DP wrapper adds noise for updates the clients clipped: without the
    clipping mod, the run would claim a privacy it does not give."""
    mods = context.scenario.client_mods.train
    if not any(installed_object(ref, "client_mods.train") is mod for ref in mods):
        raise ScenarioError(
            f"client_mods.train: strategy {context.scenario.strategy.name!r} expects the "
            f"clients to clip their updates; add 'flwr.clientapp.mod:{mod.__name__}'")


class _Unsupported(BaseModel):
    """Parameters of a built-in fedsim cannot run: any value is refused, with the reason."""

    model_config = ConfigDict(extra="forbid")
    reason: typing.ClassVar[str] = ""

    @model_validator(mode="before")
    @classmethod
    def _refuse(cls, data: Any) -> Any:
        raise PydanticCustomError("unsupported", "{reason}", {"reason": cls.reason})


def _unsupported(name: str) -> StrategyInfo:
    reason = f"Flower's {name} cannot run in fedsim: {UNSUPPORTED[name]}"
    params = type(f"{name}Params", (_Unsupported,), {"reason": reason})

    def build(params: BaseModel, context: BuildContext) -> Strategy:
        raise ScenarioError(f"strategy.name: {reason}")

    return StrategyInfo(name.lower(), f"unsupported: {reason}", params, build)


STRATEGIES = tuple(
    StrategyInfo(key, _summary(cls), _INNER_PARAMS[key], _builder(cls))
    for key, cls in _INNER.items()
) + tuple(
    StrategyInfo(key, f"{_summary(getattr(flwr_strategies, name))} (wraps `strategy`)",
                 _dp_params_model(getattr(flwr_strategies, name)),
                 _dp_builder(getattr(flwr_strategies, name), mod))
    for key, (name, mod) in _DP_WRAPPERS.items()
) + tuple(_unsupported(name) for name in UNSUPPORTED)
