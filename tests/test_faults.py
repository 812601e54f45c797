"""Fault injection (issue 15): a kill anywhere, and a full disk.

A kill: each stage of a tiny project (a git + DVC repository like tests/test_flows.py's) is SIGKILLed mid-work,
with its whole process group, then rerun. The rerun must complete and leave what an uninterrupted run leaves
(byte for byte where the stage is deterministic), no partial file under data/, models/, outputs/ or metrics/,
registry aliases on complete versions, and `dvc status` (and `dvc status -c` after a push) clean.

"Mid-work" is made exact by a stall: the stage runs with a sitecustomize module on its PYTHONPATH (written by the
fixture, see HOOK) whose audit hook pauses the process just before a chosen rename - os.replace, the commit point of
every atomic write - and tells the test, which kills it there: the temporary file or staging folder is written and
not yet renamed. Which rename is drawn, seeded, among those the reference run made (PIANOLA_FAULT_SEED=N draws
others). Where the moment is not a rename the hook stalls before a call: training at a seeded step of epoch 2 (Keras's
batch-end callbacks) and as Keras writes its backup, `promote` as it moves the alias; `dvc push` before a seeded one
of its uploads' renames.

A full disk: writes that fail (ENOSPC injected, a real tmpfs filled up where this runs as root, a file-size limit)
keep the previous file and say which path failed, and a stage reports it as one line, without a traceback.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import random
import re
import resource
import shutil
import signal
import subprocess
import sys
import textwrap
import time
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from conftest import make_midi, motif_notes, tiny_dvc_repo

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
SEED = int(os.environ.get("PIANOLA_FAULT_SEED", "15"))
PIECES = 6
OUTPUT_ROOTS = ("data", "models", "outputs", "metrics")
STALL_S = 180  # the most a stage may take to reach its kill point

pytestmark = pytest.mark.faults

# Imported by every Python process of a stage (on PYTHONPATH). In the processes PIANOLA_FAULT_PROCS matches (`pianola`
# by default): log every rename and rmtree (PIANOLA_FAULT_LOG); stall just before the PIANOLA_FAULT_NTH one whose path
# matches PIANOLA_FAULT_STALL, or before the PIANOLA_FAULT_NTH call of PIANOLA_FAULT_CALL ("module:Class.method",
# patched as the module is imported), after writing what it stalls before to PIANOLA_FAULT_READY.
HOOK = textwrap.dedent('''
    import os, re, sys, time


    def _stall(what):
        with open(os.environ["PIANOLA_FAULT_READY"], "w") as f:
            f.write(what)
        time.sleep(3600)


    if re.search(os.environ.get("PIANOLA_FAULT_PROCS", r"(^|/)pianola$"), sys.argv[0] if sys.argv else ""):
        _log, _at = os.environ.get("PIANOLA_FAULT_LOG"), os.environ.get("PIANOLA_FAULT_STALL")
        _nth, _seen = int(os.environ.get("PIANOLA_FAULT_NTH", "1")), [0]

        def _hook(event, args):
            if event not in ("os.rename", "shutil.rmtree"):
                return
            path = os.path.abspath(os.fsdecode(args[1] if event == "os.rename" else args[0]))
            if _log:
                with open(_log, "a") as f:
                    f.write(f"{event} {path}\\n")
            if _at and re.search(_at, path):
                _seen[0] += 1
                if _seen[0] == _nth:
                    _stall(f"{event} {path}")

        if _log or _at:
            sys.addaudithook(_hook)

        _call = os.environ.get("PIANOLA_FAULT_CALL")
        if _call:
            import importlib.abc
            import importlib.util

            _module, _qualname = _call.split(":")

            class _Patch(importlib.abc.MetaPathFinder):
                def find_spec(self, name, path=None, target=None):
                    if name != _module:
                        return None
                    sys.meta_path.remove(self)
                    spec = importlib.util.find_spec(name)
                    execute = spec.loader.exec_module

                    def exec_module(module):
                        execute(module)
                        *owners, attribute = _qualname.split(".")
                        owner = module
                        for part in owners:
                            owner = getattr(owner, part)
                        real, calls = getattr(owner, attribute), [0]

                        def stalled(*args, **kwargs):
                            calls[0] += 1
                            if calls[0] == _nth:
                                _stall(_call)
                            return real(*args, **kwargs)

                        setattr(owner, attribute, stalled)

                    spec.loader.exec_module = exec_module
                    return spec

            sys.meta_path.insert(0, _Patch())
''')


# ---------------------------------------------------------------------------------------------------------------
# helpers


def tree(root: Path, *parts: str) -> dict[str, bytes]:
    """Every file under root/PART..., by path relative to root, with its bytes."""
    files = {}
    for part in parts:
        base = root / part
        paths = [base] if base.is_file() else sorted(p for p in base.rglob("*") if p.is_file()) if base.is_dir() else []
        for path in paths:
            files[str(path.relative_to(root))] = path.read_bytes()
    return files


def differences(before: dict[str, bytes], after: dict[str, bytes]) -> list[str]:
    return sorted({name for name in before.keys() | after.keys() if before.get(name) != after.get(name)})


def leftovers(repo: Path) -> list[str]:
    """What an interrupted write can leave under the output folders: temporary files, staging or moved-aside folders
    (hidden names; .gitignore files are DVC's), and training's resume state once training has finished."""
    found = []
    for part in OUTPUT_ROOTS:
        for path in sorted((repo / part).rglob("*")) if (repo / part).is_dir() else []:
            relative = path.relative_to(repo)
            if relative.parts[:2] == ("models", ".work"):
                if path.is_file():  # train deletes its state when it finishes; an empty run folder may stay
                    found.append(str(relative))
                continue
            if path.name.endswith(".tmp") or (path.name.startswith(".") and path.name != ".gitignore"):
                found.append(str(relative))
    return found


def kill(process: subprocess.Popen) -> None:
    """SIGKILL a process the test started and its children (it leads its own process group), and reap it."""
    try:
        os.killpg(process.pid, signal.SIGKILL)  # the group even if its leader is gone
    except ProcessLookupError:
        pass
    process.wait()


def run(args: list[str], cwd: Path, env: dict, check: bool = True, **kwargs) -> subprocess.CompletedProcess:
    done = subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, check=False, **kwargs)
    if check:
        assert done.returncode == 0, f"{' '.join(map(str, args))} failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    return done


@dataclass
class Project:
    work: Path
    repo: Path
    env: dict
    renames: list[str]  # destinations of the renames (and rmtree paths) of the reference `dvc repro`, in order
    reference: dict[str, bytes]  # the output files of the reference run
    printed: str = ""  # what the reference run printed
    rng: random.Random = field(default_factory=lambda: random.Random(SEED))

    def dvc(self, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        return run([sys.executable, "-m", "dvc", *args], self.repo, self.env, check=check)

    def outputs(self) -> dict[str, bytes]:
        return tree(self.repo, *OUTPUT_ROOTS, "dvc.lock")

    def points(self, pattern: str) -> list[str]:
        """The reference run's renames into a path matching `pattern` (relative to the repository)."""
        prefix = f"os.rename {self.repo}/"
        return [p for p in self.renames if p.startswith(prefix) and re.search(pattern, p[len(prefix):])]

    def kill_at(self, args: list[str], stall: str = "", nth: int = 1, procs: str | None = None,
                call: str | None = None) -> tuple[str, str]:
        """Start `args`; SIGKILL its process group at the stall: the `nth` rename to a path matching `stall`, or the
        `nth` call of `call`. What it was about to do, and what it printed."""
        ready = self.work / "stalled"
        ready.unlink(missing_ok=True)
        env = self.env | {"PIANOLA_FAULT_STALL": stall, "PIANOLA_FAULT_NTH": str(nth), "PIANOLA_FAULT_READY": str(ready)}
        env |= ({"PIANOLA_FAULT_PROCS": procs} if procs else {}) | ({"PIANOLA_FAULT_CALL": call} if call else {})
        log = self.work / "killed.log"
        with open(log, "w") as out:
            process = subprocess.Popen(args, cwd=self.repo, env=env, stdout=out, stderr=subprocess.STDOUT,
                                       start_new_session=True)
        deadline = time.monotonic() + STALL_S
        try:
            while not ready.exists():
                assert process.poll() is None, f"{' '.join(args)} ended before {stall or call}:\n{log.read_text()[-3000:]}"
                assert time.monotonic() < deadline, f"{' '.join(args)} never reached {stall or call}:\n{log.read_text()[-3000:]}"
                time.sleep(0.02)
        finally:
            kill(process)
        assert process.returncode == -signal.SIGKILL
        return ready.read_text(), log.read_text()

    def rerun(self, stage: str) -> str:
        """Run STAGE again (`dvc repro --force --single-item`: a plain `dvc repro` would only check the last outputs
        out of the cache), then `dvc repro`, run cache off, for the stages after it; what they printed."""
        return self.dvc("repro", "--force", "--single-item", stage).stdout + self.dvc("repro", "--no-run-cache").stdout

    def assert_clean(self) -> None:
        assert not leftovers(self.repo), f"partial files left: {leftovers(self.repo)}"
        status = self.dvc("status").stdout
        assert "Data and pipelines are up to date" in status, status


@pytest.fixture(scope="module")
def project(tmp_path_factory) -> Project:
    """The tiny project, reproduced once uninterrupted: the reference."""
    work = tmp_path_factory.mktemp("faults")
    for key in range(PIECES):
        make_midi(work / "source" / f"piece{key}.mid", motif_notes(key))
    (work / "hook").mkdir()
    (work / "hook" / "sitecustomize.py").write_text(HOOK)
    env = os.environ | {
        "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}",
        "MLFLOW_TRACKING_URI": f"sqlite:///{work / 'mlflow.db'}",
        "PYTHONPATH": os.pathsep.join(filter(None, [str(work / "hook"), os.environ.get("PYTHONPATH")])),
        "PYTHONUNBUFFERED": "1",
    }
    repo = tiny_dvc_repo(work / "repo", work / "source", work / "dvc-remote", env)
    log = work / "renames.log"
    printed = run([sys.executable, "-m", "dvc", "repro"], repo, env | {"PIANOLA_FAULT_LOG": str(log)}).stdout
    project = Project(work, repo, env, log.read_text().splitlines(), {}, printed)
    project.reference = project.outputs()
    project.assert_clean()
    return project


def stage_rerun(project: Project, stage: str, stall: str) -> tuple[str, str]:
    """Kill `dvc repro STAGE` before a seeded draw among the stage's renames to a path matching `stall`, rerun;
    (what it was killed before, the rerun's output)."""
    points = project.points(stall)
    assert points, f"the reference run made no rename matching {stall}"
    point = project.rng.choice(points)
    path = re.escape(point.split(" ", 1)[1]) + "$"
    nth = points[: points.index(point) + 1].count(point)
    killed, _ = project.kill_at([sys.executable, "-m", "dvc", "repro", "--force", "--single-item", stage], path, nth)
    return killed, project.rerun(stage)


# ---------------------------------------------------------------------------------------------------------------
# a kill anywhere: the stages


def test_ingest_killed_mid_write_reruns_to_the_same_files(project: Project) -> None:
    before = project.outputs()
    for path in (project.repo / "data/raw").iterdir():  # a fresh ingest: every file is written again
        path.unlink()
    killed, rerun = stage_rerun(project, "ingest", r"^data/raw/")
    assert "Running stage 'ingest'" in rerun, killed
    assert "Running stage 'tokenize'" not in rerun  # the same files: nothing downstream changed
    assert differences(before, project.outputs()) == [], killed
    project.assert_clean()


def test_tokenize_killed_mid_write_reruns_to_the_same_files(project: Project) -> None:
    before = project.outputs()
    killed, rerun = stage_rerun(project, "tokenize", r"^data/tokens/")
    assert "Running stage 'tokenize'" in rerun and "Running stage 'sequences'" not in rerun, killed
    assert differences(before, project.outputs()) == [], killed
    project.assert_clean()


def test_sequences_killed_mid_write_reruns_to_the_same_files(project: Project) -> None:
    before = project.outputs()
    killed, rerun = stage_rerun(project, "sequences", r"^data/sequences/")
    assert "Running stage 'sequences'" in rerun and "Running stage 'train'" not in rerun, killed
    assert differences(before, project.outputs()) == [], killed
    project.assert_clean()


def bundle_facts(repo: Path) -> dict:
    """The bundle's metadata, after checking that every file of it is there and whole."""
    bundle = repo / "models/candidate"
    assert {"bundle.json", "model.keras", "vocab.json", "primers.npy"} <= {p.name for p in bundle.iterdir()}
    with zipfile.ZipFile(bundle / "model.keras") as archive:
        assert archive.testzip() is None
    json.loads((bundle / "vocab.json").read_text())
    return json.loads((bundle / "bundle.json").read_text())


def assert_trained_like_the_reference(project: Project, killed: str) -> None:
    facts = bundle_facts(project.repo)
    reference = json.loads(project.reference["models/candidate/bundle.json"])
    # evaluate ran on the new bundle (so it loads), and its metrics are those of a model trained the same way
    metrics = json.loads((project.repo / "metrics/evaluate.json").read_text())
    expected = json.loads(project.reference["metrics/evaluate.json"])
    assert metrics["cross_entropy"] == pytest.approx(expected["cross_entropy"], abs=0.25), killed
    assert facts["info"]["heldout"]["cross_entropy"] == pytest.approx(reference["info"]["heldout"]["cross_entropy"], abs=0.25)
    candidate = registry(project).get_model_version_by_alias("pianola", "candidate")
    assert candidate.run_id == facts["info"]["run_id"]  # the candidate is the bundle the rerun made
    version_bundle(project, candidate.version)
    project.assert_clean()
    epochs = [h["epoch"] for h in facts["info"]["history"]]
    curves = (project.repo / "metrics/training_curves.csv").read_text().splitlines()[1:]
    assert epochs == [0, 1, 2], f"each epoch once in the resumed run's history: {epochs}"
    assert len(curves) == 3


def steps_per_epoch(project: Project) -> int:
    """Training steps per epoch in the reference run (Keras's "5/5 - 0s - ..." lines)."""
    return int(re.search(r"^(\d+)/\1 - ", project.printed, re.MULTILINE)[1])


BATCH_END = "keras.src.callbacks.callback_list:CallbackList.on_train_batch_end"
BACKUP_WRITTEN = "keras.src.saving.saving_lib:H5IOStore.close"  # the backup's weights are in the file once it closes


def test_train_killed_mid_epoch_then_while_saving_reruns_to_a_complete_bundle(project: Project) -> None:
    train = [sys.executable, "-m", "dvc", "repro", "--force", "--single-item", "train"]
    steps = steps_per_epoch(project)
    step = project.rng.randint(1, steps)
    project.kill_at(train, call=BATCH_END, nth=steps + step)  # at a random step of epoch 2
    state = next((project.repo / "models/.work").rglob("state.json"), None)
    assert state and (state.parent / "backup").is_dir(), "nothing to resume from"
    # The rerun resumes from the last finished epoch; killed again as it moves the bundle in.
    killed, printed = project.kill_at(train, r"/models/candidate$")
    assert "Epoch 1/" not in printed and "Epoch 2/" in printed and "Epoch 3/" in printed, printed
    assert [h["epoch"] for h in json.loads(state.read_text())["history"]] == [0, 1, 2]
    rerun = project.rerun("train")
    assert "Running stage 'evaluate'" in rerun, rerun
    assert_trained_like_the_reference(project, f"step {step} of epoch 2, then {killed}")


def test_train_killed_while_writing_its_backup_resumes(project: Project) -> None:
    """Killed as Keras writes the epoch's backup (BackupAndRestore): the weights file is cut short. Run outside DVC,
    unregistered and with another seed (another resume folder), so the stage's state stays as it is."""
    out = project.work / "backup-killed"
    train = ["pianola", "train", "--sequences", "data/sequences", "--out", str(out), "--seed", "1", "--no-register"]
    project.kill_at(train, call=BACKUP_WRITTEN, nth=2)  # the backup of epoch 2
    runs = {p.parent for p in (project.repo / "models/.work").rglob("backup")}
    assert len(runs) == 1, runs
    resumed = run(train, project.repo, project.env, check=False)
    try:
        assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-3000:]
        info = json.loads((out / "bundle.json").read_text())["info"]
        assert [h["epoch"] for h in info["history"]] == [0, 1, 2] and info["heldout"]["cross_entropy"] > 0
    finally:
        for folder in runs:  # the next test starts from a clean resume folder either way
            shutil.rmtree(folder)


