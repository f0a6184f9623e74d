"""A grid as a real SuperLink shows itself, for strategy tests: opaque node ids.

Node ids are random and at least 2^63, listed in shuffled order, and carry no partition;
replies come back in shuffled order. Each pushed message is answered at once by the client
half for its type, run with the node's own partition in its node config, so a strategy built
without services learns the partition map by asking (`fedsim.core.client.partition_info`).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping

import numpy as np
import pytest
from flwr.app import Context, Message, RecordDict
from flwr.supercore.task_identity import TaskIdentity

from fedsim.core import client as core_client
from fedsim.core.services import PARTITION_QUERY
from fedsim.core.task import Task

ClientFn = Callable[[Message, Context], Message]


def replying(answer: Callable[[Message, int], RecordDict]) -> ClientFn:
    """A client half that replies `answer(message, partition)`."""
    def client(message: Message, context: Context) -> Message:
        return Message(answer(message, int(context.node_config["partition-id"])),
                       reply_to=message)
    return client


class OpaqueGrid:
    """`ids[p]` is the node holding partition p; `sent` every message but partition queries."""

    def __init__(self, num_partitions: int, answer: ClientFn | Mapping[str, ClientFn],
                 seed: int = 0, offline: Iterable[int] = ()) -> None:
        self._rng = np.random.default_rng(seed)
        self.ids = [2**63 + int(v) for v in self._rng.choice(2**62, num_partitions,
                                                                replace=False)]
        self.partition_of = {node: p for p, node in enumerate(self.ids)}
        self.order = [self.ids[p] for p in self._rng.permutation(num_partitions)]
        self.num_partitions = num_partitions
        self.answer = answer
        self.offline = {self.ids[p] for p in offline}
        self.sent: list[Message] = []
        self._replies: dict[str, Message] = {}

    def get_node_ids(self) -> list[int]:
        return [n for n in self.order if n not in self.offline]

    def create_message(self, content: RecordDict, message_type: str, dst_node_id: int,
                       group_id: str, ttl: float | None = None) -> Message:
        return Message(content, dst_node_id, message_type, group_id=group_id)

    def _client(self, message_type: str) -> ClientFn:
        if message_type == PARTITION_QUERY:
            return core_client.partition_info
        return self.answer if callable(self.answer) else self.answer[message_type]

    def push_messages(self, messages: Iterable[Message]) -> list[str]:
        ids = []
        for message in messages:
            node = message.metadata.dst_node_id
            partition = self.partition_of[node]  # KeyError: an id the grid never gave
            context = Context(run_id=1, node_id=node, state=RecordDict(), run_config={},
                              node_config={"partition-id": partition,
                                           "num-partitions": self.num_partitions})
            message_id = f"m{len(self._replies)}-{len(self.sent)}-{node}"
            message.metadata.__dict__["_message_id"] = message_id
            if message.metadata.message_type != PARTITION_QUERY:
                self.sent.append(message)
            self._replies[message_id] = self._client(message.metadata.message_type)(
                message, context)
            ids.append(message_id)
        return ids

    def pull_messages(self, message_ids: Iterable[str]) -> list[Message]:
        ready = [m for m in message_ids if m in self._replies]
        return [self._replies.pop(ready[k]) for k in self._rng.permutation(len(ready))]

    def send_and_receive(self, messages: Iterable[Message], *, timeout: float | None = None
                         ) -> list[Message]:
        return self.pull_messages(self.push_messages(messages))


def as_server_app(monkeypatch: pytest.MonkeyPatch, task: Task | None = None) -> None:
    """Give this process a server app's Flower task identity (creating messages needs it),
    and, with `task`, let client halves run here train it (the app's task source)."""
    for name, value in (("_run_id", 1), ("_node_id", 1), ("_task_id", 0)):
        monkeypatch.setattr(TaskIdentity, name, value)
    if task is not None:
        monkeypatch.setattr(core_client, "_task_source", lambda run_config, n: task)
