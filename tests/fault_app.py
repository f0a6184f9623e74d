"""A ClientApp for fault-injection tests: the project's app, with scripted crashes.

- partition 1's worker process dies (`os._exit`) when it gets its round-2 train message,
  as a Ray actor killed mid-round would;
- partition 2's client code raises `ValueError("boom in client")` on every train message;
- `raise_always`: every node's client code raises on every message.

Only tests use it (`simulate(..., client_app="tests.fault_app:exit_in_round_2")`).
"""

from __future__ import annotations

import os

from flwr.app import Context, Message

from fedsim.apps import client_app

DYING_PARTITION, RAISING_PARTITION = 1, 2  # node ids are opaque: go by partition


def _partition(context: Context) -> int:
    return int(context.node_config["partition-id"])


def _server_round(message: Message) -> int:
    config = message.content.config_records.get("config")
    return int(config.get("server-round", 0)) if config is not None else 0


def exit_in_round_2(message: Message, context: Context) -> Message:
    """Kill this worker's process in the middle of round 2 (partition 1's train job)."""
    train = message.metadata.message_type.startswith("train")
    if train and _partition(context) == DYING_PARTITION and _server_round(message) == 2:
        os._exit(1)
    return client_app(message, context)


def raise_on_train(message: Message, context: Context) -> Message:
    """Partition 2's client code raises on every train message."""
    train = message.metadata.message_type.startswith("train")
    if train and _partition(context) == RAISING_PARTITION:
        raise ValueError("boom in client")
    return client_app(message, context)


def raise_always(message: Message, context: Context) -> Message:
    """Every node's client code raises on every message (a bug, not a lossy world)."""
    raise TypeError("expected Float but found Double")