def test_evaluate_killed_mid_write_reruns_to_the_same_metrics(project: Project) -> None:
    before = project.outputs()
    killed, rerun = stage_rerun(project, "evaluate", r"^metrics/(evaluate\.json|training_curves\.csv)$")
    assert "Running stage 'evaluate'" in rerun, killed
    assert differences(before, project.outputs()) == [], killed
    project.assert_clean()


def test_generate_killed_mid_write_reruns_to_the_same_pieces(project: Project) -> None:
    before = project.outputs()
    killed, rerun = stage_rerun(project, "generate", r"^(outputs/generated/|metrics/generate\.json$)")
    assert "Running stage 'generate'" in rerun, killed
    assert differences(before, project.outputs()) == [], killed
    project.assert_clean()


# ---------------------------------------------------------------------------------------------------------------
# a kill anywhere: the registry and the remote


def registry(project: Project):
    from mlflow.tracking import MlflowClient

    return MlflowClient(tracking_uri=project.env["MLFLOW_TRACKING_URI"])


def version_bundle(project: Project, version: str) -> dict:
    """A registered version's bundle.json, after checking that the version is READY and its logged bundle whole."""
    from urllib.parse import urlparse

    client = registry(project)
    assert client.get_model_version("pianola", version).status == "READY"
    where = client.get_model_version_download_uri("pianola", version)
    files = Path(urlparse(where).path if where.startswith("file:") else where)
    bundle = next(files.rglob("bundle.json")).parent
    with zipfile.ZipFile(bundle / "model.keras") as archive:
        assert archive.testzip() is None
    return json.loads((bundle / "bundle.json").read_text())


