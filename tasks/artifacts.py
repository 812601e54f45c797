"""Markdown summaries that every flow run leaves as a Prefect artifact (metrics, drift figures, MLflow runs).

Artifacts are what the Prefect UI shows of a run's outcome without opening its logs.
"""

from collections.abc import Mapping

from prefect.artifacts import create_markdown_artifact


def table(rows: Mapping[str, object]) -> str:
    """A two-column Markdown table of `rows`."""
    return "\n".join(["| item | value |", "|---|---|", *(f"| {key} | {value} |" for key, value in rows.items())])


def leave_summary(key: str, title: str, *sections: str) -> None:
    """A Markdown artifact under `key` (lowercase letters, digits, dashes): a title and its sections."""
    create_markdown_artifact(key=key, markdown="\n\n".join([f"## {title}", *sections]), description=title)
