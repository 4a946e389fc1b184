"""Load test of ``barp serve`` on this machine: requests/s and p50/p95 latency at batch 1 and batch 32, beside the
encoder alone on the same prompts.

    python tools/load_test.py --ckpt_path best.ckpt

Measures, one after the other so they do not share the CPU: (1) the checkpoint's frozen encoder called in process on
batches of 1 and 32 prompts; (2) a ``barp serve`` started as a subprocess on a free port of 127.0.0.1 (a temporary
log folder, fsync on), sent ``--requests`` POST /route requests per batch size from ``--concurrency`` client threads
(keep-alive connections), and one POST /feedback per routed decision of the batch-1 run. Traffic goes to 127.0.0.1
only, a bounded number of requests, each with a timeout; the server is stopped at the end. Prompts are texts of the
built-in benchmark (its prompt lengths).

    python tools/load_test.py --ckpt_path best.ckpt --memory_requests 10000

``--memory_requests N`` runs the memory test instead: one server (fsync on, ``--decision_ttl_s`` 30 and
``--compact_after`` 1000 so that expiry and compaction happen within the run) gets N requests from one client, each
a POST /route of one prompt followed, for 9 decisions in 10, by its POST /feedback (the tenth is left to expire);
the server's resident memory (VmRSS), its pending decisions and the lines of decisions.jsonl are printed every
N / 10 requests. Bounded: N requests, each with a 60 s timeout, to 127.0.0.1 only.
"""

from __future__ import annotations

import http.client
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
from jsonargparse import CLI


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _stats(latencies: list[float], wall: float, prompts_per_request: int) -> dict[str, float]:
    lat = np.asarray(latencies) * 1000
    return {"requests_per_s": len(lat) / wall, "prompts_per_s": len(lat) * prompts_per_request / wall,
            "p50_ms": float(np.percentile(lat, 50)), "p95_ms": float(np.percentile(lat, 95)), "n": len(lat)}


def encoder_alone(ckpt_path: str, prompts: list[str], batch: int, requests: int) -> dict[str, float]:
    """The frozen encoder in process on ``requests`` batches of ``batch`` prompts."""
    from barp.models.trained import TrainedRouter

    encoder = TrainedRouter.from_checkpoint(ckpt_path).encoder
    encoder.encode(prompts[:batch])  # warm-up
    latencies, start = [], time.perf_counter()
    for r in range(requests):
        chunk = [prompts[(r * batch + j) % len(prompts)] for j in range(batch)]
        t = time.perf_counter()
        encoder.encode(chunk)
        latencies.append(time.perf_counter() - t)
    return _stats(latencies, time.perf_counter() - start, batch)


def _post(conn: http.client.HTTPConnection, path: str, body: dict) -> dict:
    conn.request("POST", path, body=json.dumps(body), headers={"content-type": "application/json"})
    answer = conn.getresponse()
    data = json.loads(answer.read())
    if answer.status != 200:
        raise RuntimeError(f"{path}: HTTP {answer.status}: {data}")
    return data


def hammer(port: int, path: str, bodies: list[dict], concurrency: int) -> tuple[dict[str, float], list[dict]]:
    """Send ``bodies`` to ``path`` from ``concurrency`` threads; latency statistics and the answers."""
    def worker(part: list[dict]) -> list[tuple[float, dict]]:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
        out = []
        for body in part:
            t = time.perf_counter()
            answer = _post(conn, path, body)
            out.append((time.perf_counter() - t, answer))
        conn.close()
        return out

    parts = [bodies[i::concurrency] for i in range(concurrency)]
    start = time.perf_counter()
    with ThreadPoolExecutor(concurrency) as pool:
        results = [item for part in pool.map(worker, parts) for item in part]
    wall = time.perf_counter() - start
    size = len(bodies[0].get("prompts", [None]))
    return _stats([r[0] for r in results], wall, size), [r[1] for r in results]


def _rss_mb(pid: int) -> float:
    with open(f"/proc/{pid}/status") as handle:
        for line in handle:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def _start_server(ckpt_path: str, port: int, log_dir: str, extra: list[str], startup_timeout: float):
    server = subprocess.Popen([sys.executable, "-m", "barp", "serve", "--ckpt_path", ckpt_path, "--host",
                               "127.0.0.1", "--port", str(port), "--log_dir", log_dir, *extra], env={**os.environ})
    deadline = time.monotonic() + startup_timeout
    while True:
        try:
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
            conn.request("GET", "/health")
            if conn.getresponse().status == 200:
                return server
        except OSError:
            if time.monotonic() > deadline or server.poll() is not None:
                server.kill()
                raise RuntimeError("barp serve did not start") from None
            time.sleep(0.5)