def aliases(project: Project) -> dict[str, str]:
    return {k: str(v) for k, v in registry(project).get_registered_model("pianola").aliases.items()}


def test_promote_killed_leaves_the_champion_on_a_complete_version(project: Project) -> None:
    promote = ["pianola", "promote", "--midi", "data/raw"]
    client = registry(project)
    by_loss = sorted((version_bundle(project, v.version)["info"]["heldout"]["cross_entropy"], int(v.version))
                     for v in client.search_model_versions("name='pianola'"))
    if by_loss[0][0] == by_loss[-1][0]:  # run alone: a weaker model (one epoch) to be the champion
        run(["pianola", "train", "--epochs", "1", "--out", str(project.work / "weak"), "--sequences", "data/sequences"],
            project.repo, project.env)
        by_loss.append((float("inf"), int(aliases(project)["candidate"])))
    good, worse = str(by_loss[0][1]), str(by_loss[-1][1])
    client.set_registered_model_alias("pianola", "champion", worse)
    client.set_registered_model_alias("pianola", "candidate", good)

    # Killed as it moves the alias (both models evaluated, the candidate's score tagged).
    project.kill_at(promote, call="mlflow.tracking.client:MlflowClient.set_registered_model_alias")
    assert aliases(project) == {"champion": worse, "candidate": good}
    load = "from pianola.models.bundle import load_bundle; print(load_bundle('models:/pianola@champion').info['run_id'])"
    loaded = run([sys.executable, "-c", load], project.repo, project.env)
    assert loaded.stdout.split()[-1] == client.get_model_version("pianola", worse).run_id

    done = run(promote, project.repo, project.env).stdout
    assert f"candidate version {good}" in done and "promoted to champion" in done, done
    assert aliases(project) == {"champion": good, "candidate": good}
    version_bundle(project, good)
    project.assert_clean()


