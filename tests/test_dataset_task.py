"""The `dataset` task on local files the tests make: partitions equal flwr-datasets' own
partitioners, a SuperNode's rows equal the simulated node's, bad input is one line."""

from __future__ import annotations

import copy
import re

import datasets
import flwr_datasets.partitioner as partitioner
import numpy as np
import PIL.Image as PIL
import pytest
import yaml

from fedsim.core.client import client_task
from fedsim.core.errors import ScenarioError
from fedsim.engine.tasks import make_task
from tests.conftest import BASE, scenario

WRITERS = ("ann", "bob", "cyd", "dan", "eve")
CLASSES = ("cat", "dog", "owl")


@pytest.fixture(scope="module")
def image_folder(tmp_path_factory):
    """3 class folders of 8x8 RGB PNGs (7, 9 and 5 images)."""
    root = tmp_path_factory.mktemp("images")
    gen = np.random.default_rng(0)
    for name, count in zip(CLASSES, (7, 9, 5), strict=True):
        (root / name).mkdir()
        for i in range(count):
            pixels = gen.integers(0, 256, size=(8, 8, 3), dtype=np.uint8)
            PIL.fromarray(pixels).save(root / name / f"{i}.png")
    return root


@pytest.fixture(scope="module")
def text_parquet(tmp_path_factory):
    """Lines of 10 characters, the next character and a writer id (5 writers, 3-8 lines each)."""
    path = tmp_path_factory.mktemp("text") / "lines.parquet"
    gen = np.random.default_rng(1)
    letters = np.array(list("abcdefgh ."))
    rows = {"x": [], "y": [], "writer": []}
    for writer, count in zip(WRITERS, (3, 8, 5, 6, 4), strict=True):
        for _ in range(count):
            line = "".join(gen.choice(letters, size=11))
            rows["x"].append(line[:10])
            rows["y"].append(line[10])
            rows["writer"].append(writer)
    datasets.Dataset.from_dict(rows).to_parquet(str(path))
    return path


def _scenario(params: dict, partition: dict, count: int, **overrides):
    base = copy.deepcopy(BASE)
    base["task"] = {"name": "dataset", "model": "mlp", "params": params, "partition": partition}
    base["clients"] = {"count": count}
    return scenario(base, **overrides)


IMAGES = {"dataset": "imagefolder", "features": "image", "transform": "image"}
TEXT = {"dataset": "parquet", "features": "x", "label": "y", "transform": "chars"}


def _flwr_partitions(loader_args: dict, flwr_partitioner, seed: int, tmp_path) -> list:
    """What flwr-datasets gives: the split loaded, shuffled with the seed (FederatedDataset's
    `shuffle=True, seed=seed`) and handed to the partitioner, called directly."""
    table = datasets.load_dataset(**loader_args, cache_dir=str(tmp_path / "hf"))["train"]
    flwr_partitioner.dataset = table.shuffle(seed=seed)
    return [flwr_partitioner.load_partition(i) for i in range(flwr_partitioner.num_partitions)]


@pytest.mark.parametrize(("partition", "make"), [
    ({"kind": "iid"}, lambda: partitioner.IidPartitioner(num_partitions=3)),
    ({"kind": "dirichlet", "alpha": 0.5, "min_partition_size": 0},
     lambda: partitioner.DirichletPartitioner(
         num_partitions=3, partition_by="label", alpha=0.5, min_partition_size=0, seed=7)),
    ({"kind": "pathological", "params": {"num_classes_per_partition": 1}},
     lambda: partitioner.PathologicalPartitioner(
         num_partitions=3, partition_by="label", num_classes_per_partition=1, seed=7)),
])
def test_image_folder_partitions_equal_flwr_datasets_partitioner(image_folder, tmp_path,
                                                                 partition, make):
    s = _scenario({**IMAGES, "files": str(image_folder)}, partition, 3, seed=7)
    task = make_task(s)
    expected = _flwr_partitions({"path": "imagefolder", "data_dir": str(image_folder)}, make(),
                                7, tmp_path)
    for i, part in enumerate(expected):
        mine = task._shards[i]
        assert len(mine) == len(part)
        assert task._arrays[1][mine].tolist() == part["label"]
        # the same images, in the same order: pixels of flwr-datasets' rows
        pixels = np.stack([np.asarray(img).transpose(2, 0, 1) for img in part["image"]])
        assert np.array_equal(task._arrays[0][mine], pixels)


