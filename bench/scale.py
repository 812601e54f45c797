"""Benchmark: how the corpus stages' cost grows with the corpus, in one process and on a local Dask cluster.

For each size N, bench/make_corpus.py writes N distinct MIDI files (kept in --work for the next run), then:
- one process: `pianola ingest`, `pianola tokenize` and `pianola sequences`, each a fresh process;
- Dask: `python -m flows.corpus --workers W` (ingest and tokenize as Prefect tasks on a local cluster of W
  worker processes, a temporary Prefect server included), then the same `pianola sequences`; its outputs are
  checked equal, byte for byte, to the single process's;
- DVC: a git + DVC project of this code whose ingest source is the corpus: `dvc repro sequences` (the three
  stages, hashing and caching their outputs), a second `dvc repro` (nothing to do: the cost of checking), and
  `dvc push` to a local remote.
Each command's wall time and peak RSS (the largest resident set of the process and of any process it started,
from wait4) are recorded, and the peak of each kind of process under it (the command, the Prefect server, the Dask
workers: sampled from /proc every 0.2 s), which says which one is the largest. Stage processes run one at a time on
this machine's cores.

    .venv/bin/python bench/scale.py [--sizes 1000,5000,20000] [--workers 2] [--tokenizer timed] [--work DIR]
"""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[0] = str(ROOT)
sys.path.insert(1, str(ROOT / "tests"))  # conftest.tiny_dvc_repo: the git + DVC project the tests also build

import argparse  # noqa: E402
import filecmp  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402
import shutil  # noqa: E402
import subprocess  # noqa: E402
import tempfile  # noqa: E402
import threading  # noqa: E402
import time  # noqa: E402

import yaml  # noqa: E402

from bench.make_corpus import make_corpus  # noqa: E402
from conftest import tiny_dvc_repo  # noqa: E402
from pianola.io import atomic_write_json  # noqa: E402

BIN = Path(sys.executable).parent
COMPARED = ("raw/manifest.json", "tokens/tokens.jsonl", "tokens/stats.json", "tokens/vocab.json",
            "sequences/meta.json", "sequences/train.npz", "sequences/valid.npz")


def process_role(pid: int, root: int, root_role: str) -> str:
    """What a process under a measured command is, from its command line: the command itself (`root_role`), the
    temporary Prefect server, a Dask worker (a spawned multiprocessing child), or the name of whatever else it ran."""
    if pid == root:
        return root_role
    try:
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace").split("\0")
    except OSError:
        return "gone"
    line = " ".join(argv)
    if "uvicorn" in line and "prefect.server" in line:
        return "Prefect server"
    if "multiprocessing.spawn" in line:
        return "Dask worker"
    if "multiprocessing.resource_tracker" in line:
        return "resource tracker"
    return Path(argv[0]).name + (" " + argv[2] if argv[1:2] == ["-m"] and len(argv) > 2 else "")


class PeakSampler(threading.Thread):
    """The peak RSS (VmHWM) of each process under `root`, by role, read from /proc every `every` seconds.

    wait4 gives the largest peak of them all, exactly; this says which process it was. A process's VmHWM only
    grows, so the last reading before it ends misses at most what it grew in its last `every` seconds."""

    def __init__(self, root: int, root_role: str, every: float = 0.2):
        super().__init__(daemon=True)
        self.root, self.root_role, self.every, self.stopped = root, root_role, every, threading.Event()
        self.peaks: dict[str, float] = {}  # role -> MiB
        self.roles: dict[int, str] = {}

    def descendants(self) -> list[int]:
        children: dict[int, list[int]] = {}
        for entry in os.scandir("/proc"):
            if entry.name.isdigit():
                try:
                    # the fields after the command name, which may hold spaces and parentheses
                    ppid = int(Path(entry.path, "stat").read_text().rpartition(")")[2].split()[1])
                except (OSError, ValueError, IndexError):
                    continue
                children.setdefault(ppid, []).append(int(entry.name))
        found, todo = [], [self.root]
        while todo:
            pid = todo.pop()
            found.append(pid)
            todo.extend(children.get(pid, ()))
        return found

    def sample(self) -> None:
        for pid in self.descendants():
            try:
                status = Path(f"/proc/{pid}/status").read_text()
            except OSError:
                continue
            hwm = next((line.split()[1] for line in status.splitlines() if line.startswith("VmHWM:")), None)
            if hwm is None:  # a zombie
                continue
            role = self.roles.setdefault(pid, process_role(pid, self.root, self.root_role))
            self.peaks[role] = max(self.peaks.get(role, 0.0), int(hwm) / 1024)

    def run(self) -> None:
        while not self.stopped.wait(self.every):
            self.sample()