def remote_objects(remote: Path) -> dict[str, Path]:
    return {str(p.relative_to(remote)): p for p in sorted(remote.rglob("*")) if p.is_file()}


def test_dvc_push_killed_then_rerun_leaves_the_remote_in_sync(project: Project) -> None:
    remote = project.work / "dvc-remote"
    status = project.dvc("status", "-c").stdout
    uploads = status.count("new:")
    assert uploads > 3, status
    killed, _ = project.kill_at([sys.executable, "-m", "dvc", "push"], re.escape(str(remote)) + "/",
                                project.rng.randint(2, uploads - 1), procs=r"^-m$")
    assert "in sync" not in project.dvc("status", "-c").stdout, killed
    project.dvc("push")
    assert "Cache and remote 'local' are in sync" in project.dvc("status", "-c").stdout
    objects = remote_objects(remote)
    # DVC uploads to a temporary name, then renames: a killed push leaves its upload in progress as
    # files/md5/XX/.RANDOM.tmp, which DVC never reads as an object; every object is whole: its bytes hash to its name.
    partial = [name for name in objects if name.endswith(".tmp")]
    assert all(re.fullmatch(r"files/md5/[0-9a-f]{2}/\.[\w-]{22}\.tmp", name) for name in partial), partial
    whole = {name: path for name, path in objects.items() if name not in partial}
    assert all(re.fullmatch(r"files/md5/[0-9a-f]{2}/[0-9a-f]{30}(\.dir)?", name) for name in whole), whole
    for name, path in whole.items():
        assert hashlib.md5(path.read_bytes()).hexdigest() == "".join(name.split("/")[2:])[:32], name
    project.assert_clean()


