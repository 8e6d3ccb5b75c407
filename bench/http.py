"""HTTP load against a running server: N requests at concurrency C, loopback only."""

from __future__ import annotations

import http.client
import threading
import time
from urllib.parse import urlsplit

from .stats import summary


def load(url: str, data: bytes, requests: int, concurrency: int, timeout_s: float = 120,
         content_type: str = "image/jpeg", retry_after: bool = False) -> dict:
    """Bounded in count and time: stops after `requests` answers or `timeout_s` seconds.

    A 503's time is kept apart from the answers' ("refused_ms"), with how many lacked
    Retry-After. With `retry_after` a refused client waits as long as it says, as a
    well-behaved client does; without, it asks again at once (a storm of refusals, the worst case)."""
    parts = urlsplit(url)
    if parts.hostname not in ("127.0.0.1", "localhost", "::1"):
        raise ValueError("the benchmark only targets a server on this machine (loopback)")
    latencies: list[float] = []
    refused: list[float] = []
    no_retry_after = 0
    statuses: dict[str, int] = {}
    lock = threading.Lock()
    counter = iter(range(requests))
    deadline = time.time() + timeout_s

    def client() -> None:
        nonlocal no_retry_after
        conn = http.client.HTTPConnection(parts.hostname, parts.port or 80, timeout=30)
        while time.time() < deadline:
            with lock:
                if next(counter, None) is None:
                    break
            start = time.perf_counter()
            try:
                conn.request("POST", "/v1/classify", body=data, headers={"Content-Type": content_type})
                response = conn.getresponse()
                response.read()
                status = str(response.status)
                wait = response.getheader("Retry-After")
            except (OSError, http.client.HTTPException) as exc:
                status, wait = type(exc).__name__, None
                conn.close()
                conn = http.client.HTTPConnection(parts.hostname, parts.port or 80, timeout=30)
            ms = (time.perf_counter() - start) * 1000
            with lock:
                statuses[status] = statuses.get(status, 0) + 1
                if status == "200":
                    latencies.append(ms)
                elif status == "503":
                    refused.append(ms)
                    no_retry_after += wait is None
            if status == "503" and retry_after and wait:
                time.sleep(float(wait))
        conn.close()

    threads = [threading.Thread(target=client) for _ in range(concurrency)]
    start = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - start
    ok = statuses.get("200", 0)
    return {"requests": sum(statuses.values()), "concurrency": concurrency, "statuses": statuses,
            "errors": sum(v for k, v in statuses.items() if k != "200"), "seconds": wall,
            "throughput": ok / wall if wall else 0.0, "latency_ms": summary(latencies) if latencies else None,
            "refused_ms": summary(refused) if refused else None, "refused_without_retry_after": no_retry_after}
