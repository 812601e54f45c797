"""`pianola benchmark train`: a `roll-lstm` fitted to a benchmark's train split.

Training reads random crops of `window` tokens from the serialised train pieces, each moved by a
random transposition (augmentation, training only); after every epoch the whole valid split is
scored with the exact frame likelihood, and training stops when it has not improved for
`patience` epochs or when the preset's wall-clock budget is spent. The best epoch's weights are
kept. Under a fixed budget two things buy the most likelihood per CPU minute: bfloat16 mixed
precision (about twice the tokens per second on CPUs with bfloat16 units; scoring and the saved
model stay float32) and a learning rate that decays linearly with the time spent, to a small
fraction at the budget's end (Li, Yumer, Ramanan 2020, "Budgeted training"). On a small split,
where one network leaves a core idle, several train side by side, a process and a core each, and
the saved model is their mixture. The run is tracked in MLflow (experiment `pianola-bench-DATASET`)
and registered.
"""

from __future__ import annotations

import dataclasses
import multiprocessing
import os
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import keras
import numpy as np

from pianola import tracking
from pianola.benchmark.bundle import load_benchmark_model, registered_name, save_benchmark_model
from pianola.benchmark.data import load_rolls
from pianola.benchmark.likelihood import FrameScore, RollScorer, score, serialise
from pianola.errors import PianolaError
from pianola.models.roll import RollLSTMConfig, build_roll_lstm, context_width, mixture_of
from pianola.training.train import TimeBudget


@dataclass(frozen=True)
class BenchmarkPreset:
    """Everything that decides a benchmark training run (logged to MLflow as params)."""

    name: str
    model: RollLSTMConfig
    window: int  # tokens per training crop
    batch_size: int  # crops per batch at most: a small train split gets fewer (see `batch_for`)
    learning_rate: float
    transpose: int  # each crop moves by a random shift in -transpose..transpose semitones (0: never)
    max_minutes: float  # the wall-clock budget of training (validation included)
    patience: int  # epochs without a better valid NLL before stopping
    min_steps: int  # batches per epoch at least (an epoch is otherwise one pass over the train tokens)
    precision: str = "float32"  # the Keras dtype policy of training ("mixed_bfloat16": twice as fast on CPU)
    final_lr: float = 1.0  # the learning rate at the budget's end, as a fraction of `learning_rate` (1: constant)
    updates_per_pass: int = 1  # the batch halves (to 16 at least) until a pass over the train split is this many batches
    small_split_members: int = 1  # networks trained side by side, and mixed, when the split is small (see `members_for`)

    def batch_for(self, train_tokens: int) -> int:
        """The batch size for a train split of `train_tokens` tokens: a small split is update-bound, not
        token-bound, so it gets smaller batches and more updates in the same budget."""
        batch = self.batch_size
        while batch > 16 and train_tokens / (batch * self.window) < self.updates_per_pass:
            batch //= 2
        return batch

    def members_for(self, train_tokens: int) -> int:
        """How many networks to train on a split of `train_tokens` tokens. A split small enough to have its batch cut
        (`batch_for`) leaves cores idle under one network (JSB: 36 CPU minutes of 56 on 2 cores); there,
        `small_split_members` networks train side by side, a core each, and their distributions are averaged."""
        return self.small_split_members if self.batch_for(train_tokens) < self.batch_size else 1

    def params(self) -> dict[str, Any]:
        flat = {k: v for k, v in dataclasses.asdict(self).items() if k != "model"}
        flat.update({f"model.{k}": v for k, v in dataclasses.asdict(self.model).items()})
        return flat


PRESETS = {
    # A smoke test: a tiny model for about a minute.
    "demo": BenchmarkPreset("demo", RollLSTMConfig(embed_dim=16, units=64, layers=1, dropout=0.1), window=128,
                            batch_size=16, learning_rate=3e-3, transpose=6, max_minutes=1.0, patience=2, min_steps=20),
    # Ours: at most 30 minutes of training per dataset on 2 CPU cores.
    "best": BenchmarkPreset("best", RollLSTMConfig(embed_dim=64, units=384, layers=2, dropout=0.3), window=256,
                            batch_size=128, learning_rate=3e-3, transpose=6, max_minutes=28.0, patience=4, min_steps=40,
                            precision="mixed_bfloat16", final_lr=0.05, updates_per_pass=8, small_split_members=2),
}