# ---------------------------------------------------------------------------------------------------------------
# a kill anywhere: the atomic writers themselves, killed at each of their steps

WRITER = textwrap.dedent('''
    import sys
    from pathlib import Path
    from pianola.io import atomic_folder, atomic_write_bytes

    kind, target, content = sys.argv[1], Path(sys.argv[2]), sys.argv[3]
    if kind == "folder":
        with atomic_folder(target) as staging:
            for name in ("a", "b", "c"):
                (staging / name).write_text(content + name)
    else:
        atomic_write_bytes(target, content.encode())
''')


def writer(tmp_path: Path, kind: str, target: Path, content: str, env: dict | None = None) -> tuple[list[str], dict]:
    """The command line and environment of one atomic write of `kind` to `target` in a fresh process."""
    script, hook = tmp_path / "writer.py", tmp_path / "hook"
    if not script.exists():
        script.write_text(WRITER)
        hook.mkdir()
        (hook / "sitecustomize.py").write_text(HOOK)
    env = os.environ | {"PYTHONPATH": f"{hook}{os.pathsep}{ROOT}", "PIANOLA_FAULT_PROCS": r"writer\.py$"} | (env or {})
    return [sys.executable, str(script), kind, str(target), content], env


def write(tmp_path: Path, kind: str, target: Path, content: str, env: dict | None = None) -> None:
    args, env = writer(tmp_path, kind, target, content, env)
    subprocess.run(args, env=env, check=True)


