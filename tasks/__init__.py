"""Prefect tasks: thin wrappers over the library and DVC, one module per operation, used by flows/.

Tasks retry only where a retry can help (network, storage); bad data fails the same way twice.
"""

from prefect import Task
from prefect.client.schemas.objects import TaskRun
from prefect.states import State

from pianola.errors import PianolaError

RETRIES = 3
BACKOFF_SECONDS = 10  # 10 s, 20 s, 40 s: long enough for a flaky network or a throttled store to recover


def retry_unless_bad_input(task: Task, task_run: TaskRun, state: State) -> bool:
    """Retry a failure unless it is a PianolaError: bad input or set-up that would fail the same way again."""
    try:
        state.result()
    except PianolaError:
        return False
    except Exception:
        return True
    return True
