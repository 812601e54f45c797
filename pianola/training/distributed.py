"""Training across worker processes: tf.distribute.MultiWorkerMirroredStrategy, configured from TF_CONFIG.

Every worker runs the same `pianola train` with its own TF_CONFIG (docs/distributed.md). Worker 0 is the chief:
it alone tracks the run in MLflow, saves the bundle and registers it. Each worker reads its shard of the
training windows through tf.data; gradients are summed across workers at every step (a collective all-reduce:
NCCL between GPUs, a ring over gRPC between CPUs), so every worker holds the same weights. TensorFlow only.

`run_local_cluster` starts the workers of a cluster on this machine (ports on 127.0.0.1), for tests and demos.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import time
from collections.abc import Sequence
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path

import keras
import numpy as np

from pianola.data.sequences import EncodedSplit
from pianola.errors import PianolaError
from pianola.models import windows_to_xy_tf


@dataclass(frozen=True)
class Cluster:
    """The workers TF_CONFIG names ("host:port" each), and which of them this process is."""

    workers: tuple[str, ...]
    index: int

    @property
    def chief(self) -> bool:
        return self.index == 0


def cluster_from_env() -> Cluster | None:
    """The cluster TF_CONFIG describes; None where it is unset (one process). A malformed one is a PianolaError."""
    text = os.environ.get("TF_CONFIG", "").strip()
    if not text:
        return None
    try:
        config = json.loads(text)
    except json.JSONDecodeError as e:
        raise PianolaError(f"TF_CONFIG is not JSON ({e})") from None
    cluster = config.get("cluster") if isinstance(config, dict) else None
    task = config.get("task") if isinstance(config, dict) else None
    if not isinstance(cluster, dict) or not isinstance(task, dict):
        raise PianolaError('TF_CONFIG must be {"cluster": {"worker": ["host:port", ...]}, "task": {"type": "worker", "index": i}}')
    if set(cluster) != {"worker"}:
        raise PianolaError(f"TF_CONFIG: pianola trains with one 'worker' job (worker 0 is the chief); it names "
                           f"{', '.join(sorted(map(str, cluster)))}")
    workers = cluster["worker"]
    if not isinstance(workers, list) or not workers or not all(
        isinstance(w, str) and w.rpartition(":")[0] and w.rpartition(":")[2].isdigit() for w in workers
    ):
        raise PianolaError(f"TF_CONFIG: cluster.worker must be a list of \"host:port\" addresses, got {workers!r}")
    index = task.get("index")
    if task.get("type") != "worker" or not isinstance(index, int) or not 0 <= index < len(workers):
        raise PianolaError(f"TF_CONFIG: task must be {{\"type\": \"worker\", \"index\": 0..{len(workers) - 1}}}, got {task!r}")
    return Cluster(tuple(workers), index)


def multi_worker_strategy():
    """The MultiWorkerMirroredStrategy of the TF_CONFIG cluster. Create it before any other TensorFlow work of the
    process: it starts this worker's gRPC server and waits until every worker is up."""
    if keras.backend.backend() != "tensorflow":
        raise PianolaError(f"training across workers (TF_CONFIG is set) needs Keras's TensorFlow backend; "
                           f"KERAS_BACKEND is {keras.backend.backend()!r}")
    import tensorflow as tf

    class Strategy(tf.distribute.MultiWorkerMirroredStrategy):
        """What Keras 3 (3.15) asks of this strategy across workers, which it refuses (keras-team/keras#20585):
        `fit` and `evaluate` reduce a whole (x, y) batch in one call, to build the model's state (here each tensor
        is reduced alone), and the mean of each scalar loss or metric along an axis 0 it lacks (here across the
        replicas, as Keras does on one worker)."""

        def reduce(self, reduce_op, value, axis):
            def one(v):
                scalar = self.experimental_local_results(v)[0].shape.rank == 0
                return super(Strategy, self).reduce(reduce_op, v, None if scalar else axis)

            return tf.nest.map_structure(one, value)

    # The gradients' all-reduce: NCCL between GPUs, asked for by name (AUTO leaves it to the runtime), a ring of
    # gRPC messages between CPUs. Listing physical devices leaves TensorFlow unstarted.
    gpus = tf.config.list_physical_devices("GPU")
    implementation = tf.distribute.experimental.CommunicationImplementation
    options = tf.distribute.experimental.CommunicationOptions(implementation=implementation.NCCL if gpus else implementation.RING)
    try:
        return Strategy(communication_options=options)
    except RuntimeError as e:
        if "program startup" not in str(e):
            raise
        raise PianolaError("TF_CONFIG is set, but this process has already run TensorFlow: a worker of a cluster "
                           "trains once, in a process of its own (`pianola train`)") from None


