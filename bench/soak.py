"""A bounded soak: mixed allowed, denied and streaming traffic while jobs start and finish.

    make soak                         # 5 minutes
    SOAK_SECONDS=30 python bench/soak.py

Every response is checked against the decision it must have: a running job's token is
allowed, a finished job's token (finished before the request was sent) and unknown
tokens are denied, and nothing answers 5xx. Memory and descriptors of the jobgate
processes are sampled throughout. Prints a summary and writes it under bench/results/.
"""

from __future__ import annotations

import http.client
import json
import os
import random
import sys
import threading
import time
import urllib.error
import urllib.request
from collections import Counter
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from gateway.devredis import RedisProcess
from tests.e2e.serving import BulkUpstream, JobgateProcess

PKG = "/api/v4/projects/1/packages/generic/a/1/a"
ADMIN_TOKEN = "e2e-admin-token"


class Jobs:
    """Jobs the soak started, with when each was finished (as acknowledged by the admin API)."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.running: dict[int, str] = {}
        self.finishing: set[str] = set()  # tokens whose finish has been sent
        self.finished: dict[int, tuple[str, float]] = {}


def call(url: str, method: str = "GET", headers: dict[str, str] | None = None, body: bytes | None = None,
         timeout: float = 30) -> tuple[int, bytes]:  # fmt: skip
    request = urllib.request.Request(url, data=body, headers=headers or {}, method=method)
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return int(response.status), response.read()
    except urllib.error.HTTPError as error:
        return int(error.code), error.read()
    except (OSError, http.client.HTTPException) as error:  # a broken transfer is an answer too
        return 0, f"{type(error).__name__}: {error}".encode()


def sample(pids: list[int]) -> dict[str, int]:
    rss = fds = 0
    for pid in pids:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                rss += int(line.split()[1])
        fds += len(os.listdir(f"/proc/{pid}/fd"))
    return {"rss_kib": rss, "fds": fds}


def worker_pids(parent: int) -> list[int]:
    children = Path(f"/proc/{parent}/task/{parent}/children")
    return [parent, *(int(p) for p in children.read_text().split())] if children.exists() else [parent]


def main() -> int:
    seconds = float(os.environ.get("SOAK_SECONDS", "300"))
    tmp = Path(__import__("tempfile").mkdtemp(prefix="jobgate-soak-"))
    counts: Counter[str] = Counter()
    problems: list[str] = []
    samples: list[dict[str, int]] = []
    jobs = Jobs()
    with (
        RedisProcess() as redis,
        BulkUpstream(tmp) as bulk,
        JobgateProcess(
            tmp, redis.url, {"packages": bulk.url}, workers=2, limits={"failed_auth_per_minute": 0}
        ) as gw,
    ):
        api = f"http://127.0.0.1:{gw.admin_port}/admin/v1"
        auth = {"Authorization": f"Bearer {ADMIN_TOKEN}", "Content-Type": "application/json"}
        call(f"{api}/projects/1", "PUT", auth, b'{"path": "soak/app", "visibility": "private"}')
        call(f"{api}/projects/1/members/7", "PUT", auth, b'{"access_level": 30}')
        next_id = [1000]
        deadline = time.monotonic() + seconds
        pids = worker_pids(gw.pid)

        def start_job() -> None:
            next_id[0] += 1
            job_id = next_id[0]
            code, body = call(
                f"{api}/jobs", "POST", auth, json.dumps({"id": job_id, "project": 1, "user": 7}).encode()
            )
            if code != 201:
                problems.append(f"job start answered {code}")
                return
            with jobs.lock:
                jobs.running[job_id] = json.loads(body)["token"]

        for _ in range(5):
            start_job()

        def control() -> None:
            while time.monotonic() < deadline:
                time.sleep(0.2)
                start_job()
                with jobs.lock:
                    victim = random.choice(list(jobs.running)) if len(jobs.running) > 3 else None
                    token = jobs.running.pop(victim) if victim else None
                    if token is not None:
                        jobs.finishing.add(token)
                if victim is not None and token is not None:
                    code, _ = call(f"{api}/jobs/{victim}/finish", "POST", auth, b'{"status": "success"}')
                    if code != 200:
                        problems.append(f"job finish answered {code}")
                    with jobs.lock:
                        jobs.finished[victim] = (token, time.monotonic())

        def traffic(kind: str) -> None:
            while time.monotonic() < deadline:
                with jobs.lock:
                    running = list(jobs.running.items())
                    finished = list(jobs.finished.values())
                if kind == "allowed" and running:
                    _, token = random.choice(running)
                    expected, size = {200, 404}, 64  # 404 only if the job finished in flight
                elif kind == "streaming" and running:
                    _, token = random.choice(running)
                    expected, size = {200, 404}, random.choice([1 << 20, 4 << 20, 8 << 20])
                elif kind == "denied" and finished:
                    token, _ = random.choice(finished)
                    expected, size = {404}, 64
                else:
                    token, expected, size = f"glcbt-unknown-{random.random()}", {404}, 64
                code, body = call(f"{gw.url}{PKG}?size={size}", headers={"JOB-TOKEN": token})
                counts[f"{kind} {code}"] += 1
                if code == 0:  # no HTTP answer at all: a dropped connection or a timeout
                    problems.append(f"{kind}: no answer ({body.decode()[:200]})")
                elif code >= 500:
                    problems.append(f"{kind}: unexpected {code}")
                elif code not in expected:
                    problems.append(f"{kind}: wrong decision {code} (expected {sorted(expected)})")
                elif code == 200 and len(body) != size:
                    problems.append(f"{kind}: short body {len(body)} of {size}")
                if kind in ("allowed", "streaming") and code == 404:
                    with jobs.lock:  # a 404 is right only once the job's finish has been sent
                        finishing = token in jobs.finishing
                    if not finishing:
                        problems.append(f"{kind}: a running job's token was denied")

        def guarded(kind: str) -> None:  # a thread that dies must fail the soak, not thin it out
            try:
                control() if kind == "control" else traffic(kind)
            except Exception as error:
                problems.append(f"{kind} thread died: {type(error).__name__}: {error}")

        threads = [threading.Thread(target=guarded, args=(k,)) for k in
                   ("control", "allowed", "allowed", "denied", "unknown", "streaming")]  # fmt: skip
        for thread in threads:
            thread.start()
        while time.monotonic() < deadline:
            samples.append(sample(pids))
            time.sleep(min(5.0, max(seconds / 10, 0.5)))
        for thread in threads:
            thread.join()
        samples.append(sample(pids))
        log = gw.log()
    leaked = [t for t, _ in jobs.finished.values() if t in log]
    if leaked:
        problems.append("a token appears in the log")
    total = sum(counts.values())
    summary: dict[str, Any] = {
        "seconds": seconds,
        "requests": total,
        "by_outcome": dict(sorted(counts.items())),
        "jobs_started": next_id[0] - 1000,
        "jobs_finished": len(jobs.finished),
        "problems": problems[:50],
        "problem_count": len(problems),
        "rss_kib_first_last": [samples[0]["rss_kib"], samples[-1]["rss_kib"]],
        "rss_kib_max": max(s["rss_kib"] for s in samples),
        "fds_first_last": [samples[0]["fds"], samples[-1]["fds"]],
    }
    print(json.dumps(summary, indent=2))
    out = ROOT / "bench" / "results"
    out.mkdir(exist_ok=True)
    (out / ("soak-smoke.json" if seconds < 60 else time.strftime("soak-%Y%m%d-%H%M%S.json"))).write_text(
        json.dumps(summary, indent=2) + "\n"
    )
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
