"""Start-up paths: data computed once in the driver, workers warmed up before round 1.

No timings are asserted: these check that the fast paths give the same numbers as the
plain ones, and that a worker given the driver's data imports no dataset library.
"""

from __future__ import annotations

import json
import pickle
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np

from fedsim.engine.tasks import make_task
from fedsim.runner import RUN_ID, run_config
from tests.conftest import scenario

ROOT = Path(__file__).resolve().parent.parent


def _dirichlet_digits():
    return scenario(task__model="cnn", task__partition={"kind": "dirichlet", "alpha": 0.5},
                    clients__count=12)


def test_task_given_shared_data_serves_the_same_shards_as_one_that_computes_them():
    computed, given = make_task(_dirichlet_digits()), make_task(_dirichlet_digits())
    given.use_shared_data(make_task(_dirichlet_digits()).shared_data())
    assert set(given.__dict__) >= {"_arrays", "_shards"}  # nothing left to compute
    for i in range(12):
        for a, b in ((computed.train_data(i), given.train_data(i)),
                     (computed.test_data(i), given.test_data(i))):
            assert np.array_equal(a.x.numpy(), b.x.numpy())
            assert np.array_equal(a.y.numpy(), b.y.numpy())
    assert np.array_equal(computed.test_data(None).y.numpy(), given.test_data(None).y.numpy())


def test_worker_given_the_driver_data_imports_neither_sklearn_nor_datasets(tmp_path):
    s = _dirichlet_digits()
    data = tmp_path / "shared.pkl"
    data.write_bytes(pickle.dumps(make_task(s).shared_data()))
    child = textwrap.dedent(f"""
        import json, pickle, sys
        from fedsim.engine.pool import ClientWorker, WorkerSpec
        from fedsim.apps import task_from_run_config
        config = json.loads({json.dumps(json.dumps(run_config(s)))})
        worker = ClientWorker(WorkerSpec("fedsim.apps:client_app", {RUN_ID}, 12, config))
        assert "torch._dynamo" in sys.modules, "the warm-up should import torch._dynamo"
        worker.share_task_data(pickle.loads(open({str(data)!r}, "rb").read()))
        task = task_from_run_config(config, 12)
        sizes = [len(task.train_data(i)) for i in range(12)]
        print(json.dumps({{"sizes": sizes, "loaded": sorted(
            m for m in ("sklearn", "datasets", "flwr_datasets") if m in sys.modules)}}))
    """)
    done = subprocess.run([sys.executable, "-c", child], cwd=ROOT, capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    out = json.loads(done.stdout.strip().splitlines()[-1])
    assert out["loaded"] == []
    assert out["sizes"] == [len(make_task(s).train_data(i)) for i in range(12)]
