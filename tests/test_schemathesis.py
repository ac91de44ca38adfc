"""schemathesis over the whole OpenAPI of the live server: no 5xx, and every answer conforms to the schema.

Two passes: the schemathesis CLI with every phase (examples, coverage, fuzzing, stateful) and every check, then a
hypothesis pass over the operations on one job with the ids of real finished jobs substituted for half of the
cases, so their handlers run past the 404 too. ``positive_data_acceptance`` is left out on purpose: the server
rightly refuses some schema-valid bodies (an unknown model id, a size that does not fit this machine, bytes that are
not an image), which JSON Schema cannot express.
"""

from __future__ import annotations

import subprocess
import sys

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings

from _live import shared_server, wait_state


@pytest.fixture()
def live():
    """The shared server with two finished jobs (made per test: the stateful phase finds and deletes jobs)."""
    server = shared_server()
    with httpx.Client(base_url=server.url, timeout=60) as api:
        ids = []
        for i in range(2):
            job = api.post("/v1/jobs", json={"prompt": f"fuzz target {i}", "model": "tiny-wan", "steps": 2,
                                             "num_frames": 9}).json()
            wait_state(api, job["id"], lambda j: j["state"] == "succeeded")
            ids.append(job["id"])
    return server, ids


def test_schemathesis_cli_every_phase_every_check(live, tmp_path):
    server, _ = live
    cmd = [sys.executable, "-c", "from schemathesis.cli import schemathesis; schemathesis()", "run",
           server.url + "/openapi.json", "--max-examples", "20", "--seed", "1", "--checks", "all",
           "--exclude-checks", "positive_data_acceptance", "--request-timeout", "30", "--no-color"]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=600, cwd=tmp_path)
    # the stateful phase finds real jobs through GET /v1/jobs and may retry them: leave the queue idle
    with httpx.Client(base_url=server.url, timeout=30) as api:
        for job in api.get("/v1/jobs", params=[("state", "queued"), ("state", "running"), ("limit", 200)]).json()["jobs"]:
            api.post(f"/v1/jobs/{job['id']}/cancel")
    assert r.returncode == 0, r.stdout[-6000:] + r.stderr[-2000:]
    assert "passed" in r.stdout and "failed" not in r.stdout.split("SUMMARY")[-1].lower()


def test_job_operations_with_real_ids(live):
    server, (keep, sacrificial) = live
    schema = schemathesis.openapi.from_url(server.url + "/openapi.json")
    ops = [r.ok() for r in schema.get_all_operations()]
    ops = [op for op in ops if "{job_id}" in op.path]
    assert len(ops) >= 9
    statuses: dict[str, set[int]] = {}
    counter = [0]

    for op in ops:
        @settings(max_examples=20, deadline=None, suppress_health_check=list(HealthCheck), database=None)
        @given(case=op.as_strategy())
        def run(case):
            counter[0] += 1
            if counter[0] % 2 == 0:
                real = sacrificial if case.method.upper() == "DELETE" else keep
                case.path_parameters = {**(case.path_parameters or {}), "job_id": real}
            response = case.call(timeout=30)
            assert response.status_code < 500, f"{case.method} {case.formatted_path}: {response.text[:300]}"
            case.validate_response(response, excluded_checks=[schemathesis.checks.positive_data_acceptance])
            statuses.setdefault(f"{op.method.upper()} {op.path}", set()).add(response.status_code)

        run()
    reached = {k: v for k, v in statuses.items() if v - {404, 422}}
    assert len(reached) >= 6, f"handlers past the 404: {statuses}"
