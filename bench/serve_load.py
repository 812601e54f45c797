"""Benchmark: `pianola serve` under load. Concurrent clients, each asking for one piece at a time, for a fixed time.

It starts `pianola serve` on 127.0.0.1 (a free port, a temporary store) with the model given, waits for it to be
healthy, warms it up, then runs CLIENTS clients for SECONDS seconds. Each client loops: POST /v1/generate with
{"length": LENGTH, "seed": <its own>}, wait for the answer, ask again. It measures, over the requests that
completed inside the window:
- latency p50/p95/p99 and the largest (seconds, client side, the whole HTTP round trip);
- pieces per second and tokens per second;
- errors (any answer but 200, and transport failures);
- the server's resident memory (VmRSS) after warm-up, at the end, and its peak over the run, sampled each second.
WAV rendering is measured apart, after the load: RENDER pieces' .wav fetched one at a time (FluidSynth on first
request), with their seconds.

    .venv/bin/python bench/serve_load.py [--model models:/pianola@champion] [--clients 32] [--seconds 60]
                                          [--length 500] [--render 5] [--out bench/results/serve_load.json]

Run it from the project root after `make run` (which registers the champion). It stops by itself.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[0] = str(ROOT)  # the project, not bench/: bench/tokenize.py would shadow the standard library

import asyncio  # noqa: E402
import os  # noqa: E402
import platform  # noqa: E402
import signal  # noqa: E402
import socket  # noqa: E402
import subprocess  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402

import httpx  # noqa: E402
import numpy as np  # noqa: E402

from pianola.io import atomic_write_json  # noqa: E402

START_S = 180


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def rss_mib(pid: int) -> float:
    """Resident memory of process `pid` and its children, in MiB (from /proc)."""
    total = 0
    pids = [pid] + [int(p) for p in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    for p in pids:
        for line in Path(f"/proc/{p}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                total += int(line.split()[1])
    return total / 1024


def start_server(model: str, store: Path, port: int, log: Path) -> subprocess.Popen:
    command = [str(Path(sys.executable).parent / "pianola"), "serve", "--model", model, "--host", "127.0.0.1",
               "--port", str(port), "--store", str(store)]
    with open(log, "w") as out:
        server = subprocess.Popen(command, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    deadline = time.monotonic() + START_S
    while True:
        if server.poll() is not None:
            raise SystemExit(f"pianola serve exited:\n{log.read_text()[-3000:]}")
        if time.monotonic() > deadline:
            raise SystemExit(f"pianola serve not healthy after {START_S} s:\n{log.read_text()[-3000:]}")
        try:
            if httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=2).status_code == 200:
                return server
        except httpx.TransportError:
            pass
        time.sleep(0.5)


async def load(url: str, clients: int, seconds: float, length: int, pid: int) -> dict:
    """Run the clients; every request's (start, latency, ok, pieces, tokens) and the memory samples."""
    results: list[tuple[float, float, bool, str]] = []
    memory: list[float] = []
    stop_at = time.monotonic() + seconds
    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)

    async with httpx.AsyncClient(base_url=url, timeout=120, limits=limits) as client:
        async def one_client(index: int) -> None:
            seed = index * 1_000_003
            while time.monotonic() < stop_at:
                seed += 1
                started = time.monotonic()
                try:
                    answer = await client.post("/v1/generate", json={"length": length, "seed": seed})
                    ok = answer.status_code == 200 and len(answer.json()["pieces"][0]["tokens"]) == length
                    detail = "" if ok else f"{answer.status_code}: {answer.text[:200]}"
                except httpx.HTTPError as e:
                    ok, detail = False, f"{type(e).__name__}: {e}"
                finished = time.monotonic()
                if finished <= stop_at:  # only requests that completed inside the window count
                    results.append((started, finished - started, ok, detail))

        async def sample_memory() -> None:
            while time.monotonic() < stop_at:
                memory.append(rss_mib(pid))
                await asyncio.sleep(1.0)

        await asyncio.gather(sample_memory(), *(one_client(i) for i in range(clients)))
    return {"results": results, "memory": memory}