@pytest.mark.parametrize(("partition", "make"), [
    ({"kind": "natural_id", "params": {"partition_by": "writer"}},
     lambda: partitioner.NaturalIdPartitioner(partition_by="writer")),
    ({"kind": "iid"}, lambda: partitioner.IidPartitioner(num_partitions=5)),
    ({"kind": "shards", "shards_per_client": 2, "params": {"partition_by": "y"}},
     lambda: partitioner.ShardPartitioner(num_partitions=5, partition_by="y",
                                          num_shards_per_partition=2, seed=3)),
])
def test_parquet_text_partitions_equal_flwr_datasets_partitioner(text_parquet, tmp_path,
                                                                 partition, make):
    s = _scenario({**TEXT, "files": str(text_parquet)}, partition, 5, seed=3)
    task = make_task(s)
    expected = _flwr_partitions({"path": "parquet", "data_files": str(text_parquet)}, make(),
                                3, tmp_path)
    letters = "\n !\"&'(),-.0123456789:;>?ABCDEFGHIJKLMNOPQRSTUVWXYZ[]abcdefghijklmnopqrstuvwxyz}"
    for i, part in enumerate(expected):
        mine = task._shards[i]
        assert len(mine) == len(part)
        assert task._arrays[1][mine].tolist() == [letters.index(c) for c in part["y"]]
        assert ["".join(letters[k] for k in row) for row in task._arrays[0][mine]] == part["x"]
    if partition["kind"] == "natural_id":  # one writer per client, every line of that writer
        writers = [set(part["writer"]) for part in expected]
        assert all(len(w) == 1 for w in writers) and len(set.union(*writers)) == 5


def test_supernode_with_partition_id_i_gets_the_rows_of_simulated_node_i(text_parquet,
                                                                         tmp_path):
    from flwr.app import Context, RecordDict

    import fedsim.apps  # noqa: F401  (installs the task source a SuperNode's ClientApp uses)

    data = copy.deepcopy(BASE)
    data["task"] = {"name": "dataset", "model": "char_lstm",
                    "params": {**TEXT, "files": str(text_parquet), "client_val_fraction": 0.25},
                    "partition": {"kind": "natural_id", "params": {"partition_by": "writer"}}}
    data["clients"] = {"count": 4}
    path = tmp_path / "scenario.yaml"
    path.write_text(yaml.safe_dump(data))
    simulated = make_task(scenario(data))
    worker = make_task(scenario(data))  # a pool worker: the driver's shared data, not its own
    worker.use_shared_data(simulated.shared_data())
    for i in range(4):
        context = Context(run_id=1, node_id=100 + i, state=RecordDict(),
                          run_config={"scenario": str(path)},
                          node_config={"partition-id": i, "num-partitions": 4})
        device, partition_id = client_task(context)
        assert device is not worker and partition_id == i
        for split in ("train_data", "test_data"):
            mine, theirs = getattr(worker, split)(i), getattr(device, split)(i)
            assert len(mine) > 0
            assert np.array_equal(mine.x.numpy(), theirs.x.numpy())
            assert np.array_equal(mine.y.numpy(), theirs.y.numpy())


def test_a_tiny_run_trains_the_fedavg_cnn_on_the_image_folder(image_folder):
    from fedsim.runner import simulate

    s = _scenario({**IMAGES, "files": str(image_folder), "client_val_fraction": 0.2},
                  {"kind": "iid"}, 3, rounds=2, task__model="fedavg_cnn")
    records = simulate(s).records
    assert [r["round"] for r in records] == [0, 1, 2]  # round 0: the initial model
    assert all(np.isfinite(r["loss"]) for r in records)
    task = make_task(s)
    server = task.test_data()  # no test split: the clients' held-out rows
    assert len(server) == sum(len(task.test_data(i)) for i in range(3)) > 0
    assert server.x.dtype.is_floating_point and float(server.x.max()) <= 1.0