def measure(command: list[str], cwd: Path, env: dict | None = None, role: str = "command") -> dict:
    """Run `command`; its wall seconds, peak RSS in MiB (the largest of it and the processes it waited for, from
    wait4), the peak of each kind of process under it (sampled: PeakSampler; the command itself is `role`), and its
    stdout."""
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        started = time.perf_counter()
        process = subprocess.Popen(command, cwd=cwd, env=env, stdout=out, stderr=err, text=True)
        sampler = PeakSampler(process.pid, role)
        sampler.start()
        _, status, usage = os.wait4(process.pid, 0)  # reaped here, with its rusage, not by Popen
        sampler.stopped.set()
        sampler.join()
        process.returncode = os.waitstatus_to_exitcode(status)
        seconds = time.perf_counter() - started
        out.seek(0), err.seek(0)
        stdout, stderr = out.read(), err.read()
    if process.returncode:
        raise SystemExit(f"{' '.join(command)} failed (exit {process.returncode}):\n{stderr[-3000:]}")
    by_process = {role: round(mib, 1) for role, mib in sorted(sampler.peaks.items(), key=lambda kv: -kv[1])}
    return {"seconds": round(seconds, 2), "peak_rss_mib": round(usage.ru_maxrss / 1024, 1),
            "peak_rss_mib_by_process": by_process, "stdout": stdout}


def pianola(*args: str) -> list[str]:
    return [str(BIN / "pianola"), *args]


def one_process(corpus: Path, out: Path, tokenizer: str) -> dict:
    steps = {
        "ingest": pianola("ingest", "--source", str(corpus), "--out", str(out / "raw")),
        "tokenize": pianola("tokenize", "--tokenizer", tokenizer, "--in", str(out / "raw"), "--out", str(out / "tokens")),
        "sequences": pianola("sequences", "--in", str(out / "tokens"), "--out", str(out / "sequences")),
    }
    return {name: measure(command, ROOT) for name, command in steps.items()}


def on_dask(corpus: Path, out: Path, tokenizer: str, workers: int) -> dict:
    """The corpus flow on a local cluster, from a folder whose params.yaml names the tokenizer."""
    out.mkdir(parents=True, exist_ok=True)
    (out / "params.yaml").write_text(yaml.safe_dump({"tokenize": {"tokenizer": tokenizer}}))
    env = os.environ | {"PYTHONPATH": str(ROOT), "PREFECT_HOME": str(out / "prefect")}
    flow = measure([sys.executable, "-m", "flows.corpus", "--source", str(corpus), "--raw", str(out / "raw"),
                    "--tokens", str(out / "tokens"), "--workers", str(workers)], out, env, role="flow")
    result = json.loads(flow["stdout"])
    flow.update(ingest_seconds=result["ingest_seconds"], tokenize_seconds=result["tokenize_seconds"])
    sequences = measure(pianola("sequences", "--in", str(out / "tokens"), "--out", str(out / "sequences")), ROOT)
    return {"flow": flow, "sequences": sequences}


def with_dvc(corpus: Path, out: Path, tokenizer: str) -> dict:
    """dvc repro of ingest -> tokenize -> sequences, a second repro, and dvc push, in a new git + DVC project."""
    repo, remote = out / "repo", out / "remote"
    repo.mkdir(parents=True)
    env = os.environ | {"PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}"}
    tiny_dvc_repo(repo, corpus, remote, env)
    params = yaml.safe_load((repo / "params.yaml").read_text())
    defaults = yaml.safe_load((ROOT / "params.yaml").read_text())
    params["tokenize"]["tokenizer"] = tokenizer
    params["sequences"] = defaults["sequences"]  # the real windows, not the tests' short ones
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    dvc = [sys.executable, "-m", "dvc"]
    return {
        "repro": measure([*dvc, "repro", "sequences"], repo, env),
        "repro_again": measure([*dvc, "repro", "sequences"], repo, env),
        "push": measure([*dvc, "push"], repo, env),
        "cache_files": sum(len(files) for _, _, files in os.walk(repo / ".dvc" / "cache")),
    }