def window_dataset(split: EncodedSplit, window: int, input_kind: str, vocab_size: int, batch_size: int, seed: int,
                   *, shards: int = 1, shard: int = 0, transposition: np.ndarray | None = None):
    """An endless tf.data stream of (x, y) batches of `batch_size` windows of `split`: shard `shard` of `shards`.

    The stream draws every window start of the split in a seeded random order, pass after pass (another order
    each pass), cut into batches; shard k takes batches k, k + shards, k + 2 * shards... So the shards are
    disjoint, and step by step they hold together what one shard of batches `shards` times as large would: a
    global batch is the same whatever the number of workers. Only the ids and the starts are held; a batch's
    windows are gathered from the ids as it is drawn. x and y are those of `windows_to_xy`. With a
    transposition table (train.transposition_table), each window moves by a seeded random shift, unless that
    would turn one of its tokens into `<unk>` (as train.WindowBatches does).
    """
    import tensorflow as tf

    starts = split.window_starts(window)
    if not len(starts):
        raise PianolaError(f"no piece is longer than the window ({window} tokens): no window to train on")
    count = len(starts)
    starts_t, ids = tf.constant(starts, tf.int64), tf.constant(split.ids, tf.int32)
    table = None if transposition is None else tf.constant(transposition, tf.int32)
    offsets = tf.range(window + 1, dtype=tf.int64)

    def draw(i):  # the stream's window i: position i % count of pass i // count's order, and its shift
        position = tf.random.experimental.index_shuffle(i % count, tf.stack([tf.constant(seed, tf.int64), i // count]), count - 1)
        row = tf.constant(0, tf.int64) if table is None else tf.random.stateless_uniform(
            [], tf.stack([tf.constant(seed, tf.int64), -1 - i]), maxval=len(transposition), dtype=tf.int64)
        return tf.gather(starts_t, position), row

    def to_xy(batch_starts, rows):
        windows = tf.gather(ids, batch_starts[:, None] + offsets)  # (B, window + 1)
        if table is not None:
            moved = tf.gather(tf.gather(table, rows), windows, batch_dims=1)  # (B, window + 1)
            intact = tf.reduce_all((moved != 0) | (windows == 0), axis=1)
            windows = tf.where(intact[:, None], moved, windows)
        return windows_to_xy_tf(windows, input_kind, vocab_size)

    batches = tf.data.Dataset.counter().map(draw).batch(batch_size, drop_remainder=True).shard(shards, shard)
    return batches.map(to_xy, num_parallel_calls=tf.data.AUTOTUNE).prefetch(tf.data.AUTOTUNE)


def distributed_windows(strategy, split: EncodedSplit, window: int, input_kind: str, vocab_size: int,
                        global_batch: int, seed: int, transposition: np.ndarray | None = None):
    """`window_dataset` for each worker of `strategy`: its shard, in batches of global_batch / replicas."""
    replicas = strategy.num_replicas_in_sync
    if global_batch % replicas:
        raise PianolaError(f"the batch size ({global_batch}) must be a multiple of the {replicas} replicas training")

    def shard(context):
        return window_dataset(split, window, input_kind, vocab_size, context.get_per_replica_batch_size(global_batch),
                              seed, shards=context.num_input_pipelines, shard=context.input_pipeline_id,
                              transposition=transposition)

    return strategy.distribute_datasets_from_function(shard)


def worker_vote(strategy):
    """A function of a flag: whether it holds on any worker. A collective: every worker calls it at the same point."""
    import tensorflow as tf

    @tf.function  # eager, each call would cost tens of milliseconds
    def votes(flag):
        return strategy.reduce(tf.distribute.ReduceOp.SUM, strategy.run(lambda: flag), axis=None)

    return lambda flag: float(votes(tf.constant(1.0 if flag else 0.0))) > 0


class WorkerBackup(keras.callbacks.BackupAndRestore):
    """A non-chief worker's BackupAndRestore: it resumes from the chief's backup, so that every worker restarts
    from the same epoch with the same weights, and writes its own (which tf.distribute asks of every worker) to a
    folder of its own, deleted when training ends. The chief's folder must be one every worker can read."""

    def __init__(self, chief_dir: Path, own_dir: Path):
        super().__init__(str(own_dir))
        self.chief = keras.callbacks.BackupAndRestore(str(chief_dir), delete_checkpoint=False)

    def set_model(self, model) -> None:
        super().set_model(model)
        self.chief.set_model(model)

    def on_train_begin(self, logs: dict | None = None) -> None:
        self.chief.on_train_begin(logs)


def tf_config(workers: Sequence[str], index: int) -> str:
    """The TF_CONFIG of worker `index` of a cluster of `workers`."""
    return json.dumps({"cluster": {"worker": list(workers)}, "task": {"type": "worker", "index": index}})


def free_ports(count: int) -> list[int]:
    """`count` distinct TCP ports free on 127.0.0.1 (held together while chosen)."""
    with ExitStack() as stack:
        sockets = [stack.enter_context(socket.socket()) for _ in range(count)]
        for s in sockets:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in sockets]


def run_local_cluster(command: Sequence[str], workers: int, log_dir: str | os.PathLike, *,
                      cwd: str | os.PathLike | None = None, env: dict[str, str] | None = None) -> None:
    """Run `command` as the `workers` worker processes of one cluster on this machine, each with its TF_CONFIG
    (addresses on 127.0.0.1), and wait for them all.

    Worker 0 (the chief) writes to this process's stdout and stderr, worker i to `log_dir`/worker-i.log. A
    cluster cannot go on without one of its workers: when one fails, the others are stopped and a PianolaError
    names it. Running the same command again resumes from the last finished epoch.
    """
    if workers < 1:
        raise PianolaError(f"a cluster needs at least one worker, got {workers}")
    log_dir = Path(log_dir)
    log_dir.mkdir(parents=True, exist_ok=True)
    addresses = [f"127.0.0.1:{port}" for port in free_ports(workers)]
    processes: list[subprocess.Popen] = []
    with ExitStack() as stack:
        stack.callback(lambda: [stop(p) for p in processes])
        for index in range(workers):
            log = None if index == 0 else stack.enter_context(open(log_dir / f"worker-{index}.log", "wb"))
            processes.append(subprocess.Popen(
                list(command), cwd=cwd, env={**(os.environ if env is None else env), "TF_CONFIG": tf_config(addresses, index)},
                stdout=log, stderr=subprocess.STDOUT if log else None, start_new_session=True))
        while True:
            codes = [p.poll() for p in processes]
            failed = [(i, code) for i, code in enumerate(codes) if code not in (None, 0)]
            if failed:  # the first to fail stops the others' collectives: several may be seen at once
                logs = ["its output is above"] + [f"see {log_dir / f'worker-{i}.log'}" for i in range(1, workers)]
                which = ", ".join(f"worker {i} (exit status {code}; {logs[i]})" for i, code in failed)
                raise PianolaError(f"{which} of {workers} failed; the others were stopped: run the same command "
                                   "again to resume from the last finished epoch")
            if all(code == 0 for code in codes):
                return
            time.sleep(0.2)


def stop(process: subprocess.Popen) -> None:
    """Stop a worker process and its children (it leads its own process group) with SIGKILL: a worker's
    MultiWorkerMirroredStrategy catches SIGTERM (TensorFlow's preemption handler) and the worker runs on.
    Training writes its state atomically and its checkpoints in turn, so a kill at any point leaves a run to
    resume."""
    if process.poll() is None:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()
