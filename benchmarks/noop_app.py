"""A no-op Flower ClientApp for `call_throughput.py`: replies with the arrays it received.

Importable by fedsim's pool (`WorkerSpec(client_app="noop_app:client_app")`) and
passed to Flower's `run_simulation` as is, so both systems run the same client.
"""

from __future__ import annotations

from flwr.app import Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

client_app = ClientApp()


@client_app.train()
def echo(message: Message, context: Context) -> Message:
    """Echo the model back; one example of work, so the grid's clock moves."""
    content = RecordDict({"arrays": message.content["arrays"],
                          "metrics": MetricRecord({"num-examples": 1})})
    return Message(content, reply_to=message)
