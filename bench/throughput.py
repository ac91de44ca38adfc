"""Jobs per second through the job service: the local executor against the ray executor, on this machine.

    python bench/throughput.py [--jobs 8 --model tiny-wan --steps 4 --frames 17 --size 128 --actors 2] [--json]

N tiny jobs (real diffusers pipelines with random weights, real MP4s) are submitted at once to a JobService and timed
until the last one is terminal. Executors measured in one run, each warmed first (one job per slot, so every slot has
the model loaded and the timing is the steady state):

* ``local x1``  — today's default on a CPU-only machine: one in-process worker;
* ``ray xA``    — A Ray CPU actors (``num_cpus=1`` each) on a local Ray instance started here, one warm cache each;
* ``local x1`` again, and once more with torch on one thread (as Ray gives each ``num_cpus=1`` actor), to show how
  much of a gap is a busy machine or thread contention rather than the executor.

(Not measured: A in-process workers on one device. They share one cached pipeline object, and two threads denoising
with one pipeline corrupt its scheduler state — seen here as UniPC ``stack expects a non-empty TensorList``. One
process per slot, as the ray executor does, avoids that.)

Ratios are against ``local x1``. Ray's own start-up (~5-10 s) is reported separately, not in the rate. Nothing here
is a timed assertion; on a 2-core machine the ray actors and the in-process threads compete for the same two cores.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def _drain(svc, ids, timeout: float = 1800.0) -> None:
    deadline = time.monotonic() + timeout
    pending = set(ids)
    while pending:
        if time.monotonic() > deadline:
            raise TimeoutError(f"{len(pending)} job(s) unfinished")
        for job_id in list(pending):
            job = svc.get(job_id)
            if job.terminal:
                if job.state != "succeeded":
                    raise RuntimeError(f"job {job_id} {job.state}: {job.error}")
                pending.discard(job_id)
        time.sleep(0.02)


def _measure(svc, slots: int, n: int, req: dict) -> dict:
    deadline = time.monotonic() + 300
    while len(svc.system()["workers"]) < slots:
        if time.monotonic() > deadline or svc.executor_error:
            raise RuntimeError(f"executor did not start: {svc.executor_error}")
        time.sleep(0.05)
    _drain(svc, [svc.submit(**req, seed=10_000 + i).id for i in range(slots)])  # warm every slot
    t = time.perf_counter()
    ids = [svc.submit(**req, seed=i).id for i in range(n)]
    _drain(svc, ids)
    wall = time.perf_counter() - t
    return {"jobs": n, "wall_s": round(wall, 3), "jobs_per_s": round(n / wall, 3)}


def run(jobs: int = 8, model: str = "tiny-wan", steps: int = 4, frames: int = 17, size: int = 128,
        actors: int = 2) -> dict:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    jobs = max(1, min(int(jobs), 64))  # bounded
    with tempfile.TemporaryDirectory(prefix="localvideo-bench-") as home:
        os.environ["LOCALVIDEO_HOME"] = home
        import ray

        from localvideo.hardware import Hardware
        from localvideo.jobs import JobService
        from localvideo.jobs.ray_executor import RayExecutor
        from localvideo.settings import Settings

        hw = Hardware.assumed(None, ram_gb=16)
        req = {"prompt": "a lighthouse in a storm", "model": model, "steps": steps, "num_frames": frames,
               "width": size, "height": size}
        out: dict = {"config": {"jobs": jobs, "model": model, "steps": steps, "frames": frames, "size": size,
                                "actors": actors, "cpus": os.cpu_count()}, "results": {}}

        def settings(name: str) -> Settings:
            return Settings(home=Path(home), jobs_db_path=Path(home) / f"{name}.db",
                            outputs_dir=Path(home) / f"out-{name}")

        import torch

        out["config"]["torch_threads_local"] = torch.get_num_threads()
        t = time.perf_counter()
        ray.init(num_cpus=actors, include_dashboard=False, log_to_driver=False)
        out["ray_init_s"] = round(time.perf_counter() - t, 2)
        try:
            # local, ray, local again: a busy machine shows up as a gap between the two local runs
            # then local with torch on one thread, as in each actor: how much of the gap is thread contention
            threads = torch.get_num_threads()
            for name in ("local x1", f"ray x{actors}", "local x1 (again)", "local x1, 1 torch thread"):
                if name.startswith("local"):
                    torch.set_num_threads(1 if "1 torch thread" in name else threads)
                    svc = JobService(settings(f"local{len(out['results'])}"), hardware=hw, workers=1).start()
                    try:
                        out["results"][name] = _measure(svc, 1, jobs, req)
                    finally:
                        svc.close()
                        torch.set_num_threads(threads)
                    continue
                ex = RayExecutor(actors=actors, actor_settings={"home": home}, hardware=hw)
                t = time.perf_counter()
                svc = JobService(settings("ray"), hardware=hw, executor=ex).start()
                try:
                    res = _measure(svc, actors, jobs, req)
                    res["actors_start_and_warm_s"] = round(time.perf_counter() - t - res["wall_s"], 2)
                    out["results"][name] = res
                    out["actor_stats"] = ex.actor_stats()
                finally:
                    svc.close()
        finally:
            ray.shutdown()
    base = out["results"]["local x1"]["jobs_per_s"]
    for r in out["results"].values():
        r["ratio_vs_local_x1"] = round(r["jobs_per_s"] / base, 2)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--jobs", type=int, default=8)
    ap.add_argument("--model", default="tiny-wan")
    ap.add_argument("--steps", type=int, default=4)
    ap.add_argument("--frames", type=int, default=17)
    ap.add_argument("--size", type=int, default=128)
    ap.add_argument("--actors", type=int, default=2)
    ap.add_argument("--json", action="store_true")
    a = ap.parse_args()
    out = run(a.jobs, a.model, a.steps, a.frames, a.size, a.actors)
    if a.json:
        print(json.dumps(out, indent=2))
        return
    c = out["config"]
    print(f"{c['jobs']} jobs of {c['model']} {c['size']}x{c['size']}, {c['frames']} frames, {c['steps']} steps "
          f"on {c['cpus']} CPU(s); Ray start {out['ray_init_s']} s (not in the rates); torch threads: local "
          f"{c['torch_threads_local']}, actors {[s['torch_threads'] for s in out['actor_stats']]}")
    for name, r in out["results"].items():
        print(f"  {name:24s} {r['jobs_per_s']:6.3f} jobs/s  ({r['wall_s']:.2f} s)  x{r['ratio_vs_local_x1']:.2f}")
    print("  actors:", ", ".join(f"{s['label']}: {s['jobs_run']} jobs, {s['loads']} load(s)"
                                 for s in out["actor_stats"]))
    print("  load average (1 min) at the end:", round(os.getloadavg()[0], 2))


if __name__ == "__main__":
    main()
