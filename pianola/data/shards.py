"""Work in shards: what the corpus stages (ingest, tokenize) share to run on one process or many, and their progress bar.

A stage cuts its files into shards and hands them to a `ShardMap`: the built-in `map` runs them here, one after
another; the corpus flow (flows/corpus.py) passes one that runs them as Prefect tasks on a Dask cluster. Either way
the results come back in shard order, so the stage's output is the same.
"""

from __future__ import annotations

import sys
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from itertools import islice
from typing import Any, TypeVar

T = TypeVar("T")
R = TypeVar("R")
# map_shards(work, shards): work(shard) for each shard, its results yielded in shard order
ShardMap = Callable[[Callable[[Any], Any], Iterable[Any]], Iterator[Any]]
SHARD_FILES = 250  # files per shard: enough that scheduling costs little, few enough to spread 1,000 files
PROGRESS_MIN_ITEMS = 5  # a bar for a handful of files is only noise


def shards_of(items: Iterable[T], size: int) -> Iterator[list[T]]:
    """`items` cut into consecutive shards of `size` (the last one shorter), read from `items` one shard at a time."""
    if size < 1:
        raise ValueError(f"a shard holds at least 1 item, not {size}")
    items = iter(items)
    while shard := list(islice(items, size)):
        yield shard


def map_in_order(map_shards: ShardMap, work: Callable[[T], R], shards: Iterable[T]) -> Iterator[tuple[T, R]]:
    """(shard, work(shard)) for each of `shards`, through `map_shards`, in shard order.

    `shards` is read only as fast as `map_shards` submits them, and a shard is held only until its result is back:
    a stream of inputs is never listed whole. Closing this iterator early closes the map's (cancelling its shards in
    flight, where it can).
    """
    sent: deque = deque()  # shards submitted, their results not yet back

    def submitted() -> Iterator[T]:
        for shard in shards:
            sent.append(shard)
            yield shard

    results = map_shards(work, submitted())
    try:
        for result in results:
            yield sent.popleft(), result
    finally:
        close = getattr(results, "close", None)
        if close:
            close()


@contextmanager
def progress_bar(show: bool, description: str, total: int | None) -> Iterator[Any]:
    """Yield advance(steps, label): a transient rich bar on stderr when `show` and stderr is a terminal, else a no-op.

    Not on a file, a pipe or a dumb terminal: rich draws nothing there but still ends with an empty line.
    rich is imported only to draw one: a command's start does without it elsewhere.
    """
    if not (show and getattr(sys.stderr, "isatty", lambda: False)()):
        yield lambda steps, label: None
        return
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    console = Console(stderr=True)
    if not console.is_interactive:  # a dumb terminal
        yield lambda steps, label: None
        return
    columns = (
        TextColumn("[progress.description]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[label]}"),
        TimeElapsedColumn(),
    )
    # No auto-refresh: its thread would be inherited mid-write by the music21 source's forked workers.
    with Progress(*columns, console=console, transient=True, auto_refresh=False) as bar:
        task = bar.add_task(description, total=total, label="")
        yield lambda steps, label: bar.update(task, advance=steps, label=label, refresh=True)


