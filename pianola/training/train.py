"""The train stage: sequences -> a zoo model, tracked in MLflow, saved as one bundle, registered.

Each epoch is checkpointed (BackupAndRestore) so a killed run resumes where it stopped; early
stopping watches the validation loss; a time budget can end training at any batch. Where TF_CONFIG names a
cluster, this process is one of its workers (pianola/training/distributed.py, docs/distributed.md).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import keras
import numpy as np
import requests
from mlflow.exceptions import MlflowException

from pianola import tracking
from pianola.data.sequences import EncodedSplit
from pianola.data.vocab import Vocabulary
from pianola.errors import PianolaError
from pianola.evaluation.heldout import held_out_metrics
from pianola.io import atomic_write_json
from pianola.models import build_model, model_spec, windows_to_xy
from pianola.models.bundle import Bundle, read_bundle_meta, training_primers
from pianola.plots import training_curves
from pianola.serving.pyfunc import register_bundle
from pianola.tokenizers import tokenizer_from_config
from pianola.training.distributed import (
    WorkerBackup,
    cluster_from_env,
    distributed_windows,
    multi_worker_strategy,
    worker_vote,
)

PRESETS = ("demo", "paper", "best")


@dataclass
class TrainConfig:
    """Everything that decides a training run (logged to MLflow as params)."""

    model: str
    preset: str
    epochs: int
    batch_size: int
    windows_per_epoch: int | None  # training windows drawn per epoch; None: every window
    valid_windows: int  # validation windows scored after each epoch (a fixed, seeded subset)
    patience: int  # epochs without a better validation loss before stopping
    max_minutes: float | None  # wall-clock budget; training stops at the first batch past it
    seed: int = 0
    model_options: dict[str, Any] = field(default_factory=dict)  # build_model overrides
    # Each training window is moved by a random -transpose..+transpose semitones (0: never).
    # Most of a small corpus's pieces sit in a few keys; transposed copies teach key-free patterns.
    transpose: int = 0

    def fingerprint(self) -> str:
        return hashlib.sha256(json.dumps(dataclasses.asdict(self), sort_keys=True).encode()).hexdigest()[:16]


def preset_config(model: str, preset: str, **overrides: Any) -> TrainConfig:
    """The config of `preset` for `model`; `overrides` replace single fields.

    demo: a small run for minutes on 2 CPU cores (a smoke test of the whole pipeline);
    paper: the paper's epochs, batch size and optimizer for the chosen model;
    best: our best settings on the piano corpus, within 30 minutes on 2 CPU cores.
    """
    spec = model_spec(model)
    tokens = spec.input_kind == "tokens"
    base = spec.preset
    if preset == "demo":
        config = TrainConfig(
            model, preset, epochs=3, batch_size=32 if tokens else base["batch_size"],
            windows_per_epoch=256 if tokens else 2048, valid_windows=512, patience=2, max_minutes=10,
            model_options={"embed_dim": 64, "units": 128, "layers": 1} if tokens else {},
        )
    elif preset == "paper":
        config = TrainConfig(
            model, preset, epochs=base["epochs"], batch_size=base["batch_size"], windows_per_epoch=None,
            valid_windows=4096, patience=5, max_minutes=None,
            model_options={"optimizer": base["optimizer"], "learning_rate": base["learning_rate"]},
        )
    elif preset == "best":
        config = TrainConfig(
            model, preset, epochs=200 if tokens else base["epochs"], batch_size=32 if tokens else base["batch_size"],
            windows_per_epoch=None if tokens else 20_000, valid_windows=4096, patience=6, max_minutes=28,
            # 2 x 256 fits the corpus in the budget and generates 32 pieces in about a second; Adam at
            # 5e-3 leaves the unigram plateau several times sooner than 2e-3; transposed copies keep
            # the validation loss falling where the same model without them overfits; pitch classes
            # (LSTMConfig.pitch_classes) teach it key, which it did not learn from 88 separate pitches.
            model_options={"embed_dim": 128, "units": 256, "layers": 2, "dropout": 0.3, "learning_rate": 5e-3,
                           "pitch_classes": True} if tokens else {},
            transpose=5 if tokens else 0,
        )
    else:
        raise PianolaError(f"unknown preset {preset!r}; choose one of: {', '.join(PRESETS)}")
    unknown = set(overrides) - {f.name for f in dataclasses.fields(TrainConfig)}
    if unknown:
        raise PianolaError(f"unknown training setting(s): {', '.join(sorted(unknown))}")
    return dataclasses.replace(config, **overrides)


def transposition_table(vocab: Vocabulary, tokenizer, max_shift: int) -> np.ndarray:
    """(2 * max_shift + 1, V) ids: row s maps each id to its transposition by s - max_shift semitones.

    A token whose transposition is out of range or not in the vocabulary maps to 0 (`<unk>`).
    """
    table = np.zeros((2 * max_shift + 1, len(vocab)), dtype=np.int32)
    for row, shift in enumerate(range(-max_shift, max_shift + 1)):
        moved = [tokenizer.transpose(token, shift) for token in vocab.tokens]
        table[row] = vocab.encode([t if t is not None else "<unk>" for t in moved])
    table[:, 0] = 0
    return table


def epoch_windows(split: EncodedSplit, window: int, input_kind: str, limit: int | None) -> int:
    """How many training windows an epoch draws.

    `tokens` models learn from every position of a window, so overlapping windows repeat work:
    len(tokens) / window windows (about one pass over the data). `scalar` models (the paper's) see
    every stride-1 window. At most `limit`.
    """
    starts = len(split.window_starts(window))
    count = starts if input_kind == "scalar" else max(1, len(split.ids) // window)
    return min(count, limit or count, starts)


class WindowBatches(keras.utils.PyDataset):
    """Batches of (x, y) drawn from a split's windows, redrawn every epoch: epoch_windows() of them, at
    random starts, shuffled.

    With a transposition table, each window is moved by a random shift, unless that would turn
    one of its tokens into `<unk>` (then it stays as it is).
    """

    def __init__(self, split: EncodedSplit, window: int, input_kind: str, vocab_size: int,
                 batch_size: int, limit: int | None, seed: int, transposition: np.ndarray | None = None):
        super().__init__()
        self.split, self.window, self.input_kind, self.vocab_size = split, window, input_kind, vocab_size
        self.batch_size = batch_size
        self.transposition = transposition
        self.all_starts = split.window_starts(window)
        self.count = epoch_windows(split, window, input_kind, limit)
        self.rng = np.random.default_rng(seed)
        self.on_epoch_end()

    def on_epoch_end(self) -> None:
        self.starts = self.rng.choice(self.all_starts, size=self.count, replace=False)

    def __len__(self) -> int:
        return math.ceil(self.count / self.batch_size)

    def __getitem__(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        starts = self.starts[index * self.batch_size : (index + 1) * self.batch_size]
        windows = self.split.windows(starts, self.window)  # (B, window + 1)
        if self.transposition is not None:
            rows = self.rng.integers(0, len(self.transposition), size=len(windows))
            moved = np.take_along_axis(self.transposition[rows], windows, axis=1)  # (B, window + 1)
            intact = ((moved != 0) | (windows == 0)).all(axis=1)
            windows = np.where(intact[:, None], moved, windows)
        return windows_to_xy(windows, self.input_kind, self.vocab_size)


def validation_arrays(split: EncodedSplit, window: int, input_kind: str, vocab_size: int, count: int, seed: int):
    """A fixed, seeded subset of validation windows as (x, y)."""
    starts = split.window_starts(window)
    if input_kind == "tokens":
        starts = starts[::window]  # every position is a target: non-overlapping windows suffice
    if len(starts) > count:
        starts = np.sort(np.random.default_rng(seed).choice(starts, size=count, replace=False))
    return windows_to_xy(split.windows(starts, window), input_kind, vocab_size)


class TimeBudget(keras.callbacks.Callback):
    """Stop training at the first batch after `minutes` of wall-clock time. With the `strategy` of a cluster, its
    workers vote after every batch, so that they all stop at the same one (when the first runs out of time)."""

    def __init__(self, minutes: float | None, strategy=None):
        super().__init__()
        self.seconds = None if minutes is None else minutes * 60
        self.start = time.monotonic()
        self.vote = None if strategy is None else worker_vote(strategy)

    def on_train_batch_end(self, batch: int, logs: dict | None = None) -> None:
        if self.seconds is None:
            return
        over = time.monotonic() - self.start > self.seconds
        if over if self.vote is None else self.vote(over):
            self.model.stop_training = True


class MlflowMetrics(keras.callbacks.Callback):
    """Per-epoch train/validation loss and accuracy to the active MLflow run, and to `history`."""

    def __init__(self, history: list[dict]):
        super().__init__()
        self.history = history
        self.start = time.monotonic()

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        import mlflow

        row = {k: float(v) for k, v in (logs or {}).items() if k in {"loss", "accuracy", "val_loss", "val_accuracy"}}
        row["seconds"] = round(time.monotonic() - self.start, 1)
        mlflow.log_metrics(row, step=epoch)
        # A rerun after a kill may replay epochs the saved history already holds: each epoch is kept once.
        self.history[:] = [h for h in self.history if h["epoch"] < epoch]
        self.history.append({"epoch": epoch, **row})


def distribution_strategy():
    """A MirroredStrategy when TensorFlow sees several GPUs (or several logical CPUs), else None."""
    if keras.backend.backend() != "tensorflow":
        return None
    import tensorflow as tf

    gpus = tf.config.list_logical_devices("GPU")
    devices = gpus if gpus else tf.config.list_logical_devices("CPU")
    if len(devices) < 2:
        return None
    return tf.distribute.MirroredStrategy([d.name for d in devices])


@dataclass
class TrainResult:
    bundle_dir: Path
    run_id: str
    version: str | None
    metrics: dict[str, Any]
    history: list[dict]
    epochs_run: int

    def summary(self) -> str:
        held = self.metrics
        line = (
            f"trained {self.epochs_run} epoch(s); held-out cross-entropy {held['cross_entropy']:.4f} nats, "
            f"accuracy {held['accuracy']:.2%}; bundle {self.bundle_dir}; MLflow run {self.run_id}"
        )
        return line + (f"; registered pianola version {self.version} as candidate" if self.version else "")


def fit_verbosity() -> int:
    """Keras `verbose` for the training output: its progress bar on a terminal, else one plain line per epoch (2).

    Keras redraws the bar with ANSI codes, backspaces and carriage returns wherever it runs on POSIX, even into a
    file or a pipe, so `pianola train > log` (and a DVC stage, a flow's log) would hold them.
    """
    return 1 if getattr(sys.stdout, "isatty", lambda: False)() else 2


def train(
    sequences_dir: str | os.PathLike,
    out: str | os.PathLike,
    config: TrainConfig,
    *,
    work_dir: str | os.PathLike = "models/.work",
    register: bool = True,
    verbose: int | None = None,
    extra_callbacks: list[keras.callbacks.Callback] | None = None,
) -> TrainResult | None:
    """Train `config.model` on the sequences in `sequences_dir`; write the bundle to `out`.

    A run interrupted (killed, crashed) resumes from its last finished epoch when called again
    with the same data and config: the checkpoint and the MLflow run id live in `work_dir`. `verbose` is Keras's
    (None: fit_verbosity()).

    Where TF_CONFIG names a cluster, every worker calls this with the same arguments (and a `work_dir` they all
    see): they train one model on a tf.data shard each, `config.batch_size` windows a step between them all, and
    worker 0, the chief, does the rest (MLflow, the bundle, the registry). The other workers return None.
    """
    import mlflow

    cluster = cluster_from_env()
    sequences_dir, out = Path(sequences_dir), Path(out)
    vocab = Vocabulary.load(sequences_dir / "vocab.json")
    meta = json.loads((sequences_dir / "meta.json").read_text())
    train_split = EncodedSplit.load(sequences_dir / "train.npz")
    valid_split = EncodedSplit.load(sequences_dir / "valid.npz")
    tokenizer_config = json.loads((sequences_dir / "tokenizer.json").read_text())
    window = int(meta["window"])
    spec = model_spec(config.model)
    if not len(valid_split.window_starts(window)):
        raise PianolaError(f"{sequences_dir}: no validation piece is longer than the window; raise sequences.valid_fraction")

    # The first TensorFlow work: a cluster's strategy starts this worker's server and waits for the others.
    strategy = multi_worker_strategy() if cluster else distribution_strategy()
    keras.utils.set_random_seed(config.seed)
    run_dir = Path(work_dir) / f"{config.model}-{config.fingerprint()}-{vocab.fingerprint[:8]}"
    run_dir.mkdir(parents=True, exist_ok=True)
    state_path = run_dir / "state.json"
    state = json.loads(state_path.read_text()) if state_path.exists() else {}

    tokenizer = tokenizer_from_config(tokenizer_config)
    pitches = [tokenizer.pitch(token) for token in vocab.tokens]
    transposition = transposition_table(vocab, tokenizer, config.transpose) if config.transpose else None
    fit_args: dict[str, Any] = {"validation_data": validation_arrays(valid_split, window, spec.input_kind, len(vocab),
                                                                     config.valid_windows, config.seed),
                                "epochs": config.epochs, "verbose": fit_verbosity() if verbose is None else verbose}
    if cluster:
        batches = distributed_windows(strategy, train_split, window, spec.input_kind, len(vocab), config.batch_size,
                                      config.seed, transposition)
        # An endless stream, shuffled already: every worker takes the same number of steps, of whole global batches.
        fit_args["steps_per_epoch"] = max(1, epoch_windows(train_split, window, spec.input_kind,
                                                           config.windows_per_epoch) // config.batch_size)
        fit_args["shuffle"] = False
    else:
        batches = WindowBatches(train_split, window, spec.input_kind, len(vocab), config.batch_size,
                                config.windows_per_epoch, config.seed, transposition)

    if strategy is None:
        model = build_model(config.model, len(vocab), window, pitches=pitches, **config.model_options)
    else:
        with strategy.scope():
            model = build_model(config.model, len(vocab), window, pitches=pitches, **config.model_options)

    # On every worker of a cluster, in this order: the backups and the budget's votes are collectives.
    shared_callbacks: list[keras.callbacks.Callback] = [
        keras.callbacks.EarlyStopping(monitor="val_loss", patience=config.patience, restore_best_weights=True),
        TimeBudget(config.max_minutes, strategy if cluster else None),
        *(extra_callbacks or []),
    ]
    if cluster and not cluster.chief:
        backup = WorkerBackup(run_dir / "backup", run_dir / f"backup-worker-{cluster.index}")
        model.fit(batches, callbacks=[backup, *shared_callbacks], **fit_args)
        return None

    uri = tracking.setup()  # an unreachable tracking server fails here, before any training
    history: list[dict] = state.get("history", [])
    saved, version = False, None
    try:
        with mlflow.start_run(run_id=state.get("run_id"), run_name=f"{config.model}-{config.preset}") as run:
            if "run_id" not in state:
                mlflow.log_params({k: v for k, v in dataclasses.asdict(config).items() if k != "model_options"})
                mlflow.log_params({f"model.{k}": v for k, v in config.model_options.items()})
                mlflow.log_params({"vocab_size": len(vocab), "window": window, "tokenizer": tokenizer_config["name"],
                                   "train_windows": len(train_split.window_starts(window)),
                                   "train_pieces": len(train_split.pieces), "valid_pieces": len(valid_split.pieces),
                                   "parameters": model.count_params(),
                                   "devices": strategy.num_replicas_in_sync if strategy else 1,
                                   "workers": len(cluster.workers) if cluster else 1})
                mlflow.set_tags(tracking.environment())
                lines: list[str] = []
                model.summary(print_fn=lambda line, *args, **kwargs: lines.append(line))
                mlflow.log_text("\n".join(lines), "model_summary.txt")
            state["run_id"] = run.info.run_id
            atomic_write_json(state_path, state)

            class SaveState(keras.callbacks.Callback):
                def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
                    atomic_write_json(state_path, {"run_id": run.info.run_id, "history": history})

            callbacks: list[keras.callbacks.Callback] = [
                MlflowMetrics(history),
                SaveState(),  # before the checkpoint: a kill between the two never leaves an epoch out of the history
                # Two checkpoints, written in turn: a kill while one is written leaves the other to resume from.
                keras.callbacks.BackupAndRestore(str(run_dir / "backup"), double_checkpoint=True),
                *shared_callbacks,
            ]
            if keras.backend.backend() == "tensorflow":
                callbacks.append(keras.callbacks.TensorBoard(log_dir=str(Path("logs") / run.info.run_id)))
            model.fit(batches, callbacks=callbacks, **fit_args)
            if cluster:  # the chief alone saves and scores the model: a copy outside the strategy, no collectives
                weights = model.get_weights()
                model = build_model(config.model, len(vocab), window, pitches=pitches, **config.model_options)
                model.set_weights(weights)

            bundle = Bundle(model, vocab, tokenizer_config, window, config.model, spec.input_kind,
                            info={"valid_pieces": valid_split.pieces, "train_pieces": len(train_split.pieces),
                                  "preset": config.preset, "run_id": run.info.run_id, "history": history},
                            primers=training_primers(train_split, window, config.seed))
            held_out = held_out_metrics(bundle, valid_split).to_json()
            bundle.info["heldout"] = held_out
            bundle.save(out)  # first: whatever happens to MLflow now, the trained model is kept
            saved = True
            version = record_bundle(out, config.model, bundle.info, register)
    except (MlflowException, requests.RequestException) as e:
        raise tracking_failed(uri, out, saved, version, e) from None
    # Finished: the next call with this config starts afresh.
    state_path.unlink(missing_ok=True)
    return TrainResult(out, run.info.run_id, version, held_out, history, len(history))


def record_bundle(out: Path, model_name: str, info: dict, register: bool = True) -> str | None:
    """In the active MLflow run: a saved bundle's held-out metrics and loss curves, and (when `register`) the
    bundle as the next registered version, alias candidate; the version."""
    import mlflow

    mlflow.log_metrics({f"heldout_{k}": v for k, v in info["heldout"].items() if v is not None})
    if info.get("history"):
        with tempfile.TemporaryDirectory(prefix="pianola-curves-") as folder:
            curves = Path(folder) / "loss_curves.png"
            training_curves(info["history"], curves, title=f"{model_name} ({info.get('preset')})")
            mlflow.log_artifact(str(curves))
    return register_bundle(out) if register else None


def tracking_failed(uri: str, out: Path, saved: bool, version: str | None, error: Exception) -> PianolaError:
    """What to tell a user whose training run lost its MLflow server, and what finishes the job."""
    reason = str(error).splitlines()[0][:300]
    if not saved:
        return PianolaError(f"MLflow at {uri} failed during training ({reason}); the epochs done are checkpointed: "
                            "rerun the same command to resume once the server is back")
    if version is not None:
        return PianolaError(f"{out}: trained and registered as version {version}, but MLflow at {uri} failed while "
                            f"closing the run ({reason})")
    return PianolaError(f"{out}: the model is trained and saved, but MLflow at {uri} failed while recording it "
                        f"({reason}); once the server is back, finish with: pianola register --model {out}")


def register_trained(bundle_dir: str | os.PathLike) -> str:
    """Finish what training could not, MLflow being away at its end: the bundle's metrics into its own run, and the
    bundle registered (alias candidate); the version."""
    import mlflow

    bundle_dir = Path(bundle_dir)
    meta = read_bundle_meta(bundle_dir)
    info = meta.get("info", {})
    if not info.get("run_id") or "heldout" not in info:
        raise PianolaError(f"{bundle_dir}: the bundle names no training run or held-out metrics to record")
    uri = tracking.setup()
    try:
        with mlflow.start_run(run_id=info["run_id"]):
            return record_bundle(bundle_dir, meta["model_name"], info)
    except (MlflowException, requests.RequestException) as e:
        raise PianolaError(f"{bundle_dir}: MLflow at {uri} failed ({str(e).splitlines()[0][:300]})") from None
