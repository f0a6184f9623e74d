"""Client-side handlers shared by all strategies: the default train and evaluate.

Strategies' client halves import their helpers from here (never from
`fedsim.apps`, which imports the strategies to register their actions).
"""

from __future__ import annotations

from flwr.app import ArrayRecord, Context, Message, MetricRecord, RecordDict

from fedsim.grid import WORK_KEY
from fedsim.tasks import Task, task_from_run_config
from fedsim.training import TrainConfig, local_sgd, model_to_arrays


def client_task(context: Context) -> tuple[Task, int]:
    """The task and this node's partition id, from the run and node configs."""
    config = context.node_config
    task = task_from_run_config(context.run_config, int(config["num-partitions"]))
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