def content_of(target: Path, kind: str) -> str | None:
    """"old", "new" or "next": what the writer wrote there (a folder must hold one version whole); None: nothing."""
    if kind == "folder":
        if not target.is_dir():
            return None
        texts = {p.name: p.read_text() for p in target.iterdir()}
        versions = {text[:-1] for text in texts.values()}
        assert sorted(texts) == ["a", "b", "c"] and len(versions) == 1, f"a mix of files: {texts}"
        return versions.pop()
    return target.read_text() if target.exists() else None


@pytest.mark.parametrize("kind", ["file", "folder"])
def test_an_atomic_write_killed_at_any_step_keeps_the_previous_output(tmp_path: Path, kind: str) -> None:
    from pianola.io import atomic_folder, atomic_write_bytes, clean_leftovers

    probe = tmp_path / "probe" / "out"
    write(tmp_path, kind, probe, "old")
    log = tmp_path / "steps.log"
    write(tmp_path, kind, probe, "new", {"PIANOLA_FAULT_LOG": str(log)})
    steps = [re.sub(r"\.[a-z0-9_]{8}(?=\.|$)", ".*", line.replace(str(probe.parent) + "/", ""))
             for line in log.read_text().splitlines()]
    assert steps, "the writer made no rename"
    for i, step in enumerate(steps):
        folder = tmp_path / f"case{i}"
        target = folder / "out"
        write(tmp_path, kind, target, "old")
        ready = tmp_path / f"stalled{i}"
        args, env = writer(tmp_path, kind, target, "new", {
            "PIANOLA_FAULT_STALL": re.escape(str(folder)) + "/", "PIANOLA_FAULT_NTH": str(i + 1),
            "PIANOLA_FAULT_READY": str(ready)})
        process = subprocess.Popen(args, env=env, start_new_session=True)
        deadline = time.monotonic() + 60
        try:
            while not ready.exists():
                assert process.poll() is None and time.monotonic() < deadline, f"never stalled before {step}"
                time.sleep(0.01)
            # While the writer lives, a clean-up (another process's first write into the folder) leaves its work
            # alone: at most the previous folder goes, once the new one is in.
            handled = clean_leftovers(folder)
            assert not handled or (content_of(target, kind) == "new" and all(n.endswith(".old.tmp") for n in handled)), \
                f"a live writer's files removed before {step}: {handled}"
        finally:
            kill(process)
        # Killed just before `step`: the previous output, or the new one once committed; never a mix.
        now = content_of(target, kind)
        assert now in ("old", "new") or (kind == "folder" and now is None), f"killed before {step}: {now!r}"
        if kind == "folder":
            with atomic_folder(folder / "other") as staging:  # any folder write beside it puts the previous one back
                (staging / "x").write_text("x")
            assert content_of(target, kind) in ("old", "new"), f"killed before {step}: the previous folder is lost"
            with atomic_folder(target) as staging:
                for name in ("a", "b", "c"):
                    (staging / name).write_text("next" + name)
        else:
            atomic_write_bytes(target, b"next")  # the next write of the target removes what the killed one left
        assert content_of(target, kind) == "next"
        left = sorted(p.name for p in folder.iterdir())
        assert left == (["out"] if kind == "file" else ["other", "out"]), f"killed before {step}: left {left}"


