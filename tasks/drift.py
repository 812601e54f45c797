"""Tasks of monitoring and retraining: measure drift, and merge new pieces into the corpus source.

The monitor flow measures; the retrain flow merges before it reruns the DVC pipeline.
"""

from prefect import task
from prefect.cache_policies import NO_CACHE

from pianola.data.ingest import merge_new_pieces
from pianola.monitoring.drift import DriftReport, MonitorSettings
from pianola.monitoring.served import ServedDrift, check


@task(name="measure drift", cache_policy=NO_CACHE)
def measure_drift(settings: MonitorSettings) -> DriftReport | ServedDrift:
    """Wasserstein drift of `settings.current` (or of what `settings.served` served) from `settings.reference`,
    written to `settings.out`.
    Not retried: unreadable or empty inputs stay so."""
    return check(settings)


@task(name="merge new pieces", cache_policy=NO_CACHE)
def merge_new_data(current: str, source: str) -> list[str]:
    """Copy the new MIDI files of `current` into the corpus source folder `source`; the files written."""
    return [str(path) for path in merge_new_pieces(current, source)]
