"""Tasks of the corpus flow: one shard of a corpus stage's work, and the map that runs the shards on a task runner.

The stages themselves (pianola.data.ingest, pianola.data.corpus) cut the work into shards and take whatever
map they are given; here each shard becomes a Prefect task run on the flow's Dask cluster.
"""

from collections import deque
from collections.abc import Callable, Iterable, Iterator
from typing import Any

from prefect import task
from prefect.cache_policies import NO_CACHE
from prefect.task_runners import TaskRunner

SHARD_RETRIES = 2  # a shard whose task failed (its worker died, a file system hiccup) runs again


@task(name="shard", task_run_name="{label}", cache_policy=NO_CACHE, persist_result=False, retries=SHARD_RETRIES)
def run_shard(work: Callable[[Any], Any], shard: Any, label: str) -> Any:
    """work(shard): one shard of a stage, on whichever worker the runner picks."""
    return work(shard)


def shard_map(runner: TaskRunner, stage: str, in_flight: int) -> Callable[[Callable[[Any], Any], Iterable[Any]], Iterator[Any]]:
    """A ShardMap (pianola.data.shards) running each shard as a `run_shard` task on `runner`.

    At most `in_flight` shards are submitted ahead of the one awaited, so results wait in memory only that long;
    results come back in shard order. Closing the iterator early (ingest's limit reached) cancels the shards in flight.
    """

    def map_shards(work: Callable[[Any], Any], shards: Iterable[Any]) -> Iterator[Any]:
        numbered = enumerate(shards, 1)
        pending: deque = deque()

        def submit_next() -> None:
            for number, shard in numbered:
                pending.append(runner.submit(run_shard, {"work": work, "shard": shard, "label": f"{stage} {number}"}))
                return

        for _ in range(max(1, in_flight)):
            submit_next()
        try:
            while pending:
                future = pending.popleft()
                submit_next()
                yield future.result()
        finally:
            for future in pending:
                future.wrapped_future.cancel()  # the Dask future under Prefect's

    return map_shards
