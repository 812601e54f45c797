"""Ingest and tokenize on a Dask cluster: the corpus stages' shards as Prefect tasks, through prefect-dask.

`python -m flows.corpus` runs both stages with the settings of params.yaml (ingest, tokenize), on a local cluster
of `--workers` processes (one thread each) by default, or on an existing scheduler with `--dask-address
tcp://HOST:PORT` (or PIANOLA_DASK_ADDRESS). The files are read and written by the workers, so on a cluster
of several machines the folders must be shared (NFS and the like) under the same paths. A source whose files only
this process can read (music21's corpus, a web index, S3) is ingested here, and tokenized on the cluster. The outputs are those
of `pianola ingest` and `pianola tokenize`, byte for byte; the pipeline flow runs them this way when given
`--dask-address` or `--dask-workers`, and DVC records them as if it had run the stages.
"""

import logging
import os
import time
from pathlib import Path
from typing import Annotated

import typer
from prefect import flow, get_run_logger

from flows import cli
from pianola.data.corpus import tokenize_corpus
from pianola.data.ingest import ingest
from pianola.data.shards import SHARD_FILES
from pianola.data.sources import open_source
from pianola.params import section
from pianola.tokenizers import stage_tokenizer
from tasks.corpus import shard_map

ADDRESS_VARIABLE = "PIANOLA_DASK_ADDRESS"
IN_FLIGHT_PER_WORKER = 2  # shards submitted per worker ahead of the one awaited: no worker waits, little is held
# Dask keeps the last `distributed.admin.low-level-log-length` messages of each connection, and each worker its last
# events, for debugging: 1,000 by default. A message carries a whole shard, so with the default every shard of a run
# stayed in memory, in the flow's process and in the workers, which grew with the corpus (bench/scale.py). A few are
# enough to debug.
DASK_DEBUG_LOG_LENGTH = 8


def dask_runner(address: str | None, workers: int):
    """A DaskTaskRunner on the scheduler at `address`, else on a temporary local cluster of `workers` processes.

    The local cluster listens on 127.0.0.1 only, without its dashboard, and its workers report their task runs
    to this run's Prefect server (a temporary one included: else each worker would start its own). Workers of
    an existing cluster need PREFECT_API_URL set where they run.
    """
    import dask
    from prefect.client.orchestration import get_client
    from prefect_dask import DaskTaskRunner

    # in this process (the client, and a local cluster's scheduler), and in the local workers, which get its config
    dask.config.set({"distributed.admin.low-level-log-length": DASK_DEBUG_LOG_LENGTH})
    logging.getLogger("distributed").setLevel(logging.WARNING)  # here as in the local workers (silence_logs)
    if address:
        return DaskTaskRunner(address=address)
    with get_client(sync_client=True) as client:
        api_url = str(client.api_url)
    return DaskTaskRunner(cluster_kwargs={"n_workers": workers, "threads_per_worker": 1, "processes": True,
                                          "host": "127.0.0.1", "dashboard_address": None,
                                          "silence_logs": logging.WARNING,
                                          "env": {"PREFECT_API_URL": api_url.rstrip("/")}})


def quiet_shutdown() -> None:
    """Run in each local worker once its work is done. A worker's shutdown can race the scheduler's (a heartbeat in
    flight when the scheduler closes), which Dask logs as an error with a traceback although nothing is lost."""
    logging.getLogger("distributed").setLevel(logging.CRITICAL)


def cluster_size(runner) -> int:
    """Workers of the runner's cluster (at least 1)."""
    return max(1, len(runner.client.scheduler_info().get("workers", {})))


@flow(name="corpus", log_prints=True)
def corpus(
    source: Annotated[str | None, typer.Option(help="Where the MIDI files come from: a folder (default: params.yaml ingest.source)")] = None,
    raw: Annotated[str | None, typer.Option(help="Folder for the validated files (default: params.yaml ingest.out)")] = None,
    tokens: Annotated[str | None, typer.Option(help="Folder for tokens.jsonl and the statistics (default: params.yaml tokenize.out)")] = None,
    dask_address: Annotated[str | None, typer.Option(help=f"Scheduler of an existing Dask cluster, tcp://HOST:PORT (default: ${ADDRESS_VARIABLE}, else a local cluster)")] = None,
    workers: Annotated[int, typer.Option(help="Worker processes of the local cluster")] = 2,
    shard_files: Annotated[int, typer.Option(help="Files per task")] = SHARD_FILES,
) -> dict:
    """Ingest `source` into `raw` and tokenize it into `tokens`, the files' work spread over a Dask cluster."""
    ingest_params, tokenize_params = section("ingest"), section("tokenize")
    source = source or ingest_params.get("source", "music21:bach")
    raw_dir = Path(raw or ingest_params.get("out", "data/raw"))
    tokens_dir = Path(tokens or tokenize_params.get("out", "data/tokens"))
    tokenizer = stage_tokenizer(tokenize_params.get("tokenizer", "timed"),
                                steps_per_quarter=tokenize_params.get("steps_per_quarter", 12),
                                frames_per_quarter=tokenize_params.get("frames_per_quarter", 2))
    address = dask_address or os.environ.get(ADDRESS_VARIABLE) or None
    logger = get_run_logger()
    with dask_runner(address, workers) as runner:
        in_flight = IN_FLIGHT_PER_WORKER * cluster_size(runner)
        logger.info(f"Dask cluster {address or 'local'}: {cluster_size(runner)} worker(s)")
        started = time.perf_counter()
        max_bytes = ingest_params.get("max_bytes", 4_000_000)
        src = open_source(source, out_dir=raw_dir, max_bytes=max_bytes)
        if not src.portable_items:
            logger.info(f"{src.spec}: ingested by this process (its files cannot travel to workers); tokenize runs on the cluster")
        ingested = ingest(src, raw_dir, max_bytes=max_bytes, limit=ingest_params.get("limit", 0),
                          map_shards=shard_map(runner, "ingest", in_flight) if src.portable_items else None,
                          shard_files=shard_files)
        ingest_seconds = time.perf_counter() - started
        print(f"{ingested.summary()} ({ingest_seconds:.1f} s)")
        started = time.perf_counter()
        tokenized = tokenize_corpus(raw_dir, tokens_dir, tokenizer, map_shards=shard_map(runner, "tokenize", in_flight),
                                    shard_files=shard_files, progress=True)
        tokenize_seconds = time.perf_counter() - started
        if not address:  # our own workers only: an existing cluster's logging is its owner's
            runner.client.run(quiet_shutdown)
        print(f"{tokenized.summary()} ({tokenize_seconds:.1f} s)")
    return {"ingested": ingested.ok, "rejected": ingested.rejected, "written": ingested.written,
            "pieces": tokenized.pieces, "tokens": tokenized.tokens, "skipped": len(tokenized.skipped),
            "raw": str(raw_dir), "tokens_dir": str(tokens_dir), "cluster": address or f"local, {workers} workers",
            "ingest_seconds": round(ingest_seconds, 2), "tokenize_seconds": round(tokenize_seconds, 2)}


if __name__ == "__main__":
    cli(corpus)