def render_apart(url: str, ids: list[str]) -> list[float]:
    """Seconds to fetch each piece's WAV, one at a time (rendered by FluidSynth on first request)."""
    times = []
    for piece in ids:
        started = time.perf_counter()
        answer = httpx.get(f"{url}/v1/pieces/{piece}.wav", timeout=120)
        answer.raise_for_status()
        times.append(time.perf_counter() - started)
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="models:/pianola@champion")
    parser.add_argument("--clients", type=int, default=32)
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--length", type=int, default=500)
    parser.add_argument("--render", type=int, default=5, help="pieces whose WAV rendering is timed after the load")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "serve_load.json")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="pianola-load-") as tmp:
        port, log = free_port(), Path(tmp) / "serve.log"
        url = f"http://127.0.0.1:{port}"
        server = start_server(args.model, Path(tmp) / "served", port, log)
        try:
            model = httpx.get(f"{url}/v1/model", timeout=10).json()
            for seed in range(3):  # warm-up: first steps, first decode, first MIDI write
                httpx.post(f"{url}/v1/generate", json={"length": args.length, "seed": seed}, timeout=120).raise_for_status()
            rss_before = rss_mib(server.pid)
            run = asyncio.run(load(url, args.clients, args.seconds, args.length, server.pid))
            rss_after = rss_mib(server.pid)
            latest = [p["id"] for p in httpx.get(f"{url}/v1/pieces?limit={args.render}", timeout=10).json()["pieces"]]
            render = render_apart(url, latest[: args.render])
        finally:
            server.send_signal(signal.SIGINT)
            try:
                server.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(server.pid, signal.SIGKILL)

    results = run["results"]
    latencies = np.array([r[1] for r in results if r[2]])
    errors = [r[3] for r in results if not r[2]]
    report = {
        "model": {"version": model["version"], "name": model["model"], "tokenizer": model["tokenizer"]["name"],
                  "window": model["window"], "vocab_size": model["vocab_size"]},
        "clients": args.clients, "seconds": args.seconds, "length": args.length,
        "requests": len(results), "errors": len(errors), "error_examples": sorted(set(errors))[:5],
        "pieces_per_s": round(len(latencies) / args.seconds, 2),
        "tokens_per_s": round(len(latencies) * args.length / args.seconds, 1),
        "latency_s": {name: round(float(np.percentile(latencies, q)), 3) for name, q in
                      (("p50", 50), ("p95", 95), ("p99", 99), ("max", 100))} if len(latencies) else {},
        "rss_mib": {"after_warmup": round(rss_before, 1),
                    "halfway": round(run["memory"][len(run["memory"]) // 2], 1) if run["memory"] else None,
                    "end": round(rss_after, 1),
                    "peak": round(max(run["memory"], default=rss_after), 1)},
        "wav_render_s": [round(t, 2) for t in render],
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version()},
        "command": " ".join(["bench/serve_load.py", *sys.argv[1:]]),
    }
    atomic_write_json(args.out, report)
    lat = report["latency_s"]
    print(f"{args.clients} clients x {args.seconds:g} s, {args.length}-token pieces, model {model['model']} "
          f"v{model['version']} ({model['tokenizer']['name']}):")
    print(f"  {report['requests']} requests, {report['errors']} errors; {report['pieces_per_s']} pieces/s "
          f"({report['tokens_per_s']} tokens/s)")
    if lat:
        print(f"  latency p50 {lat['p50']} s, p95 {lat['p95']} s, p99 {lat['p99']} s, max {lat['max']} s")
    rss = report["rss_mib"]
    print(f"  server RSS {rss['after_warmup']} MiB after warm-up, {rss['halfway']} MiB halfway, {rss['end']} MiB at the "
          f"end (peak {rss['peak']} MiB)")
    print(f"  WAV rendering apart: {report['wav_render_s']} s per piece")
    print(f"  written to {args.out}")


if __name__ == "__main__":
    main()