@pytest.mark.parametrize(("params", "partition", "error"), [
    ({**IMAGES}, {}, "task.params.files: required for local imagefolder data"),
    ({**IMAGES, "files": "/no/such/folder"}, {}, "task.params.files: '/no/such/folder' does "
     "not exist"),
    ({**IMAGES, "dataset": "uoft-cs/cifar10", "files": "x"}, {}, "task.params.files: only for "
     "local data"),
    ({**IMAGES, "dataset": "uoft-cs/cifar10", "transform": "resize"}, {}, "task.params.transform"),
    ({**IMAGES, "dataset": "uoft-cs/cifar10"}, {"kind": "pathological"},
     "task.partition: PathologicalPartitioner"),
    ({**IMAGES, "dataset": "uoft-cs/cifar10"},
     {"kind": "dirichlet", "params": {"alhpa": 1}}, "task.partition.params.alhpa: not an "
     "argument of DirichletPartitioner"),
])
def test_bad_dataset_settings_are_one_line_at_validation(params, partition, error):
    with pytest.raises(ScenarioError, match=re.escape(error)):
        _scenario(params, partition, 3)


def test_a_model_by_reference_must_be_installed_and_a_partition_column_must_exist(
        text_parquet):
    with pytest.raises(ScenarioError, match=r"task\.model: .nowhere_pkg. is not an installed"):
        _scenario({**TEXT, "files": str(text_parquet)}, {}, 3, task__model="nowhere_pkg.m:f")
    s = _scenario({**TEXT, "files": str(text_parquet)},
                  {"kind": "natural_id", "params": {"partition_by": "author"}}, 3)
    with pytest.raises(ScenarioError, match="partition_by: no column 'author'"):
        make_task(s).shared_data()
    s = _scenario({**TEXT, "files": str(text_parquet)},
                  {"kind": "natural_id", "params": {"partition_by": "writer"}}, 6)
    with pytest.raises(ScenarioError, match=r"clients.count \(6\) exceeds the 5 partitions"):
        make_task(s).shared_data()


def test_a_model_by_reference_builds_an_installed_module(text_parquet):
    s = _scenario({**TEXT, "files": str(text_parquet)}, {}, 2,
                  task__model="fedsim.engine.tasks.models:CharLSTM")
    model = make_task(s).make_model()
    assert type(model).__name__ == "CharLSTM" and model.head.out_features == 81


def test_npz_files_load_without_pickle(tmp_path):
    path = tmp_path / "data.npz"
    gen = np.random.default_rng(2)
    np.savez(path, x=gen.normal(size=(30, 4)).astype(np.float32), y=np.arange(30) % 3)
    s = _scenario({"dataset": "npz", "files": str(path), "features": "x", "label": "y"},
                  {"kind": "iid"}, 3)
    task = make_task(s)
    assert sum(len(task.train_data(i)) + len(task.test_data(i)) for i in range(3)) == 30
    assert tuple(task.make_model()(task.train_data(0).x).shape[1:]) == (3,)
    np.savez(path, x=np.array([{"a": 1}], dtype=object), y=np.zeros(1))
    with pytest.raises(ScenarioError, match=r"not a readable \.npz of plain arrays"):
        make_task(s).shared_data()


@pytest.mark.parametrize("name", ["cifar10_dirichlet", "femnist_writers",
                                  "shakespeare_speakers"])
def test_paper_scenarios_validate_without_loading_any_data(name, monkeypatch):
    from pathlib import Path

    from fedsim.checks import check_run
    from fedsim.scenario import load_scenario

    def no_loading(*args, **kwargs):
        raise AssertionError("validation loaded data")

    monkeypatch.setattr(datasets, "load_dataset", no_loading)
    path = Path(__file__).parent.parent / "scenarios" / "paper" / f"{name}.yaml"
    check_run(load_scenario(path))  # everything `fedsim validate` does


def test_a_partitioner_that_cannot_split_the_rows_is_one_line():
    from fedsim.core.schema import PartitionSpec
    from fedsim.engine.tasks.partition import partition_rows

    spec = PartitionSpec(kind="dirichlet", alpha=0.5, min_partition_size=10)
    with pytest.raises(ScenarioError, match=r"task\.partition: DirichletPartitioner could not "
                                            r"split the 20 rows over 3 clients"):
        partition_rows({"label": np.arange(20) % 3}, spec, 3, seed=0)
