"""Training across workers: the tf.data shards, two worker processes against one, and a killed worker resuming."""

from __future__ import annotations

import json
import resource
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest

from pianola.data.corpus import Piece
from pianola.data.sequences import EncodedSplit
from pianola.data.vocab import Vocabulary
from pianola.errors import PianolaError
from pianola.models import windows_to_xy
from pianola.training.distributed import cluster_from_env, run_local_cluster, window_dataset

# One worker of a test cluster: the tiny project's sequences, an LSTM of 16 units without dropout (so that a run
# is a function of its data and seed alone), 3 epochs of 6 steps of 32 windows. argv: out, work_dir, record,
# "kill" (worker 0 SIGKILLs itself once epoch 1 is checkpointed). The chief records its history, the epochs it
# ran and its MLflow run id in `record`.
WORKER = """
import json, os, signal, sys
import keras
from pianola.training.train import preset_config, train

out, work_dir, record = sys.argv[1:4]
kill = sys.argv[4:] == ["kill"]
chief = json.loads(os.environ["TF_CONFIG"])["task"]["index"] == 0

class Epochs(keras.callbacks.Callback):
    seen = []

    def on_epoch_begin(self, epoch, logs=None):
        self.seen.append(epoch)

    def on_epoch_end(self, epoch, logs=None):  # after the checkpoint: extra callbacks come last
        if kill and chief and epoch == 0:
            os.kill(os.getpid(), signal.SIGKILL)

# max_minutes: a budget that never runs out, but makes the workers vote after every batch
config = preset_config("lstm", "demo", epochs=3, patience=10, max_minutes=60,
                       model_options={"embed_dim": 16, "units": 16, "layers": 1, "dropout": 0.0})
result = train("data/sequences", out, config, work_dir=work_dir, register=False, verbose=2, extra_callbacks=[Epochs()])
if result is not None:
    with open(record, "w") as f:
        json.dump({"history": result.history, "seen": Epochs.seen, "run_id": result.run_id}, f)
"""


def run_cluster(project: Path, folder: Path, workers: int, *extra: str) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    env = {**__import__("os").environ, "MLFLOW_TRACKING_URI": f"sqlite:///{folder / 'mlflow.db'}"}
    command = [sys.executable, "-c", WORKER, str(folder / "bundle"), str(folder / "runs"), str(folder / "record.json"), *extra]
    run_local_cluster(command, workers, folder / "logs", cwd=project, env=env)


@pytest.fixture(scope="module")
def one_and_two(tiny_project: Path, tmp_path_factory) -> dict[int, Path]:
    """The same training as a cluster of one worker and of two (run at once); each run's folder."""
    root = tmp_path_factory.mktemp("clusters")
    folders = {n: root / f"workers-{n}" for n in (1, 2)}
    with ThreadPoolExecutor(2) as pool:
        for done in [pool.submit(run_cluster, tiny_project, folders[n], n) for n in folders]:
            done.result()
    return folders


def record(folder: Path) -> dict:
    return json.loads((folder / "record.json").read_text())


def numbered_split(lengths: list[int]) -> EncodedSplit:
    """Pieces whose ids are their positions in the split: a window is known by its first id."""
    offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
    return EncodedSplit(np.arange(offsets[-1], dtype=np.int32), offsets, [f"p{i}" for i in range(len(lengths))])


def batches(dataset, steps: int) -> list[tuple[np.ndarray, np.ndarray]]:
    return [(x.numpy(), y.numpy()) for x, y in dataset.take(steps)]


