"""Work in shards: what the corpus stages (ingest, tokenize) share to run on one process or many, and their progress bar.

A stage cuts its files into shards and hands them to a `ShardMap`: the built-in `map` runs them here, one after
another; the corpus flow (flows/corpus.py) passes one that runs them as Prefect tasks on a Dask cluster. Either way
the results come back in shard order, so the stage's output is the same.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any, TypeVar

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
)

T = TypeVar("T")
# map_shards(work, shards): work(shard) for each shard, its results yielded in shard order
ShardMap = Callable[[Callable[[Any], Any], Iterable[Any]], Iterator[Any]]
SHARD_FILES = 250  # files per shard: enough that scheduling costs little, few enough to spread 1,000 files
PROGRESS_MIN_ITEMS = 5  # a bar for a handful of files is only noise


def shards_of(items: Sequence[T], size: int) -> list[Sequence[T]]:
    """`items` cut into consecutive shards of `size` (the last one shorter)."""
    if size < 1:
        raise ValueError(f"a shard holds at least 1 item, not {size}")
    return [items[i : i + size] for i in range(0, len(items), size)]


@contextmanager
def progress_bar(show: bool, description: str, total: int | None) -> Iterator[Any]:
    """Yield advance(steps, label): a transient rich bar on stderr when `show` and stderr is a terminal, else a no-op.

    Not on a file, a pipe or a dumb terminal: rich draws nothing there but still ends with an empty line.
    """
    console = Console(stderr=True)
    if not (show and console.is_interactive):
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


