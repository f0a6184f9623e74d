"""The project's Flower apps: one ClientApp and one ServerApp, simulated or deployed.

The simulator's pool executes exactly `client_app`; `flwr run` deploys the
same two objects (see `[tool.flwr.app]` in pyproject.toml). Strategies add
their client halves to `client_app` as named actions (`train.fedspeed`, ...).
"""

from __future__ import annotations

from flwr.clientapp import ClientApp
from flwr.serverapp import ServerApp

from fedsim import client, deploy
from strategies import client_actions

client_app = ClientApp()
client_app.train()(client.train)
client_app.evaluate()(client.evaluate)
for _message_type, _function in client_actions().items():
    _category, _action = _message_type.split(".")
    getattr(client_app, _category)(_action)(_function)

server_app = ServerApp()
server_app.main()(deploy.serve)
