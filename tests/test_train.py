"""Training as a user runs it: MLflow tracking, bundles, resume after a crash, the registry's champion."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import keras
import numpy as np
import pytest

from conftest import TINY_LSTM as TINY
from conftest import TINY_WINDOW as WINDOW
from pianola.data.vocab import Vocabulary
from pianola.errors import PianolaError
from pianola.evaluation.heldout import encode_midi, evaluate_midi, held_out_metrics
from pianola.models.bundle import load_bundle
from pianola.training.train import preset_config, train


@pytest.fixture
def project(tiny_project: Path) -> Path:
    return tiny_project


@pytest.fixture
def in_project(project: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Run in the project with a fresh MLflow store of its own."""
    monkeypatch.chdir(project)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    return project


def tiny_config(**overrides):
    return preset_config("lstm", "demo", **({"epochs": 2, "model_options": TINY} | overrides))


def test_training_tracks_bundles_and_registers(in_project: Path, tmp_path: Path) -> None:
    from mlflow.tracking import MlflowClient

    result = train("data/sequences", tmp_path / "bundle", tiny_config(), verbose=0)
    assert result.version == "1" and result.epochs_run == 2
    run = MlflowClient().get_run(result.run_id)
    assert run.data.params["model"] == "lstm" and run.data.params["window"] == str(WINDOW)
    assert "heldout_cross_entropy" in run.data.metrics and "keras_backend" in run.data.tags
    assert len(MlflowClient().get_metric_history(result.run_id, "val_loss")) == 2
    artifacts = {a.path for a in MlflowClient().list_artifacts(result.run_id)}
    assert {"model_summary.txt", "loss_curves.png"} <= artifacts
    assert str(MlflowClient().get_model_version_by_alias("pianola", "candidate").version) == "1"
    # The registered model loads back as the same bundle.
    registered = load_bundle("models:/pianola@candidate")
    assert registered.vocab == Vocabulary.load("data/sequences/vocab.json")
    assert list(Path("logs").glob(f"{result.run_id}/**/events.out.tfevents.*")), "TensorBoard logs"


@pytest.mark.parametrize("pitch_classes", [False, True])
def test_bundle_evaluates_the_same_after_save_and_load(in_project: Path, tmp_path: Path, pitch_classes: bool) -> None:
    config = tiny_config(model_options=TINY | {"pitch_classes": pitch_classes})
    result = train("data/sequences", tmp_path / "bundle", config, register=False, verbose=0)
    loaded = load_bundle(tmp_path / "bundle")
    assert any(layer.name == "pc_memory" for layer in loaded.model.layers) == pitch_classes
    valid = encode_midi(loaded, "data/raw", loaded.info["valid_pieces"])
    after = held_out_metrics(loaded, valid).to_json()
    for key, value in result.metrics.items():
        assert after[key] == pytest.approx(value, abs=1e-5), key