def test_window_dataset_yields_the_splits_windows() -> None:
    split = numbered_split([40, 9, 25, 30])  # the piece of 9 has no window of 10
    window, vocab_size = 9, 104
    starts = split.window_starts(window)
    tokens = batches(window_dataset(split, window, "tokens", vocab_size, 8, seed=3), 10)
    scalar = batches(window_dataset(split, window, "scalar", vocab_size, 8, seed=3), 10)
    for (x, y), (xs, ys) in zip(tokens, scalar):
        drawn = x[:, 0].astype(np.int64)
        assert np.isin(drawn, starts).all()
        for got, expected in zip((x, y, xs, ys), (*windows_to_xy(split.windows(drawn, window), "tokens", vocab_size),
                                                  *windows_to_xy(split.windows(drawn, window), "scalar", vocab_size))):
            assert got.dtype == expected.dtype and np.array_equal(got, expected)


def test_shards_are_disjoint_and_make_up_the_global_batches() -> None:
    split = numbered_split([50, 70, 22])
    window = 10
    starts = split.window_starts(window)
    assert len(starts) == 112
    per_pass = len(starts) // 8  # steps of 4 + 4 windows
    steps = 2 * per_pass
    shards = [batches(window_dataset(split, window, "tokens", 200, 4, seed=1, shards=2, shard=k), steps) for k in (0, 1)]
    whole = batches(window_dataset(split, window, "tokens", 200, 8, seed=1), steps)
    for step in range(steps):  # a global batch is the same, split between two workers or not
        assert np.array_equal(np.concatenate([shards[0][step][0], shards[1][step][0]]), whole[step][0])
    orders = []
    for one_pass in (slice(0, per_pass), slice(per_pass, steps)):
        drawn = [np.concatenate([x[:, 0] for x, _ in shard[one_pass]]) for shard in shards]
        assert not set(drawn[0]) & set(drawn[1])  # disjoint
        assert sorted(np.concatenate(drawn)) == list(starts)  # together, every start once a pass
        orders.append(np.concatenate([x[:, 0] for x, _ in whole[one_pass]]))
    assert not np.array_equal(orders[0], np.sort(orders[0]))  # shuffled
    assert not np.array_equal(orders[0], orders[1])  # another order each pass


def test_window_dataset_holds_starts_not_windows() -> None:
    # 4M ids in windows of 512: every window at once would be 4M x 513 int32, 8 GB.
    split = numbered_split([1_000_000] * 4)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB
    start = time.monotonic()
    (x, y), = batches(window_dataset(split, 512, "tokens", 4_000_000, 32, seed=0), 1)
    assert x.shape == (32, 512) and np.array_equal(y[:, :-1], x[:, 1:])
    assert time.monotonic() - start < 30
    grown_mib = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024
    assert grown_mib < 500, f"peak memory grew by {grown_mib:.0f} MiB"


def test_window_dataset_transposes_whole_windows_and_never_invents_unk() -> None:
    from pianola.tokenizers import get_tokenizer
    from pianola.training.train import transposition_table

    tokens = ["note:60", "dur:6"] * 40
    vocab = Vocabulary.build([tokens + ["note:59", "note:61", "note:62"]])  # note:58 is missing
    table = transposition_table(vocab, get_tokenizer("timed"), 2)
    split = EncodedSplit.encode([Piece("p", tokens)], vocab)
    pitches = set()
    for x, y in batches(window_dataset(split, 8, "tokens", len(vocab), 16, seed=0, transposition=table), 8):
        assert (x != 0).all() and (y != 0).all()  # the -2 shift would make <unk>: those windows stay put
        assert np.array_equal(x[:, 1:], y[:, :-1])  # inputs and targets move together
        per_window = [{vocab.tokens[i] for i in row if vocab.tokens[i].startswith("note:")} for row in x]
        assert all(len(p) == 1 for p in per_window)  # a window moves as a whole
        pitches |= set().union(*per_window)
    assert pitches == {"note:59", "note:60", "note:61", "note:62"}


