"""Tasks that run DVC, which owns lineage: each stage of dvc.yaml through `dvc repro`, and `dvc push`.

A flow that reproduces stages through these leaves the same outputs and dvc.lock as `dvc repro` does.
"""

import os
import subprocess
import sys
from pathlib import Path

import yaml
from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE
from prefect.tasks import exponential_backoff

from pianola.errors import PianolaError
from tasks import BACKOFF_SECONDS, RETRIES, retry_unless_bad_input

OUTPUT_TAIL = 4000  # characters of a command's output kept in logs and errors


class DvcError(RuntimeError):
    """A dvc command exited non-zero; the message carries what it printed on stderr."""


def dvc(*args: str) -> str:
    """Run `dvc ARGS` in the working directory and return its stdout; raise DvcError with its stderr on failure."""
    # This environment's executables first: the stages call `pianola`, which must be the one the flow runs with.
    env = os.environ | {"PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}
    done = subprocess.run([sys.executable, "-m", "dvc", *args], capture_output=True, text=True, env=env)
    if done.returncode:
        output = (done.stderr.strip() or done.stdout.strip())[-OUTPUT_TAIL:]
        raise DvcError(f"`dvc {' '.join(args)}` failed (exit {done.returncode}):\n{output}")
    return done.stdout


def pipeline_stages(dvc_file: str | os.PathLike = "dvc.yaml") -> list[str]:
    """The stages of dvc.yaml in the order written (`dvc repro STAGE` also brings its upstream stages up to date)."""
    path = Path(dvc_file)
    if not path.exists():
        raise PianolaError(f"{path.resolve()}: not found; run the flows from the project root")
    stages = list((yaml.safe_load(path.read_text()) or {}).get("stages") or {})
    if not stages:
        raise PianolaError(f"{path}: defines no stages")
    return stages


@task(name="dvc repro", task_run_name="dvc repro {stage}", cache_policy=NO_CACHE)
def run_stage(stage: str, force: bool = False) -> str:
    """`dvc repro STAGE` (with `--force --single-item`: this stage even when DVC sees no change). Never retried:
    a stage that failed on its data fails again."""
    stdout = dvc("repro", stage, *(["--force", "--single-item"] if force else []))
    get_run_logger().info(stdout[-OUTPUT_TAIL:])
    return stdout


@task(name="dvc commit", cache_policy=NO_CACHE)
def commit_stages(stages: list[str]) -> str:
    """`dvc commit --force STAGE...`: record outputs made outside `dvc repro` (the corpus flow's) in dvc.lock and the
    cache, so the `dvc repro` that follows finds these stages up to date."""
    return dvc("commit", "--force", *stages)


@task(name="dvc push", retries=RETRIES, retry_delay_seconds=exponential_backoff(BACKOFF_SECONDS),
      retry_condition_fn=retry_unless_bad_input, cache_policy=NO_CACHE)
def push() -> str:
    """`dvc push` to the default remote, retried with backoff: remotes are networks and object stores."""
    try:
        remote = dvc("remote", "default").strip()
    except DvcError as e:
        raise PianolaError(f"no default DVC remote to push to; add one with `dvc remote add -d NAME URL` ({e})") from e
    stdout = dvc("push")
    get_run_logger().info(f"pushed to DVC remote {remote!r}: {stdout.strip()[-OUTPUT_TAIL:]}")
    return remote
