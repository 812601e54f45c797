"""`pianola benchmark train` and `evaluate` end to end on a small .mat dataset, tracked in MLflow."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import scipy.io

from pianola.benchmark.data import load_rolls
from pianola.benchmark.likelihood import evaluate_benchmark, score
from pianola.benchmark.train import PRESETS, RollCrops, train_benchmark
from pianola.models.roll import CHANNELS, FrameGrammar, build_roll_lstm, context_width


def chorale_like(rng: np.random.Generator, frames: int) -> np.ndarray:
    """Four voices walking by step over a C-major chord cycle: a learnable (88-key) roll."""
    roll = np.zeros((frames, 88), dtype=np.uint8)
    chords = [(48, 55, 64, 72), (53, 57, 65, 74), (55, 59, 67, 74), (48, 55, 64, 72)]
    for f in range(frames):
        for pitch in chords[(f // 2) % 4]:
            roll[f, pitch - 21 + int(rng.integers(0, 2)) * (f % 2)] = 1
    return roll


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    rng = np.random.default_rng(0)
    path = tmp_path_factory.mktemp("poly") / "Tiny_set.mat"
    splits = {}
    for key, count in (("traindata", 24), ("validdata", 4), ("testdata", 4)):
        pieces = np.empty((1, count), dtype=object)
        for i in range(count):
            pieces[0, i] = chorale_like(rng, int(rng.integers(20, 40)))
        splits[key] = pieces
    scipy.io.savemat(path, splits)
    return path


def test_crops_are_transposed_consistently_and_stay_on_the_keyboard(dataset: Path) -> None:
    pieces = load_rolls(dataset).split("train")
    crops = RollCrops(pieces, window=32, batch_size=64, steps=1, transpose=6, seed=0)
    (tokens, context), targets, weight = crops[0]
    keys = 88
    assert tokens.shape == targets.shape == weight.shape == (64, 32) and context.shape == (64, 32, context_width(keys))
    real = weight > 0
    assert (targets[real] <= keys).all() and (tokens[real] <= keys + 1).all()
    # Within a crop, each input is the previous target: the shift moved both the same way.
    assert (tokens[:, 1:][real[:, 1:]] == targets[:, :-1][real[:, 1:]]).all()
    # ... and the context's per-key channels with them: the "last" channel marks the input key.
    planes = context[..., : keys * len(CHANNELS)].reshape(64, 32, keys, len(CHANNELS))
    is_key = real & (tokens < keys)
    assert is_key.any() and (planes[..., CHANNELS.index("last")].argmax(-1)[is_key] == tokens[is_key]).all()
    lowest = {int(targets[r][(targets[r] < keys) & real[r]].min()) for r in range(64)}
    assert len(lowest) > 3, "crops should come in several transpositions"


def test_train_then_evaluate_from_the_registry(dataset: Path, tmp_path: Path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    result = train_benchmark(dataset, tmp_path / "model", "demo", max_minutes=0.3, min_steps=10)
    assert result.dataset == "tiny-set" and result.version == "1"
    meta = json.loads((tmp_path / "model" / "benchmark.json").read_text())
    assert meta["augmentation"].startswith("random transposition") and meta["history"]
    assert meta["parameters"] == build_roll_lstm(PRESETS["demo"].model).count_params()
    # It learned: far below the same model untrained.
    untrained = score(build_roll_lstm(PRESETS["demo"].model), load_rolls(dataset).split("valid"), "valid")
    assert result.valid.nll_per_frame < 0.6 * untrained.nll_per_frame
    # The registered model scores the valid split exactly as training's best epoch did; the test split too.
    valid = evaluate_benchmark("models:/pianola-bench-tiny-set/1", str(dataset), "valid")
    assert valid["nll_per_frame"] == pytest.approx(result.valid.nll_per_frame, abs=1e-4)
    test = evaluate_benchmark(str(tmp_path / "model"), str(dataset), "test")
    assert test["pieces"] == 4 and test["nll_per_frame"] < 0.6 * untrained.nll_per_frame


def test_cli_evaluate_prints_json_last_and_names_a_missing_split(dataset: Path, tmp_path: Path) -> None:
    train_benchmark(dataset, tmp_path / "model", "demo", max_minutes=0.05, min_steps=2, track=False)
    cli = [sys.executable, "-m", "pianola.cli", "benchmark", "evaluate", "--model", str(tmp_path / "model"), "--data"]
    done = subprocess.run([*cli, str(dataset), "--split", "test", "--json"], capture_output=True, text=True, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    last = json.loads(done.stdout.strip().splitlines()[-1])
    assert set(last) == {"dataset", "split", "pieces", "frames", "nll_per_frame", "nll_per_frame_first_excluded"}
    assert last["split"] == "test" and last["frames"] > 0

    scipy.io.savemat(tmp_path / "NoTest.mat", {"traindata": scipy.io.loadmat(dataset)["traindata"]})
    failed = subprocess.run([*cli, str(tmp_path / "NoTest.mat"), "--split", "test"], capture_output=True, text=True, cwd=tmp_path)
    assert failed.returncode == 1 and "NoTest.mat" in failed.stderr and "Traceback" not in failed.stderr


def test_mixed_precision_training_of_two_members_saves_a_float32_mixture_and_the_rate_decays(
        dataset: Path, tmp_path: Path) -> None:
    # A split this small has its batch cut (64 -> 16, to make 100 updates a pass): two networks train side by
    # side, each in a process of its own, and the model saved is their mixture.
    result = train_benchmark(dataset, tmp_path / "model", "demo", max_minutes=0.4, min_steps=1, track=False,
                             precision="mixed_bfloat16", final_lr=0.1, patience=100,
                             batch_size=64, updates_per_pass=100, small_split_members=2)
    meta = json.loads((tmp_path / "model" / "benchmark.json").read_text())
    assert meta["members"] == 2 and {row["member"] for row in result.history} == {0, 1}
    rates = [row["learning_rate"] for row in result.history if row["member"] == 1]
    assert len(rates) > 1 and rates == sorted(rates, reverse=True) and rates[-1] < PRESETS["demo"].learning_rate
    assert rates[-1] >= 0.1 * PRESETS["demo"].learning_rate - 1e-9
    from pianola.benchmark.bundle import load_benchmark_model

    model, _ = load_benchmark_model(tmp_path / "model")
    assert {layer.dtype_policy.name for layer in model.layers if layer.weights} == {"float32"}
    assert model.get_layer("mixture") in model.layers and len(model.get_layer("mixture").input) == 2
    # Scored in float32, the saved mixture gives the figure that training kept.
    again = evaluate_benchmark(str(tmp_path / "model"), str(dataset), "valid")
    assert again["nll_per_frame"] == pytest.approx(result.valid.nll_per_frame, abs=1e-4)


def test_a_model_of_an_earlier_context_layout_is_refused_by_name(tmp_path: Path) -> None:
    import keras

    from pianola.benchmark.bundle import load_benchmark_model, save_benchmark_model
    from pianola.errors import PianolaError

    keys = 88
    tokens = keras.Input(shape=(None,), dtype="int32", name="tokens")
    context = keras.Input(shape=(None, keys + 16), name="context")  # the layout before per-key channels
    x = keras.layers.Concatenate()([keras.layers.Embedding(keys + 2, 4)(tokens), context])
    old = keras.Model([tokens, context], FrameGrammar(keys, name="grammar")(keras.layers.Dense(keys + 1)(x), tokens),
                      name="roll_lstm")
    save_benchmark_model(old, {"dataset": "old"}, tmp_path / "old")
    with pytest.raises(PianolaError, match=r"old/model.keras: made by an earlier pianola .* retrain"):
        load_benchmark_model(tmp_path / "old")