def preset(name: str, **overrides: Any) -> BenchmarkPreset:
    if name not in PRESETS:
        raise PianolaError(f"unknown benchmark preset {name!r}; choose one of: {', '.join(PRESETS)}")
    return dataclasses.replace(PRESETS[name], **overrides)


class RollCrops(keras.utils.PyDataset):
    """Batches of random `window`-token crops of the serialised pieces, transposed at random.

    A crop starts anywhere in a piece (pieces drawn in proportion to their length), so every
    token is as likely to be trained on; a piece shorter than the window is padded, with zero
    weight on the padding. A shift is drawn among those that keep the piece on the keyboard.
    """

    def __init__(self, pieces: list[np.ndarray], window: int, batch_size: int, steps: int, transpose: int, seed: int):
        super().__init__()
        self.serial = [serialise(p) for p in pieces]
        self.keys = self.serial[0].roll.shape[1]
        self.window, self.batch_size, self.steps, self.transpose = window, batch_size, steps, transpose
        lengths = np.array([len(s.targets) for s in self.serial], dtype=np.float64)
        self.weights = lengths / lengths.sum()
        sounding = [np.flatnonzero(s.roll.any(axis=0)) for s in self.serial]
        self.ranges = [(int(s[0]), int(s[-1])) if len(s) else (0, self.keys - 1) for s in sounding]
        self.rng = np.random.default_rng(seed)

    def __len__(self) -> int:
        return self.steps

    def __getitem__(self, index: int):
        b, t, keys = self.batch_size, self.window, self.keys
        tokens = np.full((b, t), keys, dtype=np.int32)
        context = np.zeros((b, t, context_width(keys)), dtype=np.float32)
        targets = np.zeros((b, t), dtype=np.int32)
        weight = np.zeros((b, t), dtype=np.float32)
        for row, piece in enumerate(self.rng.choice(len(self.serial), size=b, p=self.weights)):
            s = self.serial[piece]
            start = int(self.rng.integers(0, max(1, len(s.targets) - t + 1)))
            crop = slice(start, start + t)
            n = len(s.targets[crop])
            low, high = self.ranges[piece]
            shift = int(self.rng.integers(max(-self.transpose, -low), min(self.transpose, keys - 1 - high) + 1))
            x, y = s.inputs[crop].copy(), s.targets[crop].copy()
            x[x < keys] += shift
            y[y < keys] += shift
            tokens[row, :n], targets[row, :n], weight[row, :n] = x, y, 1.0
            context[row, :n] = s.context(crop, shift)
        return (tokens, context), targets, weight


class BudgetDecay(keras.callbacks.Callback):
    """The learning rate falls linearly with wall-clock time, from `base` to `base * final` at the budget's end."""

    def __init__(self, base: float, final: float, minutes: float):
        super().__init__()
        self.base, self.final, self.budget = base, final, minutes * 60
        self.start = time.monotonic()

    def on_train_batch_begin(self, batch: int, logs: dict | None = None) -> None:
        spent = min(1.0, (time.monotonic() - self.start) / self.budget)
        self.model.optimizer.learning_rate.assign(self.base * (1.0 - (1.0 - self.final) * spent))