def same_outputs(a: Path, b: Path) -> bool:
    return all(filecmp.cmp(a / name, b / name, shallow=False) for name in COMPARED)


def row(n: int, r: dict) -> str:
    one, dask, dvc = r["one_process"], r["dask"], r["dvc"]
    one_total = sum(one[s]["seconds"] for s in ("ingest", "tokenize", "sequences"))
    one_rss = max(one[s]["peak_rss_mib"] for s in ("ingest", "tokenize", "sequences"))
    dask_total = dask["flow"]["seconds"] + dask["sequences"]["seconds"]
    dask_rss = max(dask["flow"]["peak_rss_mib"], dask["sequences"]["peak_rss_mib"])
    by_process = dask["flow"]["peak_rss_mib_by_process"]  # largest first
    largest = next(iter(by_process), "?") if dask["flow"]["peak_rss_mib"] >= dask["sequences"]["peak_rss_mib"] else "sequences"
    processes = " / ".join(f"{by_process.get(role, float('nan')):.0f}" for role in ("flow", "Prefect server", "Dask worker"))
    return (f"| {n:,} | {one['ingest']['seconds']:.1f} / {one['tokenize']['seconds']:.1f} / {one['sequences']['seconds']:.1f} | "
            f"{one_total:.1f} | {one_rss:.0f} | {dask['flow']['ingest_seconds']:.1f} / {dask['flow']['tokenize_seconds']:.1f} | "
            f"{dask_total:.1f} | {dask_rss:.0f} ({largest}) | {processes} | {'yes' if r['identical'] else '**no**'} | "
            f"{dvc['repro']['seconds']:.1f} | {dvc['repro_again']['seconds']:.1f} | {dvc['push']['seconds']:.1f} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="1000,5000,20000", help="corpus sizes, in files")
    parser.add_argument("--workers", type=int, default=2, help="Dask worker processes")
    parser.add_argument("--tokenizer", default="timed")
    parser.add_argument("--work", type=Path, default=Path("/tmp/pianola-scale"), help="corpora and outputs")
    parser.add_argument("--no-dvc", action="store_true", help="skip the DVC measures")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "scale.json")
    args = parser.parse_args()

    results = {}
    for n in [int(s) for s in args.sizes.split(",")]:
        corpus = args.work / f"corpus-{n}"
        if len(list(corpus.glob("*.mid"))) != n:
            made = make_corpus(n, corpus, workers=os.cpu_count() or 1)
            print(f"made {n:,} files in {made['seconds']} s", file=sys.stderr)
        runs = args.work / f"runs-{n}"
        shutil.rmtree(runs, ignore_errors=True)
        r = {"one_process": one_process(corpus, runs / "one", args.tokenizer),
             "dask": on_dask(corpus, runs / "dask", args.tokenizer, args.workers)}
        r["identical"] = same_outputs(runs / "one", runs / "dask")
        r["dvc"] = {} if args.no_dvc else with_dvc(corpus, runs / "dvc", args.tokenizer)
        for part in (r["one_process"], r["dask"], r["dvc"]):
            for step in part.values():
                if isinstance(step, dict):
                    step.pop("stdout", None)
        results[n] = r
        print(json.dumps({n: r}), file=sys.stderr)
        shutil.rmtree(runs, ignore_errors=True)
    atomic_write_json(args.out, {"tokenizer": args.tokenizer, "workers": args.workers, "cpus": os.cpu_count(),
                                 "sizes": results})
    print("| files | one process: ingest / tokenize / sequences s | total s | peak RSS MiB | Dask: ingest / tokenize s "
          "| Dask total s (flow + sequences) | peak RSS MiB (largest process) | flow / Prefect server / Dask worker MiB "
          "| same bytes | dvc repro s | repro again s | dvc push s |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    for n, r in results.items():
        print(row(n, r) if r["dvc"] else row(n, r | {"dvc": {k: {"seconds": float("nan")} for k in ("repro", "repro_again", "push")}}))


if __name__ == "__main__":
    main()
