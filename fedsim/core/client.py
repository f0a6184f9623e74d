"""Client-side handlers shared by all strategies: the default train and evaluate.

Strategies' client halves import their helpers from here (never from
`fedsim.apps`, which imports the strategies to register their actions).
Which task a run trains is known only to the composition root: the app that
serves the client halves installs a `TaskSource` (`use_task_source`), and
`client_task` asks it.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict

from fedsim.core.codec import model_to_arrays
from fedsim.core.keys import WORK_KEY
from fedsim.core.task import Task
from fedsim.core.training import TrainConfig, local_sgd

TaskSource = Callable[[dict[str, Any], int], Task]
"""(run config, number of partitions) -> the run's task, built once per process."""

_task_source: TaskSource | None = None


def use_task_source(source: TaskSource) -> None:
    """Tell the client halves where a run's task comes from (the app does this on import)."""
    global _task_source
    _task_source = source


def run_task(run_config: dict[str, Any], num_partitions: int) -> Task | None:
    """The run's task from the installed source; None where no source is installed."""
    return None if _task_source is None else _task_source(run_config, num_partitions)


def client_task(context: Context) -> tuple[Task, int]:
    """The task and this node's partition id, from the run and node configs."""
    config = context.node_config
    task = run_task(context.run_config, int(config["num-partitions"]))
    if task is None:
        raise RuntimeError("no task source installed: serve client halves from an app that "
                           "calls fedsim.core.client.use_task_source (fedsim.apps does)")
    return task, int(config["partition-id"])


def reply(message: Message, arrays: ArrayRecord | None = None, **metrics: float) -> Message:
    """A reply with optional arrays and a MetricRecord (the shape Flower's strategies expect)."""
    content = RecordDict({"metrics": MetricRecord(metrics)})
    if arrays is not None:
        content["arrays"] = arrays
    return Message(content, reply_to=message)


def train(message: Message, context: Context) -> Message:
    """FedAvg's client: local SGD from the received model (serves every Flower strategy)."""
    task, partition = client_task(context)
    model = task.model_with(message.content["arrays"])
    data = task.train_data(partition)
    samples, loss = local_sgd(model, task, data, TrainConfig.from_record(message.content["config"]))
    return reply(message, model_to_arrays(model),
                 **{"num-examples": len(data), "train_loss": loss, WORK_KEY: samples})


def evaluate(message: Message, context: Context) -> Message:
    """Evaluate the received model on this client's held-out data."""
    task, partition = client_task(context)
    model = task.model_with(message.content["arrays"])
    data = task.test_data(partition)
    metrics = task.evaluate(model, data) if len(data) else {}
    return reply(message, **{"num-examples": len(data), **metrics})


def partition_info(message: Message, context: Context) -> Message:
    """Answer the partition query (`fedsim.core.services.PARTITION_QUERY`): which data
    partition this node holds, of how many, as its `--node-config` says."""
    config = context.node_config
    answer = ConfigRecord({"partition-id": int(config["partition-id"]),
                           "num-partitions": int(config["num-partitions"])})
    return Message(RecordDict({"partition": answer}), reply_to=message)