@pytest.mark.parametrize("config, problem", [
    ("{not json", "not JSON"),
    ('{"cluster": {"worker": ["127.0.0.1:1"]}}', "must be"),
    ('{"cluster": {"chief": ["a:1"], "worker": ["b:2"]}, "task": {"type": "worker", "index": 0}}', "names chief, worker"),
    ('{"cluster": {"worker": ["no-port"]}, "task": {"type": "worker", "index": 0}}', "host:port"),
    ('{"cluster": {"worker": ["a:1", "b:2"]}, "task": {"type": "worker", "index": 2}}', r"index\": 0\.\.1"),
])
def test_malformed_tf_config_is_a_clear_error(config: str, problem: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TF_CONFIG", config)
    with pytest.raises(PianolaError, match=problem):
        cluster_from_env()


def test_tf_config_names_this_worker(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("TF_CONFIG", raising=False)
    assert cluster_from_env() is None
    monkeypatch.setenv("TF_CONFIG", '{"cluster": {"worker": ["a:1", "b:2"]}, "task": {"type": "worker", "index": 1}}')
    cluster = cluster_from_env()
    assert cluster.workers == ("a:1", "b:2") and cluster.index == 1 and not cluster.chief


def test_two_workers_follow_one_workers_loss_trajectory(one_and_two: dict[int, Path]) -> None:
    from mlflow.tracking import MlflowClient

    one, two = (record(one_and_two[n])["history"] for n in (1, 2))
    assert [row["epoch"] for row in two] == [0, 1, 2]
    # Same seed, data and initial weights; each global batch of 32 is the same windows, split 16 + 16 between the
    # workers: only the order of the float sums differs (the gradients' all-reduce), so the losses agree to float
    # precision. A real difference (one worker's gradient alone, shards that overlap, another data order) moves the
    # loss by 1e-4 or more of itself after one epoch: a resumed run, the same data in another order, differs by 6e-4.
    for key in ("loss", "val_loss", "accuracy", "val_accuracy"):
        assert [row[key] for row in two] == pytest.approx([row[key] for row in one], rel=1e-5, abs=1e-6), key
    assert two[-1]["loss"] < two[0]["loss"] - 0.2  # it learns
    params = MlflowClient(f"sqlite:///{one_and_two[2] / 'mlflow.db'}").get_run(record(one_and_two[2])["run_id"]).data.params
    assert params["workers"] == "2" and params["devices"] == "2"
    assert json.loads((one_and_two[2] / "bundle" / "bundle.json").read_text())["model_name"] == "lstm"
    assert not list((one_and_two[2] / "runs").glob("*/backup*"))  # the chief's backup and the worker's, done with


def test_killed_worker_resumes_from_its_last_checkpoint(tiny_project: Path, tmp_path: Path,
                                                        one_and_two: dict[int, Path]) -> None:
    from mlflow.tracking import MlflowClient

    with pytest.raises(PianolaError, match=r"^worker 0 \(exit status -9; .*of 2 failed"):
        run_cluster(tiny_project, tmp_path, 2, "kill")
    assert not (tmp_path / "bundle").exists()
    (backup,) = (tmp_path / "runs").glob("*/backup")
    assert json.loads((backup / "training_metadata.json").read_text())["epoch"] == 1  # epoch 1 is checkpointed

    run_cluster(tiny_project, tmp_path, 2)  # both workers again, as after any failure
    resumed = record(tmp_path)
    assert resumed["seen"] == [1, 2]  # epoch 1 (0 here) was not trained again
    assert [row["epoch"] for row in resumed["history"]] == [0, 1, 2]
    # Epoch 1 ran before the kill, as in the uninterrupted run; the run goes on from its weights.
    assert resumed["history"][0]["loss"] == pytest.approx(record(one_and_two[1])["history"][0]["loss"], rel=1e-5)
    assert resumed["history"][-1]["loss"] < resumed["history"][0]["loss"] - 0.2
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    assert len(client.get_metric_history(resumed["run_id"], "loss")) == 3  # one MLflow run across the kill
    assert json.loads((tmp_path / "bundle" / "bundle.json").read_text())["model_name"] == "lstm"
    assert not list((tmp_path / "runs").glob("*/backup*")) and not list((tmp_path / "runs").glob("*/state.json"))