# ---------------------------------------------------------------------------------------------------------------
# a full disk

def full_disk(*args, **kwargs):
    raise OSError(errno.ENOSPC, "No space left on device")


@pytest.mark.parametrize("where", ["fsync", "replace", "write"])
def test_a_write_on_a_full_disk_keeps_the_previous_file_and_names_it(tmp_path: Path, monkeypatch, where: str) -> None:
    from pianola import io
    from pianola.errors import PianolaError

    target = tmp_path / "data" / "tokens.jsonl"
    io.atomic_write_bytes(target, b"previous\n")
    if where == "write":
        with pytest.raises(PianolaError) as raised, io.atomic_path(target) as tmp:
            tmp.write_bytes(b"half")
            raise OSError(errno.ENOSPC, "No space left on device")  # what a writer's own write raises
    else:
        monkeypatch.setattr(io.os, where, full_disk)
        with pytest.raises(PianolaError) as raised:
            io.atomic_write_json(target, {"new": True})
        monkeypatch.undo()
    assert str(raised.value) == f"cannot write {target}: No space left on device; the previous file is kept"
    assert target.read_bytes() == b"previous\n"
    assert sorted(p.name for p in target.parent.iterdir()) == ["tokens.jsonl"]


def test_a_first_write_on_a_full_disk_says_nothing_was_written(tmp_path: Path, monkeypatch) -> None:
    from pianola import io
    from pianola.errors import PianolaError

    monkeypatch.setattr(io.os, "replace", full_disk)
    with pytest.raises(PianolaError, match=r"cannot write .*new\.json: No space left on device; nothing was written"):
        io.atomic_write_json(tmp_path / "new.json", {})
    monkeypatch.undo()
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("where", ["inside", "swap"])
def test_a_folder_write_on_a_full_disk_keeps_the_previous_folder(tmp_path: Path, monkeypatch, where: str) -> None:
    from pianola import io
    from pianola.errors import PianolaError

    target = tmp_path / "models" / "candidate"
    with io.atomic_folder(target) as staging:
        (staging / "model.keras").write_bytes(b"previous")
    with pytest.raises(PianolaError) as raised, io.atomic_folder(target) as staging:
        (staging / "model.keras").write_bytes(b"new")
        if where == "inside":
            raise OSError(errno.ENOSPC, "No space left on device")
        real, calls = os.replace, []

        def replace(src, dst):  # the staging folder cannot be moved in (the first rename to the target)
            calls.append(dst)
            return full_disk() if Path(dst) == target and calls.count(dst) == 1 else real(src, dst)

        monkeypatch.setattr(io.os, "replace", replace)
    monkeypatch.undo()
    assert str(raised.value) == f"cannot write {target}: No space left on device; the previous folder is kept"
    assert (target / "model.keras").read_bytes() == b"previous"
    assert sorted(p.name for p in target.parent.iterdir()) == ["candidate"]


