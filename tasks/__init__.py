"""Prefect tasks: thin wrappers over the library and DVC, one module per operation, used by flows/.

Tasks retry only where a retry can help (network, storage); bad data fails the same way twice.
"""

import sys

from prefect import Task
from prefect.client.schemas.objects import TaskRun
from prefect.states import State

from pianola.errors import PianolaError

RETRIES = 3
BACKOFF_SECONDS = 10  # 10 s, 20 s, 40 s: long enough for a flaky network or a throttled store to recover


def is_transient(error: PianolaError) -> bool:
    """Whether a PianolaError says a later try may pass: an object store that did not answer."""
    # Only pianola.storage raises StorageUnreachable, so where it is not loaded the error is not one (and boto3 stays unloaded).
    storage = sys.modules.get("pianola.storage")
    return isinstance(error, getattr(storage, "StorageUnreachable", ()))


def retry_unless_bad_input(task: Task, task_run: TaskRun, state: State) -> bool:
    """Retry a failure unless it is a PianolaError (bad input or set-up, which would fail the same way again)
    other than an unreachable store."""
    try:
        state.result()
    except PianolaError as e:
        return is_transient(e)
    except Exception:
        return True
    return True
