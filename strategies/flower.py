"""Every built-in Flower strategy, by name, with hyperparameters from its signature.

The parameter model of each strategy is derived from its constructor, so a
scenario can set any argument Flower documents and a typo is an error. The
node-count minimums default to 1 rather than Flower's 2: in a simulation,
nothing comes online while the server waits, so a stricter minimum can only
stall (the runner turns such a stall into an error naming the parameter).
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any

from flwr.serverapp import strategy as flwr_strategies
from pydantic import BaseModel, ConfigDict, create_model

from strategies import BuildContext, StrategyInfo

_BUILTINS = ("FedAvg", "FedProx", "FedAdam", "FedAdagrad", "FedYogi", "FedAvgM", "FedMedian",
             "FedTrimmedAvg", "Krum", "MultiKrum", "Bulyan", "QFedAvg")
# Server-side DP only: the client-side variants need Flower's clipping mods on the ClientApp.
_DP_WRAPPERS = {"dp_fixed_clipping": "DifferentialPrivacyServerSideFixedClipping",
                "dp_adaptive_clipping": "DifferentialPrivacyServerSideAdaptiveClipping"}
_SIM_DEFAULTS = {"min_train_nodes": 1, "min_evaluate_nodes": 1, "min_available_nodes": 1}


def _params_model(cls: type, skip: tuple[str, ...] = ()) -> type[BaseModel]:
    """A pydantic model of the constructor's plain (non-callable) arguments."""
    fields: dict[str, Any] = {}
    for p in list(inspect.signature(cls.__init__, eval_str=True).parameters.values())[1:]:
        if p.name in skip or "Callable" in str(p.annotation) or "Accountant" in str(p.annotation):
            continue
        default = _SIM_DEFAULTS.get(p.name, p.default)
        fields[p.name] = (p.annotation, ... if default is inspect.Parameter.empty else default)
    return create_model(f"{cls.__name__}Params", __config__=ConfigDict(extra="forbid"), **fields)


def _summary(cls: type) -> str:
    return "Flower: " + (cls.__doc__ or cls.__name__).strip().splitlines()[0]


def _builder(cls: type) -> Callable[[BaseModel, BuildContext], Any]:
    def build(params: BaseModel, context: BuildContext) -> Any:
        return cls(**params.model_dump())

    return build


def _dp_builder(cls: type) -> Callable[[BaseModel, BuildContext], Any]:
    """DP wrappers wrap FedAvg (set `num_sampled_clients` to the nodes sampled per round)."""

    def build(params: BaseModel, context: BuildContext) -> Any:
        return cls(flwr_strategies.FedAvg(**_SIM_DEFAULTS), **params.model_dump())

    return build


STRATEGIES = tuple(
    StrategyInfo(name.lower(), _summary(getattr(flwr_strategies, name)),
                 _params_model(getattr(flwr_strategies, name)),
                 _builder(getattr(flwr_strategies, name)))
    for name in _BUILTINS
) + tuple(
    StrategyInfo(key, f"{_summary(getattr(flwr_strategies, name))} (wrapping FedAvg)",
                 _params_model(getattr(flwr_strategies, name), skip=("strategy",)),
                 _dp_builder(getattr(flwr_strategies, name)))
    for key, name in _DP_WRAPPERS.items()
)