class ValidScore(TimeBudget):
    """After each epoch: the exact NLL per frame of the whole valid split, scored by `scoring` (a float32
    model of the same shape, given the trained weights); keeps the best weights, stops after `patience`
    epochs without a better one, or past the time budget (at a batch, as TimeBudget, or at an epoch's
    end, so that no further validation is spent)."""

    def __init__(self, scoring: keras.Model, pieces: list[np.ndarray], patience: int, minutes: float,
                 history: list[dict], log=None):
        super().__init__(minutes)
        self.scoring, self.pieces, self.patience, self.history, self.log = scoring, pieces, patience, history, log
        self.best: FrameScore | None = None
        self.best_weights = None
        self.waited = 0

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        self.scoring.set_weights(self.model.get_weights())
        result = score(self.scoring, self.pieces, "valid")
        elapsed = time.monotonic() - self.start
        row = {"epoch": epoch, "loss": float((logs or {}).get("loss", float("nan"))),
               "valid_nll_per_frame": result.nll_per_frame, "seconds": round(elapsed, 1),
               "learning_rate": float(self.model.optimizer.learning_rate)}
        self.history.append(row)
        if self.log:
            self.log(row)
        if self.best is None or result.nll_per_frame < self.best.nll_per_frame:
            self.best, self.best_weights, self.waited = result, self.model.get_weights(), 0
        else:
            self.waited += 1
            if self.waited >= self.patience:
                self.model.stop_training = True
        if elapsed > self.seconds:
            self.model.stop_training = True


@dataclass
class BenchmarkResult:
    dataset: str
    out: Path
    valid: FrameScore
    history: list[dict]
    minutes: float
    run_id: str | None
    version: str | None

    def summary(self) -> str:
        line = (f"{self.dataset}: valid NLL {self.valid.nll_per_frame:.4f} nats/frame "
                f"({self.valid.nll_per_frame_first_excluded:.4f} first frame excluded) after {len(self.history)} epoch(s), "
                f"{self.minutes:.1f} min; model {self.out}")
        return line + (f"; registered {registered_name(self.dataset)} version {self.version}" if self.version else "")


def _train_member(core: int | None, data: str, out: Path, preset_name: str, seed: int, overrides: dict) -> None:
    """One member of a mixture, in a process of its own: on one core (when given), one thread, untracked."""
    if core is not None:
        os.sched_setaffinity(0, {core})
    if keras.backend.backend() == "tensorflow":
        import tensorflow as tf

        tf.config.threading.set_intra_op_parallelism_threads(1)
        tf.config.threading.set_inter_op_parallelism_threads(1)
    train_benchmark(data, out, preset_name, seed=seed, track=False, **{**overrides, "small_split_members": 1})


def train_members(data: str, preset_name: str, seed: int, overrides: dict, shape: RollLSTMConfig,
                  scratch: Path) -> tuple[keras.Model, list[dict]]:
    """Train `shape.members` networks side by side, each in a process of its own on a core of its own, with seeds
    seed, seed + 1, ... (their own first weights, crops and transpositions); each keeps its best epoch. -> (the
    float32 mixture holding their weights, their histories, each row marked with its member)."""
    cores = sorted(os.sched_getaffinity(0))
    spawn = multiprocessing.get_context("spawn")  # a fresh interpreter: a forked TensorFlow runtime is not safe
    workers = [spawn.Process(target=_train_member, daemon=True,
                             args=(cores[m] if len(cores) >= shape.members else None, data, scratch / f"member-{m}",
                                   preset_name, seed + m, overrides))
               for m in range(shape.members)]
    for worker in workers:
        worker.start()
    for m, worker in enumerate(workers):
        worker.join()
        if worker.exitcode:
            raise PianolaError(f"{data}: member {m} of {shape.members} failed in training (exit code {worker.exitcode})")
    networks, history = [], []
    for m in range(shape.members):
        network, meta = load_benchmark_model(scratch / f"member-{m}")
        networks.append(network)
        history += [{"member": m, **row} for row in meta["history"]]
    return mixture_of(shape, networks), history


