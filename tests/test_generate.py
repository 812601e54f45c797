"""Generation: seeded sampling strategies, stateful steps equal to the full window, files a user gets."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from conftest import make_midi
from pianola.data.vocab import Vocabulary
from pianola.errors import PianolaError
from pianola.generation.generate import generate_ids, generate_pieces
from pianola.generation.sampling import Sampling, sample_next
from pianola.models import build_model
from pianola.models.bundle import Bundle, load_bundle
from pianola.models.inference import LSTMStepper


def generate(bundle_dir: Path, tiny_project: Path, out: Path, **kwargs):
    options = {"n": 3, "length": 40, "sampling": Sampling(), "seed": 7, "corpus_dir": tiny_project / "data/raw"} | kwargs
    return generate_pieces(load_bundle(bundle_dir), out, **options).pieces


def test_same_seed_gives_the_same_files_byte_for_byte(bundle_dir: Path, tiny_project: Path, tmp_path: Path) -> None:
    first = generate(bundle_dir, tiny_project, tmp_path / "a")
    again = generate(bundle_dir, tiny_project, tmp_path / "b")
    other = generate(bundle_dir, tiny_project, tmp_path / "c", seed=8)
    for x, y in zip(first, again):
        assert x.midi.read_bytes() == y.midi.read_bytes()
        assert x.piano_roll.read_bytes() == y.piano_roll.read_bytes()
    assert [p.tokens for p in first] != [p.tokens for p in other]
    assert all(len(p.tokens) == 40 for p in first)
    assert first[0].metrics["tokens"] == 40 and "longest_repeat_fraction" in first[0].metrics


@pytest.mark.parametrize("strategy", ["greedy", "temperature", "top_k", "top_p"])
def test_every_strategy_generates(bundle_dir: Path, tiny_project: Path, tmp_path: Path, strategy: str) -> None:
    pieces = generate(bundle_dir, tiny_project, tmp_path, sampling=Sampling(strategy, temperature=0.8, top_k=3, top_p=0.8))
    assert all(p.midi.exists() and p.piano_roll.read_bytes()[:4] == b"\x89PNG" for p in pieces)
    assert all("<unk>" not in p.tokens for p in pieces)


def test_greedy_takes_the_most_likely_token_but_never_unk() -> None:
    probs = np.array([[0.9, 0.05, 0.05], [0.1, 0.2, 0.7]])
    assert sample_next(probs, Sampling("greedy"), np.random.default_rng(0)).tolist() == [1, 2]


def test_top_k_and_top_p_draw_only_from_the_head() -> None:
    probs = np.tile(np.array([[0.0, 0.5, 0.3, 0.15, 0.05]]), (4000, 1))
    rng = np.random.default_rng(0)
    top_k = sample_next(probs, Sampling("top_k", top_k=2), rng)
    assert set(top_k.tolist()) == {1, 2}
    top_p = sample_next(probs, Sampling("top_p", top_p=0.75), rng)
    assert set(top_p.tolist()) == {1, 2}  # 0.5 < 0.75 needs the second token; 0.8 >= 0.75 stops there
    full = sample_next(probs, Sampling("temperature"), rng)
    assert set(full.tolist()) == {1, 2, 3, 4}
    assert np.mean(full == 1) == pytest.approx(0.5, abs=0.03)


def test_low_temperature_approaches_greedy_and_high_flattens() -> None:
    probs = np.tile(np.array([[0.0, 0.6, 0.4]]), (4000, 1))
    rng = np.random.default_rng(1)
    cold = sample_next(probs, Sampling("temperature", temperature=0.1), rng)
    hot = sample_next(probs, Sampling("temperature", temperature=5.0), rng)
    assert np.mean(cold == 1) > 0.97
    assert np.mean(hot == 1) == pytest.approx(0.52, abs=0.03)  # 0.6^0.2 / (0.6^0.2 + 0.4^0.2)


def test_repetition_penalty_makes_recent_tokens_less_likely() -> None:
    probs = np.tile(np.array([[0.0, 0.5, 0.5]]), (8000, 1))
    recent = np.ones((8000, 2), dtype=np.int64)  # token 1 was generated twice just now
    rng = np.random.default_rng(2)
    penalized = sample_next(probs, Sampling("temperature", repetition_penalty=1.5), rng, recent)
    assert np.mean(penalized == 1) == pytest.approx(0.5 / 2.25 / (0.5 / 2.25 + 0.5), abs=0.02)
    plain = sample_next(probs, Sampling("temperature", repetition_penalty=1.0), rng, recent)
    assert np.mean(plain == 1) == pytest.approx(0.5, abs=0.02)
    unpitched = sample_next(probs, Sampling("temperature", repetition_penalty=1.5), rng, recent,
                            penalised=np.array([False, False, True]))
    assert np.mean(unpitched == 1) == pytest.approx(0.5, abs=0.02)  # token 1 is not penalised


def test_only_pitch_tokens_are_penalised(bundle_dir: Path) -> None:
    from pianola.generation.generate import pitch_tokens

    bundle = load_bundle(bundle_dir)
    mask = dict(zip(bundle.vocab.tokens, pitch_tokens(bundle)))
    assert mask["<unk>"] is np.False_ and all(mask[t] == t.startswith("note:") for t in bundle.vocab.tokens)


def test_bad_sampling_settings_are_clear_errors() -> None:
    with pytest.raises(PianolaError, match="repetition penalty"):
        Sampling(repetition_penalty=0.5)
    with pytest.raises(PianolaError, match="unknown strategy 'beam'"):
        Sampling("beam")
    with pytest.raises(PianolaError, match="temperature"):
        Sampling("temperature", temperature=0)
    with pytest.raises(PianolaError, match="top-p"):
        Sampling("top_p", top_p=1.5)


@pytest.mark.parametrize("pitch_classes", [False, True])
def test_stateful_steps_give_the_full_window_distribution(pitch_classes: bool) -> None:
    pitches = [None, *range(30, 79)] if pitch_classes else None  # the NumPy stepper folds the pitch classes in
    model = build_model("lstm", 50, 16, embed_dim=8, units=12, layers=2, pitch_classes=pitch_classes, pitches=pitches)
    model.set_weights([w + np.random.default_rng(i).normal(0, 0.3, w.shape) for i, w in enumerate(model.get_weights())])
    windows = np.random.default_rng(0).integers(1, 50, size=(5, 16)).astype("int32")
    full = np.asarray(model(windows, training=False))  # (B, T, V): every prefix at once
    stepper = LSTMStepper(model)
    state = stepper.zero_state(5)
    for t in range(16):
        probs, state = stepper.step(windows[:, t], state)
        np.testing.assert_allclose(probs, full[:, t], atol=1e-5)


def test_paper_models_generate_with_a_sliding_window() -> None:
    vocab = Vocabulary(("<unk>", *[f"C{i}" for i in range(9)]))
    bundle = Bundle(build_model("paper-2", len(vocab), 12), vocab, {"name": "paper"}, 12, "paper-2", "scalar")
    primers = np.ones((2, 12), dtype=np.int32)
    ids = generate_ids(bundle, primers, 6, Sampling(), seed=0)
    assert ids.shape == (2, 6) and (ids > 0).all()
    assert (generate_ids(bundle, primers, 6, Sampling(), seed=0) == ids).all()


def test_primer_from_a_midi_file(bundle_dir: Path, tiny_project: Path, tmp_path: Path) -> None:
    primer = make_midi(tmp_path / "primer.mid", [(0, 240, 60), (240, 240, 64)])  # shorter than the window
    pieces = generate(bundle_dir, tiny_project, tmp_path / "out", primer=str(primer), n=2)
    assert [p.primer for p in pieces] == ["primer.mid@0", "primer.mid@0"]
    with pytest.raises(PianolaError, match="nothing.mid"):
        generate(bundle_dir, tiny_project, tmp_path / "bad", primer=str(tmp_path / "nothing.mid"))


def test_missing_fluidsynth_fails_before_generating(bundle_dir: Path, tiny_project: Path, tmp_path: Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", str(tmp_path / "empty-bin"))
    with pytest.raises(PianolaError, match="fluidsynth"):
        generate(bundle_dir, tiny_project, tmp_path / "out", wav=True)
    assert not (tmp_path / "out").exists()


def test_generate_command_writes_pieces_report_and_wav(bundle_dir: Path, tiny_project: Path, tmp_path: Path) -> None:
    out = tmp_path / "gen"
    env = {**os.environ, "MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path / 'mlflow.db'}"}
    done = subprocess.run(
        [sys.executable, "-m", "pianola.cli", "generate", "--model", str(bundle_dir), "--n", "2", "--length", "30",
         "--corpus", str(tiny_project / "data/raw"), "--out", str(out), "--wav", "--metrics", str(tmp_path / "m.json")],
        capture_output=True, text=True, env=env, cwd=tmp_path,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    report = json.loads((out / "generation.json").read_text())
    assert [p["midi"] for p in report["pieces"]] == ["piece_000.mid", "piece_001.mid"]
    assert (out / "piece_001.wav").read_bytes()[:4] == b"RIFF"
    metrics = json.loads((tmp_path / "m.json").read_text())
    assert metrics["pieces"] == 2
    # Musicality against the bundle's validation pieces, in the report, the metrics and a plot.
    assert report["musicality"]["sets"]["reference"]["pieces"] == 2 and report["musicality"]["sets"]["generated"]["pieces"] == 2
    assert metrics["musicality_mean_oa"] == report["musicality"]["mean_oa"]["generated"]
    assert {"musicality_oa_ratio", "musicality_min_feature_ratio", "oa_ioi_std"} <= set(metrics)
    # 30 tokens are about 10 notes: too few 8-note n-grams can leave novelty unmeasured, never made up.
    assert ("novelty_copied_share" in metrics) == (report["musicality"]["novelty"]["generated"] is not None)
    import mlflow
    from mlflow.tracking import MlflowClient

    mlflow.set_tracking_uri(env["MLFLOW_TRACKING_URI"])
    runs = mlflow.search_runs(search_all_experiments=True, output_format="list")
    files = {a.path for a in MlflowClient().list_artifacts(runs[0].info.run_id, "pieces")}
    assert {"pieces/piece_000.mid", "pieces/piece_000.wav", "pieces/piece_000.png", "pieces/musicality.png"} <= files
    assert "musicality_mean_oa" in runs[0].data.metrics


def test_a_pitch_class_model_generates_each_piece_as_it_would_alone() -> None:
    """Rows of a pitch-class model carry the memory's state beside the LSTMs' through batching, finishing and joining."""
    from pianola.generation.generate import generate_each, piece_rng

    vocab = Vocabulary(("<unk>", "shift:6", *[f"note:{p}" for p in range(48, 72)]))
    pitches = [None, None, *range(48, 72)]
    model = build_model("lstm", len(vocab), 8, embed_dim=8, units=12, layers=1, pitch_classes=True, pitches=pitches)
    bundle = Bundle(model, vocab, {"name": "timed"}, 8, "lstm", "tokens")
    primers = np.random.default_rng(0).integers(1, len(vocab), size=(3, 8)).astype(np.int32)
    together = generate_each(bundle, primers, [5, 12, 9], [Sampling()] * 3, [piece_rng(1, i) for i in range(3)])
    for i, piece in enumerate(together):
        (alone,) = generate_each(bundle, primers[i : i + 1], [len(piece)], [Sampling()], [piece_rng(1, i)])
        np.testing.assert_array_equal(piece, alone)