def test_a_nested_write_failing_in_a_folder_names_the_folder(tmp_path: Path, monkeypatch) -> None:
    from pianola import io
    from pianola.errors import PianolaError

    target = tmp_path / "models" / "candidate"
    monkeypatch.setattr(io.os, "fsync", full_disk)
    with pytest.raises(PianolaError) as raised, io.atomic_folder(target) as staging:
        io.atomic_write_json(staging / "bundle.json", {})
    monkeypatch.undo()
    assert str(raised.value) == f"cannot write {target}: No space left on device; nothing was written"
    assert list(target.parent.iterdir()) == []


def tokenize_args(raw: Path, out: Path) -> list[str]:
    return [str(BIN / "pianola"), "tokenize", "--in", str(raw), "--out", str(out)]


def assert_one_line_error(done: subprocess.CompletedProcess, expected: str) -> None:
    assert done.returncode == 1, done.stdout + done.stderr
    assert "Traceback" not in done.stderr, done.stderr
    assert done.stderr.strip().splitlines() == [expected], done.stderr


@pytest.fixture
def raw(tmp_path: Path) -> Path:
    for key in range(PIECES):
        make_midi(tmp_path / "raw" / f"piece{key}.mid", motif_notes(key))
    return tmp_path / "raw"


def test_tokenize_past_a_file_size_limit_is_a_one_line_error_and_keeps_its_output(tmp_path: Path, raw: Path) -> None:
    out = tmp_path / "tokens"
    run(tokenize_args(raw, out), tmp_path, os.environ)
    before = tree(out)
    make_midi(raw / "piece9.mid", motif_notes(9))  # a new piece: the new tokens.jsonl differs

    def limit() -> None:  # a real write failure from the kernel (EFBIG), no privilege needed
        resource.setrlimit(resource.RLIMIT_FSIZE, (512, resource.getrlimit(resource.RLIMIT_FSIZE)[1]))

    done = run(tokenize_args(raw, out), tmp_path, os.environ, check=False, preexec_fn=limit)
    assert_one_line_error(done, f"error: cannot write {out / 'tokens.jsonl'}: File too large; the previous file is kept")
    assert tree(out) == before


@pytest.fixture
def small_disk(tmp_path: Path):
    """A 1 MiB tmpfs (needs root and CAP_SYS_ADMIN: skipped elsewhere, where the tests above stand in for it)."""
    disk = tmp_path / "disk"
    disk.mkdir()
    try:
        mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(disk)], capture_output=True,
                                 text=True, check=False)
    except OSError as e:
        pytest.skip(f"cannot mount a tmpfs here: {e}")
    if mounted.returncode:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.strip()}")
    try:
        yield disk
    finally:
        subprocess.run(["umount", "-l", str(disk)], check=False)


def test_tokenize_on_a_full_disk_is_a_one_line_error_and_keeps_its_output(tmp_path: Path, raw: Path, small_disk: Path) -> None:
    out = small_disk / "tokens"
    run(tokenize_args(raw, out), tmp_path, os.environ)
    before = tree(out)
    size = (out / "tokens.jsonl").stat().st_size
    stats = os.statvfs(small_disk)
    filler = stats.f_bavail * stats.f_frsize - size // 2  # room for half a new tokens.jsonl
    assert filler > 0
    with open(small_disk / "filler", "wb") as f:
        f.write(b"\0" * filler)
    done = run(tokenize_args(raw, out), tmp_path, os.environ, check=False)
    assert_one_line_error(done, f"error: cannot write {out / 'tokens.jsonl'}: No space left on device; "
                                "the previous file is kept")
    assert tree(out) == before
