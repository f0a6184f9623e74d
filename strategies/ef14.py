"""Classic error feedback (EF14) and naive compressed FedAvg, with or without error feedback.

EF14: Seide et al., "1-bit SGD", Interspeech 2014; Stich, Cordonnier, Jaggi, "Sparsified SGD
with Memory", NeurIPS 2018; the baseline of the EF21 paper (``tkef_distributed_stable.py`` in
``IgorSokoloff/ef21_experiments_source_code``, whose update this follows).

    client i:  v_i = C(e_i + u_i);   e_i ← e_i + u_i − v_i   (e_i⁰ = 0; every message compressed)
    server:    x ← x − Σ_i a_i v_i

EF14 takes u_i = γ ∇f_i(x) and a_i = 1/n. Compressed FedAvg takes u_i = x − (x after the
scenario's local SGD), FedAvg's model update, and a_i = 1/|replies|. Without error feedback
(``error_feedback: false``) e_i stays 0: the update is just C(u_i), the naive scheme that
stalls or diverges under heterogeneity.
"""

from __future__ import annotations

import numpy as np
from flwr.app import ConfigRecord, Context, Message
from pydantic import BaseModel, ConfigDict, Field

from strategies import StrategyInfo
from strategies.compressors import Compressed, Compressor, CompressorSpec, TopK
from strategies.ef21 import (
    CompressedGradientParams,
    CompressedGradientStrategy,
    builder,
    run_client,
)


class EF14(CompressedGradientStrategy):
    """EF14 / classic error feedback on gradient steps (the EF21 paper's baseline).

    Parameters, besides `CompressedGradientStrategy`'s:
    error_feedback : bool, default True
        False gives naive compressed gradient descent, x ← x − (1/n) Σ C(γ ∇f_i(x)).
    The step γ (theory rule: EF21's, so that EF14 and EF21 are compared at the same γ) is
    applied client-side, before compression.
    """

    message_type = "train.ef14"

    def client_scale(self, partition: int) -> float:
        return float(self.gamma or 0.0)

    def apply(self, aggregate: np.ndarray) -> None:
        """x ← x − Σ a_i v_i (the messages are steps, not gradients)."""
        assert self.x is not None
        self.x = self.x - aggregate


class CompressedFedAvg(EF14):
    """FedAvg whose model updates are compressed (e.g. Top-1%), optionally with EF14 memory.

    Parameters: compressor (default Top-K, ratio 0.01), error_feedback (default False),
    participation (default 1.0). Local training is the scenario's ``training`` section; the
    server adds the mean of the decoded updates of the clients that replied.
    """

    input_kind = "local_sgd"
    needs_step = False

    def step_size(self, alpha: float) -> float:
        return 1.0  # unused: the local SGD's lr is in the training config

    def weights(self, partitions: list[int]) -> np.ndarray:
        return np.full(len(partitions), 1 / len(partitions))


def ef14_update(memory: dict[str, np.ndarray], u: np.ndarray, compress: Compressor,
                generator: np.random.Generator, config: ConfigRecord) -> Compressed:
    """v = C(e + u); e ← e + u − v (e = 0 throughout without error feedback)."""
    if not bool(config["ef-error_feedback"]):
        return compress(u, generator)
    error = memory.get("e", np.zeros_like(u))
    sent = compress(error + u, generator)
    memory["e"] = error + u - sent.to_dense()
    return sent


def train_ef14(message: Message, context: Context) -> Message:
    """EF14's and compressed FedAvg's client."""
    return run_client(message, context, ef14_update)


class EF14Params(CompressedGradientParams):
    error_feedback: bool = True


class CompressedFedAvgParams(BaseModel):
    model_config = ConfigDict(extra="forbid")
    compressor: CompressorSpec = Field(default_factory=lambda: TopK(ratio=0.01))
    error_feedback: bool = False
    participation: float = Field(default=1.0, gt=0, le=1)


STRATEGIES = (
    StrategyInfo("ef14", "EF14: classic error feedback, C(e + γ∇f_i)", EF14Params,
                 builder(EF14), {"train.ef14": train_ef14}),
    StrategyInfo("compressed_fedavg", "FedAvg with compressed updates (naive or with EF14)",
                 CompressedFedAvgParams, builder(CompressedFedAvg), {"train.ef14": train_ef14}),
)