def test_interrupted_training_resumes_from_its_saved_epoch(in_project: Path, tmp_path: Path) -> None:
    class Crash(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            if epoch == 1:
                raise RuntimeError("simulated crash after epoch 2")

    class SeenEpochs(keras.callbacks.Callback):
        def __init__(self):
            super().__init__()
            self.seen = []

        def on_epoch_begin(self, epoch, logs=None):
            self.seen.append(epoch)

    config = tiny_config(epochs=4, patience=10)
    with pytest.raises(RuntimeError, match="simulated crash"):
        train("data/sequences", tmp_path / "bundle", config, register=False, verbose=0, extra_callbacks=[Crash()])
    assert not (tmp_path / "bundle").exists()
    seen = SeenEpochs()
    result = train("data/sequences", tmp_path / "bundle", config, register=False, verbose=0, extra_callbacks=[seen])
    assert seen.seen == [2, 3]  # epochs 1-2 were not trained again
    assert [row["epoch"] for row in result.history] == [0, 1, 2, 3]
    # One MLflow run holds the whole training, across the crash.
    from mlflow.tracking import MlflowClient

    assert len(MlflowClient().get_metric_history(result.run_id, "loss")) == 4


def test_champion_moves_only_on_improvement(in_project: Path, tmp_path: Path) -> None:
    from pianola.evaluation.promotion import promote

    train("data/sequences", tmp_path / "a", tiny_config(epochs=3, model_options=TINY | {"learning_rate": 3e-3}), verbose=0)
    first = promote("data/raw")
    assert first.promoted and first.champion_before is None

    # Barely trained: near the uniform distribution's cross-entropy, worse than the champion.
    train("data/sequences", tmp_path / "b", tiny_config(epochs=1, model_options=TINY | {"learning_rate": 1e-6}), verbose=0)
    second = promote("data/raw")
    assert first.candidate_cross_entropy <= second.candidate_cross_entropy
    assert not second.promoted and second.champion_before == "1"

    train("data/sequences", tmp_path / "c", tiny_config(epochs=6, model_options=TINY | {"learning_rate": 2e-2}), verbose=0)
    third = promote("data/raw")
    assert third.promoted and third.candidate == "3" and third.champion_before == "1"
    assert third.candidate_cross_entropy < third.champion_cross_entropy
    assert load_bundle("models:/pianola@champion").info["run_id"] == load_bundle(tmp_path / "c").info["run_id"]


def test_bundle_refuses_another_vocabulary(in_project: Path, tmp_path: Path) -> None:
    train("data/sequences", tmp_path / "bundle", tiny_config(epochs=1), register=False, verbose=0)
    vocab = Vocabulary.load(tmp_path / "bundle" / "vocab.json")
    swapped = list(vocab.tokens)
    swapped[1], swapped[2] = swapped[2], swapped[1]
    Vocabulary(tuple(swapped)).save(tmp_path / "bundle" / "vocab.json")
    with pytest.raises(PianolaError, match="not the one the model was trained with"):
        load_bundle(tmp_path / "bundle")


def test_unknown_preset_and_model_are_clear_errors() -> None:
    with pytest.raises(PianolaError, match="unknown preset 'huge'"):
        preset_config("lstm", "huge")
    with pytest.raises(PianolaError, match="unknown model 'gru'"):
        preset_config("gru", "demo")


def test_training_on_two_logical_cpus_uses_mirrored_strategy(project: Path, tmp_path: Path) -> None:
    code = f"""
import tensorflow as tf
cpu = tf.config.list_physical_devices("CPU")[0]
tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
from mlflow.tracking import MlflowClient
from pianola.training.train import preset_config, train
config = preset_config("lstm", "demo", epochs=1, model_options={TINY!r})
result = train("data/sequences", {str(tmp_path / 'bundle')!r}, config, register=False, verbose=0)
print("DEVICES", MlflowClient().get_run(result.run_id).data.params["devices"])
"""
    env = {**__import__("os").environ, "MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path / 'mlflow.db'}"}
    done = subprocess.run([sys.executable, "-c", code], cwd=project, env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "DEVICES 2" in done.stdout
    assert json.loads((tmp_path / "bundle" / "bundle.json").read_text())["model_name"] == "lstm"


def test_paper_model_trains_and_evaluates_on_scalar_inputs(in_project: Path, tmp_path: Path) -> None:
    config = preset_config("paper-3b", "demo", epochs=1, windows_per_epoch=64, valid_windows=32)
    result = train("data/sequences", tmp_path / "bundle", config, register=False, verbose=0)
    bundle = load_bundle(tmp_path / "bundle")
    assert bundle.input_kind == "scalar"
    metrics = evaluate_midi(bundle, "data/raw", bundle.info["valid_pieces"])
    assert np.isfinite(metrics.cross_entropy) and metrics.cross_entropy == pytest.approx(result.metrics["cross_entropy"], abs=1e-5)


def test_transposition_moves_whole_windows_and_never_invents_unk() -> None:
    from pianola.data.corpus import Piece
    from pianola.data.sequences import EncodedSplit
    from pianola.tokenizers import get_tokenizer
    from pianola.training.train import WindowBatches, transposition_table

    tokens = ["note:60", "dur:6"] * 40
    vocab = Vocabulary.build([tokens + ["note:59", "note:61", "note:62"]])  # note:58 is missing
    table = transposition_table(vocab, get_tokenizer("timed"), 2)
    assert vocab.tokens[table[3][vocab.encode(["note:60"])[0]]] == "note:61"  # row 3 is +1
    assert vocab.tokens[table[0][vocab.encode(["dur:6"])[0]]] == "dur:6"  # no pitch: unchanged
    assert table[0][vocab.encode(["note:60"])[0]] == 0  # note:58 is not in the vocabulary

    split = EncodedSplit.encode([Piece("p", tokens)], vocab)
    batches = WindowBatches(split, 8, "tokens", len(vocab), 64, None, seed=0, transposition=table)
    x, y = batches[0]
    assert (x != 0).all() and (y != 0).all()  # the -2 shift would make <unk>: those windows stay put
    pitches_per_window = [{vocab.tokens[i] for i in row if vocab.tokens[i].startswith("note:")} for row in x]
    assert all(len(p) == 1 for p in pitches_per_window)  # a window moves as a whole
    assert {p.pop() for p in pitches_per_window} == {"note:59", "note:60", "note:61", "note:62"}


def test_paper_transposition_agrees_with_music21() -> None:
    from music21 import chord

    from pianola.tokenizers import get_tokenizer

    tokenizer = get_tokenizer("paper")
    assert tokenizer.transpose("C4", 2) == "D4" and tokenizer.transpose("B3", 1) == "C4"
    assert tokenizer.transpose("B-3", 1) == "B3" and tokenizer.transpose("G9", 1) is None
    for pcs in ([0, 4, 7], [11, 2, 5, 8], [1, 2], [0, 3, 6, 9], [4, 5, 9, 11]):
        token = ".".join(str(pc) for pc in chord.Chord(pcs).normalOrder)
        for shift in (-5, 1, 6):
            expected = ".".join(str(pc) for pc in chord.Chord([(pc + shift) % 12 for pc in pcs]).normalOrder)
            assert tokenizer.transpose(token, shift) == expected


def test_tokenizers_name_the_pitch_of_their_tokens() -> None:
    from pianola.tokenizers import get_tokenizer

    timed, remi, roll, paper = (get_tokenizer(name) for name in ("timed", "remi", "roll", "paper"))
    assert [timed.pitch(t) for t in ("note:60", "dur:6", "shift:3", "<unk>")] == [60, None, None, None]
    assert [remi.pitch(t) for t in ("Pitch_61", "Duration_1.0.12", "Bar_None")] == [61, None, None]
    assert [paper.pitch(t) for t in ("C4", "B-3", "0.4.7")] == [60, 58, None]
    assert roll.pitch(roll.transpose("note:60", 2)) == 62
    for tokenizer, token in ((timed, "note:60"), (remi, "Pitch_60"), (paper, "C4")):
        assert tokenizer.pitch(tokenizer.transpose(token, 5)) == 65

