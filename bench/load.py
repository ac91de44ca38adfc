"""Load test of the job API: 20 concurrent submitters and 100 pollers against a loopback server.

    .venv/bin/python bench/load.py                 # starts `localvideo serve` on a free loopback port, temp home
    .venv/bin/python bench/load.py --url http://127.0.0.1:8765   # an already running loopback server

Bounded: each submitter queues ``--jobs`` tiny jobs (real tiny-wan generations, 1 step), pollers poll one job or a
page every ``--interval`` seconds until every job has ended, and the whole run stops after ``--max-seconds``. Only
loopback addresses are accepted. Each submitter and poller is its own keep-alive HTTP/1.1 connection, spoken by a
minimal asyncio client: httpx's async pool, shared by 120 tasks, costs more CPU than the server does on a 2-core
machine (measured: ~70 requests/s through it against ~700/s for the same server with plain connections). Prints latencies (p50/p95/max), throughput and the error count; exits 1 on any
error (a non-2xx answer, a transport error, or a job that did not succeed).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from urllib.parse import urlsplit

import httpx

ROOT = Path(__file__).resolve().parents[1]
JOB = {"model": "tiny-wan", "steps": 1, "width": 64, "height": 64, "num_frames": 5}


def _loopback(url: str) -> bool:
    import ipaddress

    host = urlsplit(url).hostname or ""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _start_server() -> tuple[subprocess.Popen, str, Path]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    home = Path(tempfile.mkdtemp(prefix="localvideo-load-"))
    env = {**os.environ, "LOCALVIDEO_HOME": str(home), "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    env.pop("LOCALVIDEO_API_TOKEN", None)
    proc = subprocess.Popen([sys.executable, "-m", "localvideo.cli", "serve", "--port", str(port), "--log-level",
                             "warning"], cwd=ROOT, env=env, stdout=open(home / "server.log", "wb"),
                            stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            if httpx.get(url + "/v1/health", timeout=1).status_code == 200:
                return proc, url, home
        except httpx.TransportError:
            time.sleep(0.1)
    proc.kill()
    raise SystemExit(f"the server did not start; see {home / 'server.log'}")


class Conn:
    """One keep-alive HTTP/1.1 connection (Content-Length bodies only: every answer the pollers get has one)."""

    def __init__(self, host: str, port: int) -> None:
        self.host, self.port = host, port
        self.r: asyncio.StreamReader | None = None
        self.w: asyncio.StreamWriter | None = None

    async def request(self, method: str, path: str, body: bytes | None = None) -> tuple[int, bytes]:
        if self.w is None:
            self.r, self.w = await asyncio.open_connection(self.host, self.port)
        head = f"{method} {path} HTTP/1.1\r\nHost: {self.host}:{self.port}\r\n"
        if body is not None:
            head += f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n"
        self.w.write(head.encode() + b"\r\n" + (body or b""))
        await self.w.drain()
        status = await self.r.readline()
        if not status:
            self.close()
            raise ConnectionError("the server closed the connection")
        length, close = 0, False
        while True:
            line = await self.r.readline()
            if line in (b"\r\n", b"\n", b""):
                break
            key, _, value = line.decode("latin-1").partition(":")
            key, value = key.strip().lower(), value.strip().lower()
            if key == "content-length":
                length = int(value)
            elif key == "transfer-encoding":
                raise ConnectionError(f"unexpected transfer-encoding {value}")
            elif key == "connection" and value == "close":
                close = True
        data = await self.r.readexactly(length)
        if close:
            self.close()
        return int(status.split()[1]), data

    def close(self) -> None:
        if self.w is not None:
            self.w.close()
        self.r = self.w = None


def _pct(xs: list[float], p: float) -> float:
    if not xs:
        return 0.0
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(round(p / 100 * (len(xs) - 1))))]


async def run(url: str, submitters: int, pollers: int, jobs_each: int, interval: float, max_seconds: float) -> dict:
    limits = httpx.Limits(max_connections=submitters + pollers + 10, max_keepalive_connections=submitters + pollers)
    errors: list[str] = []
    submit_lat: list[float] = []
    poll_lat: list[float] = []
    ids: list[str] = []
    done = asyncio.Event()
    deadline = time.monotonic() + max_seconds

    async with httpx.AsyncClient(base_url=url, timeout=30, limits=limits) as http:
        # warm up: the first job loads torch and builds the tiny model; not part of the figures
        warm = (await http.post("/v1/jobs", json={"prompt": "warm-up", **JOB})).json()
        while (await http.get(f"/v1/jobs/{warm['id']}")).json()["state"] in ("queued", "running"):
            await asyncio.sleep(0.2)
            if time.monotonic() > deadline:
                raise SystemExit("warm-up did not finish")
        t0 = time.monotonic()

        host, port = urlsplit(url).hostname or "127.0.0.1", urlsplit(url).port or 80

        async def submitter(n: int) -> None:
            conn = Conn(host, port)
            for i in range(jobs_each):
                body = json.dumps({"prompt": f"load {n}/{i}", **JOB}).encode()
                start = time.perf_counter()
                try:
                    status, data = await asyncio.wait_for(conn.request("POST", "/v1/jobs", body), 60)
                except (OSError, asyncio.TimeoutError, ValueError, asyncio.IncompleteReadError) as e:
                    errors.append(f"submit: {type(e).__name__}: {e}")
                    conn.close()
                    continue
                submit_lat.append(time.perf_counter() - start)
                if status != 202:
                    errors.append(f"submit: HTTP {status} {data[:200]!r}")
                else:
                    ids.append(json.loads(data)["id"])
            conn.close()

        async def poller(n: int) -> None:
            rnd = random.Random(n)
            conn = Conn(host, port)
            while not done.is_set() and time.monotonic() < deadline:
                path = (f"/v1/jobs/{rnd.choice(ids)}" if ids and rnd.random() < 0.7
                        else f"/v1/jobs?limit=20&offset={rnd.randrange(0, 40)}")
                start = time.perf_counter()
                try:
                    status, data = await asyncio.wait_for(conn.request("GET", path), 60)
                    poll_lat.append(time.perf_counter() - start)
                    if status != 200:
                        errors.append(f"poll {path}: HTTP {status} {data[:200]!r}")
                except (OSError, asyncio.TimeoutError, ValueError, asyncio.IncompleteReadError) as e:
                    errors.append(f"poll {path}: {type(e).__name__}: {e}")
                    conn.close()
                await asyncio.sleep(interval)
            conn.close()

        async def watcher() -> None:
            while time.monotonic() < deadline:
                r = await http.get("/v1/jobs", params=[("state", "queued"), ("state", "running"), ("limit", 1)])
                if r.status_code == 200 and r.json()["total"] == 0 and len(ids) + len(errors) >= submitters * jobs_each:
                    break
                await asyncio.sleep(0.25)
            done.set()

        poll_tasks = [asyncio.create_task(poller(i)) for i in range(pollers)]
        watch = asyncio.create_task(watcher())
        await asyncio.gather(*(submitter(i) for i in range(submitters)))
        submitted_s = time.monotonic() - t0
        await watch
        await asyncio.gather(*poll_tasks)
        elapsed = time.monotonic() - t0
        states: dict[str, int] = {}
        for jid in ids:
            s = (await http.get(f"/v1/jobs/{jid}")).json()["state"]
            states[s] = states.get(s, 0) + 1
        if states.get("succeeded", 0) != len(ids):
            errors.append(f"not every job succeeded: {states}")
        if time.monotonic() >= deadline:
            errors.append(f"stopped by the {max_seconds} s bound")

    ms = lambda xs, p: round(_pct(xs, p) * 1000, 1)  # noqa: E731
    return {
        "cpus": os.cpu_count(), "load_avg_1min_at_end": round(os.getloadavg()[0], 2),
        "submitters": submitters, "pollers": pollers, "jobs": len(ids), "job_states": states,
        "errors": len(errors), "first_errors": errors[:5],
        "submit_phase_s": round(submitted_s, 2), "elapsed_s": round(elapsed, 2),
        "jobs_per_s": round(len(ids) / elapsed, 2) if elapsed else 0.0,
        "submit_ms": {"p50": ms(submit_lat, 50), "p95": ms(submit_lat, 95), "max": ms(submit_lat, 100)},
        "polls": len(poll_lat), "polls_per_s": round(len(poll_lat) / elapsed, 1) if elapsed else 0.0,
        "poll_ms": {"p50": ms(poll_lat, 50), "p95": ms(poll_lat, 95), "max": ms(poll_lat, 100),
                    "mean": round(statistics.fmean(poll_lat) * 1000, 1) if poll_lat else 0.0},
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--url", help="a running loopback server (default: start one)")
    ap.add_argument("--submitters", type=int, default=20)
    ap.add_argument("--pollers", type=int, default=100)
    ap.add_argument("--jobs", type=int, default=2, help="jobs per submitter")
    ap.add_argument("--interval", type=float, default=0.1, help="seconds between one poller's requests")
    ap.add_argument("--max-seconds", type=float, default=300)
    args = ap.parse_args()
    if not (1 <= args.submitters <= 100 and 1 <= args.pollers <= 500 and 1 <= args.jobs <= 20
            and 0.01 <= args.interval and args.max_seconds <= 900):
        raise SystemExit("out of bounds: submitters ≤ 100, pollers ≤ 500, jobs ≤ 20, interval ≥ 0.01, ≤ 900 s")
    proc = None
    url = args.url
    if url is None:
        proc, url, home = _start_server()
        print(f"server {url} (home {home})", file=sys.stderr)
    elif not _loopback(url):
        raise SystemExit("refusing: the load test only targets loopback addresses")
    try:
        result = asyncio.run(run(url, args.submitters, args.pollers, args.jobs, args.interval, args.max_seconds))
    finally:
        if proc is not None:
            proc.terminate()
            try:
                proc.wait(20)
            except subprocess.TimeoutExpired:
                proc.kill()
    print(json.dumps(result, indent=2))
    print(f"{result['submitters']} submitters, {result['pollers']} pollers: {result['jobs']} jobs in "
          f"{result['elapsed_s']} s ({result['jobs_per_s']}/s), {result['polls']} polls "
          f"({result['polls_per_s']}/s, p50 {result['poll_ms']['p50']} ms, p95 {result['poll_ms']['p95']} ms), "
          f"submit p95 {result['submit_ms']['p95']} ms, errors {result['errors']}", file=sys.stderr)
    sys.exit(1 if result["errors"] else 0)


if __name__ == "__main__":
    main()
