"""Ingest and tokenize on a Dask cluster (flows/corpus.py): the same bytes as one process, and no shard lost
when a worker dies. Real local Dask clusters of 2 worker processes, Prefect on a temporary server."""

from __future__ import annotations

import functools
import gc
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import cloudpickle
import pytest
from prefect import flow

from conftest import make_midi, scale_notes

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # tasks/ and flows/ run from the project root; they are not installed

from flows.corpus import corpus, dask_runner  # noqa: E402
from pianola.data.corpus import tokenize_corpus  # noqa: E402
from pianola.data.ingest import MANIFEST, ingest  # noqa: E402
from pianola.data.sources.base import SourceItem  # noqa: E402
from pianola.tokenizers import get_tokenizer  # noqa: E402
from tasks.corpus import shard_map  # noqa: E402

OUTPUTS = ("tokens.jsonl", "stats.json", "vocab.json")


def corpus_folder(folder: Path) -> Path:
    """30 distinct pieces, a duplicate, a broken file and a silent one, in two sub-folders."""
    for i in range(30):
        make_midi(folder / f"part{i % 2}" / f"piece{i:02d}.mid", scale_notes(12 + i % 8, start_pitch=36 + i), tracks=1 + i % 2)
    (folder / "part0" / "copy.mid").write_bytes((folder / "part1" / "piece01.mid").read_bytes())
    (folder / "part1" / "broken.mid").write_bytes((folder / "part0" / "piece00.mid").read_bytes()[:40])
    make_midi(folder / "part1" / "silent.mid", [])
    return folder


def single_process(source: Path, out: Path) -> None:
    ingest(str(source), out / "raw", progress=False)
    tokenize_corpus(out / "raw", out / "tokens", get_tokenizer("timed"))


def same_outputs(a: Path, b: Path) -> None:
    assert (a / "raw" / MANIFEST).read_bytes() == (b / "raw" / MANIFEST).read_bytes()
    names = sorted(p.name for p in (a / "raw").iterdir())
    assert names == sorted(p.name for p in (b / "raw").iterdir())
    for name in names:
        assert (a / "raw" / name).read_bytes() == (b / "raw" / name).read_bytes(), name
    for name in OUTPUTS:
        assert (a / "tokens" / name).read_bytes() == (b / "tokens" / name).read_bytes(), name


def test_corpus_flow_on_dask_writes_what_one_process_writes(tmp_path: Path):
    source = corpus_folder(tmp_path / "source")
    single_process(source, tmp_path / "one")
    (tmp_path / "params.yaml").write_text("tokenize:\n  tokenizer: timed\n")
    env = os.environ | {"PYTHONPATH": str(ROOT), "PREFECT_HOME": str(tmp_path / "prefect")}
    args = [sys.executable, "-m", "flows.corpus", "--source", str(source), "--raw", str(tmp_path / "dask" / "raw"),
            "--tokens", str(tmp_path / "dask" / "tokens"), "--workers", "2", "--shard-files", "4"]
    done = subprocess.run(args, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout)
    assert (result["ingested"], result["rejected"], result["pieces"]) == (30, 3, 30)
    assert "tokenize 8" in done.stderr  # 30 files in shards of 4: eight task runs of each stage
    same_outputs(tmp_path / "one", tmp_path / "dask")
    manifest = json.loads((tmp_path / "dask" / "raw" / MANIFEST).read_text())
    reasons = {e["name"]: e["reason"] for e in manifest["files"] if e["status"] == "rejected"}
    # files go in path order: part0/copy.mid is kept, its twin part1/piece01.mid is the duplicate
    assert reasons["part1/piece01.mid"] == "duplicate of part0_copy.mid" and reasons["part1/silent.mid"] == "no notes"
    assert reasons["part1/broken.mid"].startswith("truncated")


def test_a_source_only_this_process_reads_is_ingested_here_and_tokenized_on_the_cluster(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
):
    (tmp_path / "params.yaml").write_text("ingest:\n  limit: 4\ntokenize:\n  tokenizer: paper\n")
    monkeypatch.chdir(tmp_path)
    result = corpus(source="music21:bach", raw="raw", tokens="tokens", workers=1, shard_files=2)
    assert (result["ingested"], result["pieces"]) == (4, 4)
    assert "music21:bach: ingested by this process" in caplog.text
    assert len((tmp_path / "tokens" / "tokens.jsonl").read_text().splitlines()) == 4


def kill_worker_once(work, marker: str, shard):
    """work(shard), except that the first shard to get here kills its worker process (SIGKILL) first."""
    try:
        fd = os.open(marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
    except FileExistsError:
        return work(shard)
    os.close(fd)
    os.kill(os.getpid(), signal.SIGKILL)


@pytest.fixture
def by_value():
    """This module's functions travel to the Dask workers by value (the workers cannot import the tests)."""
    module = sys.modules[__name__]
    cloudpickle.register_pickle_by_value(module)
    yield
    cloudpickle.unregister_pickle_by_value(module)


def test_a_worker_killed_mid_shard_loses_nothing(tmp_path: Path, by_value):
    source = corpus_folder(tmp_path / "source")
    single_process(source, tmp_path / "one")
    out = tmp_path / "dask"

    @flow(name="corpus-with-a-dying-worker")
    def run() -> None:
        with dask_runner(None, 2) as runner:
            def dying(stage: str):
                tasks = shard_map(runner, stage, 4)
                marker = str(tmp_path / f"killed-{stage}")
                return lambda work, shards: tasks(functools.partial(kill_worker_once, work, marker), shards)

            ingest(str(source), out / "raw", progress=False, map_shards=dying("ingest"), shard_files=4)
            tokenize_corpus(out / "raw", out / "tokens", get_tokenizer("timed"),
                            map_shards=dying("tokenize"), shard_files=4)

    run()
    assert (tmp_path / "killed-ingest").exists() and (tmp_path / "killed-tokenize").exists()  # a worker did die
    same_outputs(tmp_path / "one", out)


def test_the_flow_lets_go_of_the_shards_it_is_done_with(tmp_path: Path):
    """Dask kept its last 1,000 messages to each worker, a whole shard in each, for debugging: every shard of a run
    stayed in the flow's memory, which grew with the corpus. Now only a few are kept, whatever the corpus."""
    source = corpus_folder(tmp_path / "source")

    @flow(name="corpus-memory")
    def run() -> int:
        with dask_runner(None, 1) as runner:
            ingest(str(source), tmp_path / "raw", progress=False, map_shards=shard_map(runner, "ingest", 2), shard_files=1)
            gc.collect()
            return sum(isinstance(o, SourceItem) for o in gc.get_objects())

    held = run()
    assert held <= 12, f"{held} inputs of 33 still held after the ingest"  # once: 66 (each checked, then written)