def memory_test(ckpt_path: str, requests: int, prompts: list[str], startup_timeout: float,
                max_seconds: float = 3600.0) -> list[dict[str, float]]:
    """Server memory over ``requests`` requests (routes and feedback); see the module docstring."""
    port, log_dir = _free_port(), tempfile.mkdtemp(prefix="barp-memory-")
    server = _start_server(ckpt_path, port, log_dir, ["--decision_ttl_s", "30", "--compact_after", "1000"],
                           startup_timeout)
    samples, sent, routed, start = [], 0, 0, time.monotonic()
    every = max(1, requests // 10)
    try:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
        samples.append({"requests": 0, "rss_mb": _rss_mb(server.pid), "pending": 0, "decision_lines": 0, "s": 0.0})
        while sent < requests and time.monotonic() - start < max_seconds:
            answer = _post(conn, "/route", {"prompt": prompts[routed % len(prompts)], "w_c": 0.3})
            sent, routed = sent + 1, routed + 1
            if routed % 10 and sent < requests:
                _post(conn, "/feedback", {"decision_id": answer["decisions"][0]["decision_id"], "score": 1.0,
                                          "cost": 1e-4})
                sent += 1
            if sent // every > (samples[-1]["requests"]) // every or sent >= requests:
                conn.request("GET", "/health")
                health = json.loads(conn.getresponse().read())
                with open(os.path.join(log_dir, "decisions.jsonl"), "rb") as handle:
                    lines = sum(1 for _ in handle)
                samples.append({"requests": sent, "rss_mb": _rss_mb(server.pid), "s": time.monotonic() - start,
                                "pending": health["pending_decisions"], "decision_lines": lines})
        conn.close()
    finally:
        server.terminate()
        server.wait(30)
    print(f"{os.cpu_count()} CPU cores, one client, {ckpt_path}")
    print(f"{'requests':>9} {'seconds':>8} {'RSS MB':>8} {'pending':>8} {'decisions.jsonl lines':>22}")
    for row in samples:
        print(f"{row['requests']:>9} {row['s']:>8.0f} {row['rss_mb']:>8.1f} {row['pending']:>8} "
              f"{row['decision_lines']:>22}")
    return samples


def main(ckpt_path: str, requests: int = 200, batch_requests: int = 40, concurrency: int = 4, w_c: float = 0.3,
         startup_timeout: float = 180.0, memory_requests: int = 0) -> dict[str, dict[str, float]]:
    """Measure the encoder alone, then barp serve, at batch 1 and batch 32; print a table.

    Args:
        ckpt_path: Checkpoint written by barp fit.
        requests: Requests at batch 1 (also the number of feedback posts).
        batch_requests: Requests at batch 32.
        concurrency: Client threads.
        w_c: Cost weight of the routed requests.
        startup_timeout: Seconds to wait for the server to answer /health.
        memory_requests: Run the memory test with this many requests instead (0: the speed test).
    """
    from barp.data.synthetic import generate_synthetic

    prompts = list(dict.fromkeys(generate_synthetic(num_prompts=3000, seed=0).prompts))
    if memory_requests:
        return {"memory": memory_test(ckpt_path, memory_requests, prompts, startup_timeout)}
    rows = {"encoder alone, batch 1": encoder_alone(ckpt_path, prompts, 1, requests),
            "encoder alone, batch 32": encoder_alone(ckpt_path, prompts, 32, batch_requests)}
    port, log_dir = _free_port(), tempfile.mkdtemp(prefix="barp-load-")
    server = _start_server(ckpt_path, port, log_dir, [], startup_timeout)
    try:
        one = [{"prompts": [prompts[i % len(prompts)]], "w_c": w_c} for i in range(requests)]
        _post(http.client.HTTPConnection("127.0.0.1", port, timeout=60), "/route", one[0])  # warm-up
        rows["barp serve /route, batch 1"], answers = hammer(port, "/route", one, concurrency)
        many = [{"prompts": [prompts[(r * 32 + j) % len(prompts)] for j in range(32)], "w_c": w_c}
                for r in range(batch_requests)]
        rows["barp serve /route, batch 32"], _ = hammer(port, "/route", many, concurrency)
        feedback = [{"decision_id": a["decisions"][0]["decision_id"], "score": 1.0, "cost": 1e-4} for a in answers]
        rows["barp serve /feedback (fsync)"], _ = hammer(port, "/feedback", feedback, concurrency)
    finally:
        server.terminate()
        server.wait(30)
    print(f"{os.cpu_count()} CPU cores, {concurrency} client threads, {ckpt_path}")
    print(f"{'':<30} {'requests/s':>10} {'prompts/s':>10} {'p50 ms':>8} {'p95 ms':>8}")
    for name, s in rows.items():
        print(f"{name:<30} {s['requests_per_s']:>10.1f} {s['prompts_per_s']:>10.1f} {s['p50_ms']:>8.1f} "
              f"{s['p95_ms']:>8.1f}")
    return rows


if __name__ == "__main__":
    CLI(main, as_positional=False)