def fit_network(config: BenchmarkPreset, shape: RollLSTMConfig, crops: RollCrops, valid_pieces: list[np.ndarray],
                history: list[dict], log, verbose: int) -> tuple[keras.Model, FrameScore]:
    """Fit one network to the stopping point. -> (a float32 model with its best epoch's weights, that epoch's score)."""
    model = build_roll_lstm(shape, config.precision)
    scoring = model if config.precision == "float32" else build_roll_lstm(shape)
    model.compile(optimizer=keras.optimizers.Adam(config.learning_rate, clipnorm=1.0),
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    scorer = ValidScore(scoring, valid_pieces, config.patience, config.max_minutes, history, log)
    decay = BudgetDecay(config.learning_rate, config.final_lr, config.max_minutes)
    model.fit(crops, epochs=10_000, callbacks=[decay, scorer], verbose=verbose)
    scoring.set_weights(scorer.best_weights)
    return scoring, scorer.best


def train_benchmark(data: str | Path, out: str | Path, preset_name: str = "best", *, seed: int = 0,
                    track: bool = True, verbose: int = 0, **overrides: Any) -> BenchmarkResult:
    """Train on `data`'s train split, early-stopped on its valid split; save (and register) the best model.

    On a small split (see `BenchmarkPreset.members_for`) the model is a mixture of networks trained side by side."""
    config = preset(preset_name, **overrides)
    dataset = load_rolls(data)
    train_pieces, valid_pieces = dataset.split("train"), dataset.split("valid")
    keys = train_pieces[0].shape[1]
    train_tokens = sum(int(p.sum()) + len(p) for p in train_pieces)
    keras.utils.set_random_seed(seed)
    shape = dataclasses.replace(config.model, keys=keys, members=config.members_for(train_tokens))
    batch = config.batch_for(train_tokens)
    steps = max(config.min_steps, train_tokens // (batch * config.window))
    start = time.monotonic()
    history: list[dict] = []

    facts = {"dataset": dataset.name, "data": str(data), "preset": config.params(), "seed": seed,
             "augmentation": f"random transposition by -{config.transpose}..{config.transpose} semitones (training only)"
             if config.transpose else "none", "train_pieces": len(train_pieces), "train_frames": int(sum(map(len, train_pieces))),
             "batch_size": batch, "members": shape.members}

    def fit_and_save(log=None, run_id: str | None = None) -> tuple[FrameScore, float]:
        """Train to the stopping point, keep the best epoch's weights, write the model folder."""
        if shape.members == 1:
            crops = RollCrops(train_pieces, config.window, batch, steps, config.transpose, seed)
            model, best = fit_network(config, shape, crops, valid_pieces, history, log, verbose)
        else:
            with tempfile.TemporaryDirectory(prefix="pianola-members-") as scratch:
                model, rows = train_members(str(data), preset_name, seed, overrides, shape, Path(scratch))
            history.extend(rows)
            for row in rows if log else ():
                log({"epoch": row["epoch"], **{f"member_{row['member']}_{k}": v for k, v in row.items() if k not in ("member", "epoch")}})
            best = score(model, valid_pieces, "valid")
        minutes = (time.monotonic() - start) / 60
        facts["parameters"] = model.count_params()  # of the trained model: building one only to count would draw on the seed
        save_benchmark_model(model, {**facts, "valid": best.to_json(), "history": history,
                                     "train_minutes": round(minutes, 2), "run_id": run_id}, out)
        return best, minutes

    run_id = version = None
    if not track:
        best, minutes = fit_and_save()
    else:
        import mlflow

        tracking.setup(registered_name(dataset.name))
        with mlflow.start_run(run_name=f"roll-lstm-{config.name}") as active:
            run_id = active.info.run_id
            mlflow.log_params({**config.params(), "dataset": dataset.name, "seed": seed, "augmentation": facts["augmentation"],
                               "train_pieces": facts["train_pieces"], "batch_size_used": batch, "members_used": shape.members})
            mlflow.set_tags(tracking.environment())
            best, minutes = fit_and_save(
                lambda row: mlflow.log_metrics({k: v for k, v in row.items() if k != "epoch"}, step=row["epoch"]), run_id)
            mlflow.log_param("parameters", facts["parameters"])
            mlflow.log_metrics({"best_valid_nll_per_frame": best.nll_per_frame,
                                "best_valid_nll_per_frame_first_excluded": best.nll_per_frame_first_excluded,
                                "train_minutes": minutes})
            version = tracking.log_and_register_bundle(Path(out), RollScorer(), registered_name(dataset.name), artifact="model")
    return BenchmarkResult(dataset.name, Path(out), best, history, minutes, run_id, version)
