"""The workspace guard: flows that write the DVC workspace (pipeline, retrain) take turns on it.

Each holds the one slot of the Prefect global concurrency limit `pianola-workspace` for as long as it writes the
workspace, so a retrain that fires during the weekly pipeline waits for it instead of failing on DVC's lock. The
limit is created (limit 1) by the first flow that needs it. The guard is re-entrant within a run: retrain holds
the slot over its merge and the pipeline it calls, and that pipeline, already inside, does not acquire it again.

A limit lives on a Prefect server. Without PREFECT_API_URL a flow runs on a temporary server of its own, where a
limit would guard nothing but that one process, so the guard is skipped; a second writer then fails on DVC's lock.
"""

import os
import time
from collections.abc import Iterator
from contextlib import AbstractContextManager, ExitStack, contextmanager
from contextvars import ContextVar

import httpx
from prefect import get_run_logger
from prefect.client.orchestration import get_client
from prefect.client.schemas.actions import GlobalConcurrencyLimitCreate
from prefect.client.schemas.objects import ConcurrencyLeaseHolder
from prefect.client.schemas.responses import GlobalConcurrencyLimitResponse
from prefect.concurrency.sync import concurrency
from prefect.context import FlowRunContext
from prefect.exceptions import ObjectAlreadyExists, ObjectNotFound
from prefect.settings import get_current_settings

from pianola.errors import PianolaError

WORKSPACE_LIMIT = "pianola-workspace"
LIMIT_VARIABLE = "PIANOLA_WORKSPACE_LIMIT"  # another name, for several workspaces served by one Prefect server
WAIT_SECONDS = 3600.0  # a full pipeline run on the demo preset, with room to spare
WAIT_VARIABLE = "PIANOLA_WORKSPACE_WAIT_SECONDS"
# The server frees the slot of a flow that died this long after its last renewal (every 3/4 of it, while it runs).
LEASE_SECONDS = 300.0

_holding: ContextVar[bool] = ContextVar("pianola_workspace_holding", default=False)


def limit_name() -> str:
    return os.environ.get(LIMIT_VARIABLE) or WORKSPACE_LIMIT


def wait_seconds() -> float:
    """How long a flow waits for the workspace: PIANOLA_WORKSPACE_WAIT_SECONDS, else an hour."""
    value = os.environ.get(WAIT_VARIABLE)
    if not value:
        return WAIT_SECONDS
    try:
        seconds = float(value)
    except ValueError:
        seconds = -1.0
    if not seconds > 0:
        raise PianolaError(f"{WAIT_VARIABLE}={value!r}: expected a number of seconds above 0")
    return seconds


def shared_server() -> bool:
    """Whether flows run against a Prefect server that others share (PREFECT_API_URL), not a temporary one."""
    return bool(get_current_settings().api.url)


def ensure_limit(name: str) -> GlobalConcurrencyLimitResponse:
    """The global concurrency limit `name`, created with limit 1 where it does not exist yet.

    Prefect 3.9 no longer creates a limit on first use (`create_if_missing` is deprecated and ignored; a missing
    limit is skipped with a warning, or an error with `strict`), hence this. An existing limit is left as its
    owner set it.
    """
    with get_client(sync_client=True) as client:
        try:
            return client.read_global_concurrency_limit_by_name(name)
        except ObjectNotFound:
            pass
        try:
            client.create_global_concurrency_limit(GlobalConcurrencyLimitCreate(name=name, limit=1))
        except ObjectAlreadyExists:
            pass  # another flow created it in the meantime
        return client.read_global_concurrency_limit_by_name(name)


def _locked(error: BaseException) -> bool:
    """Whether an acquisition failed because the slot is taken (the server's 423 Locked, which Prefect raises
    from when it is not to retry)."""
    cause = error.__cause__
    return isinstance(cause, httpx.HTTPStatusError) and cause.response.status_code == 423


@contextmanager
def workspace(purpose: str) -> Iterator[None]:
    """Hold the workspace for the body: one slot of the `pianola-workspace` limit, waited for up to
    `wait_seconds()` (then a PianolaError), released on exit even when the body fails. A no-op inside a flow that
    already holds it, and without a shared Prefect server."""
    if _holding.get():
        yield
        return
    logger = get_run_logger()
    if not shared_server():
        logger.debug(f"No PREFECT_API_URL: a temporary Prefect server, so {limit_name()!r} is not acquired")
        yield
        return
    name, wait = limit_name(), wait_seconds()
    limit = ensure_limit(name)
    if limit.limit != 1 or not limit.active:
        logger.warning(f"Concurrency limit {name!r} is {'inactive' if not limit.active else f'set to {limit.limit}'}: "
                       "flows that write the workspace may run at once (`prefect gcl update` sets it back to 1)")
    run = FlowRunContext.get()
    holder = ConcurrencyLeaseHolder(type="flow_run", id=run.flow_run.id) if run and run.flow_run else None

    def slot(**waiting: float | None) -> AbstractContextManager[None]:
        # strict: a limit that cannot be acquired is an error, not a warning and a run without it. A lease renewal
        # that fails only logs: cancelling a training run halfway would be worse.
        return concurrency(name, occupy=1, lease_duration=LEASE_SECONDS, strict=True, holder=holder,
                           raise_on_lease_renewal_failure=False, **waiting)

    acquired_at: list[float] = []

    def log_release() -> None:
        if acquired_at:
            logger.info(f"Released {name!r} after {time.monotonic() - acquired_at[0]:.0f} s")

    with ExitStack() as stack:
        stack.callback(log_release)  # runs last: once the slot is back
        started = time.monotonic()
        try:
            stack.enter_context(slot(max_retries=0))  # the slot at once, or refused
        except Exception as e:  # noqa: BLE001 - any error is met again, and raised, by the waiting attempt below
            if _locked(e):
                logger.info(f"Workspace busy (another flow holds {name!r}): waiting up to {wait:.0f} s")
            try:
                stack.enter_context(slot(timeout_seconds=wait))
            except TimeoutError:
                raise PianolaError(
                    f"the workspace stayed busy for {wait:.0f} s: another flow holds the concurrency limit {name!r} "
                    f"(`prefect gcl inspect {name}`); set {WAIT_VARIABLE} to wait longer") from None
        acquired_at.append(time.monotonic())
        logger.info(f"Acquired {name!r} for {purpose} (waited {acquired_at[0] - started:.0f} s)")
        token = _holding.set(True)
        try:
            yield
        finally:
            _holding.reset(token)
