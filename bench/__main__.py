"""`python -m bench {all,inprocess,load,fastpath,overhead,http} --help`: latency stage by stage, over HTTP, and
against the old project's pipeline; JSON + Markdown out. Ratios are measured in one run,
interleaved, so drift on a shared machine does not decide them."""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import signal
import sys
import time
from pathlib import Path

import numpy as np
from tqdm import tqdm

from server.bundle import VNNI_FLAGS, cpu_flags, for_this_cpu, load_bundle
from server.config import Config

from . import http, report
from .frames import load_inputs
from .inprocess import Ours
from .serve import ROOT, Front, Gunicorn
from .stats import interleave, summary

log = logging.getLogger("bench")
CORES = len(os.sched_getaffinity(0))


def headline(inputs: dict[str, bytes]) -> bytes:
    """The frame the ratio targets are measured on: 1920x1080 when there is one."""
    return inputs.get("1920x1080") or next(iter(inputs.values()))


def bundles(folder: Path) -> list[Path]:
    return sorted(p for p in folder.glob("*.json") if not p.name.startswith("."))


def served(shipped: Path, flags: frozenset[str] | None = None) -> Path:
    """The bundle a worker serves on this CPU: `shipped`, or the one its `requires` names
    where this CPU lacks the flags (server.bundle.for_this_cpu). In-process cases time this
    one, so that HTTP and in-process compare the same graph."""
    bundle = load_bundle(shipped, verify_sha256=False)
    if for_this_cpu(bundle, flags, verify_sha256=False) is bundle:
        return shipped
    return shipped.parent / bundle.requires.otherwise


def environment(threads: int) -> dict:
    import onnxruntime
    import PIL

    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor())
    versions = {"python": platform.python_version(), "onnxruntime": onnxruntime.__version__,
                "numpy": np.__version__, "pillow": PIL.__version__}
    try:
        import torch
        versions["torch"] = torch.__version__
    except ImportError:
        pass
    # Whether 8-bit int8 graphs are served here or give way to their fp32 graph (server.bundle).
    vnni = sorted(cpu_flags() & set(VNNI_FLAGS))
    return {"cpu": cpu, "cores": CORES, "vnni": vnni, "threads": threads, "versions": versions,
            "when": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())}


def stage_table(paths: list[Path], inputs: dict[str, bytes], threads: int, runs: int, batch: int) -> list[dict]:
    """Every bundle x every input, batch 1 and batch N, stages interleaved per round."""
    rows = []
    for path in paths:
        ours = Ours(path, threads)
        cases = {}
        for name, data in inputs.items():
            cases[(name, 1)] = lambda d=data, o=ours: o.run(d)
            cases[(name, batch)] = lambda d=data, o=ours: o.run(d, batch)
        with tqdm(total=runs + 3, desc=f"in-process {path.stem}", leave=False) as bar:
            times = interleave(cases, runs, 3, 0.01, bar)
        for (name, n), stages in times.items():
            rows.append({"bundle": path.stem, "precision": ours.bundle.metrics.get("precision", "?"),
                         "input": name, "batch": n, "stages": {k: summary(v, n if k in ("inference", "total")
                                                                         else 1) for k, v in stages.items()}})
    return rows


def head_to_head(shipped: Path, paths: list[Path], frame: bytes, server: Gunicorn, threads_worker: int,
                 runs: int) -> dict:
    """The ratio targets: every case on the same 1920x1080 frame, interleaved round by round."""
    import http.client

    from .inprocess import Torch, simplejpeg_decode

    shipped = served(shipped)
    ours_worker = Ours(shipped, threads_worker)
    ours_full = Ours(shipped, CORES)
    exact = Ours(shipped, CORES, fast_decode=False)
    bundle = ours_full.bundle
    members = bundle.provenance.get("members") or [{"backbone": bundle.provenance.get("backbone", "resnet50")}]
    torch_cases = Torch(bundle.preprocess, [m["backbone"] for m in members], CORES, len(bundle.classes),
                        bundle.provenance.get("views", 1))
    batch1 = ours_full.clf.prepare(frame)[0][None]
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=30)

    def over_http() -> dict:
        start = time.perf_counter()
        conn.request("POST", "/v1/classify", body=frame, headers={"Content-Type": "image/jpeg"})
        response = conn.getresponse()
        response.read()
        assert response.status == 200, response.status
        return {"total": (time.perf_counter() - start) * 1000}

    cases = {
        "http_default_config": over_http,
        "inprocess_worker_threads": lambda: ours_worker.run(frame),
        "inprocess_all_cores": lambda: ours_full.run(frame),
        "old_project_pipeline": lambda: torch_cases.old_pipeline(frame),
        "decode_ours_fast": lambda: ours_full.decode_only(frame),
        "decode_ours_exact": lambda: exact.decode_only(frame),
        "decode_simplejpeg_scaled": lambda: simplejpeg_decode(frame, bundle.preprocess.resize),
        "preprocess_ours_fast": lambda: ours_full.preprocess_only(frame),
        "preprocess_ours_exact": lambda: exact.preprocess_only(frame),
        "preprocess_torchvision": lambda: torch_cases.preprocess_only(frame),
        "eager_shipped_backbone": lambda: torch_cases.eager_ours(batch1),
    }
    for path in paths:
        variant = Ours(path, CORES)
        cases[f"ort_{variant.bundle.metrics.get('precision', path.stem)}"] = \
            lambda v=variant: v.infer_only(batch1)
    with tqdm(total=runs + 5, desc="head to head", leave=False) as bar:
        times = interleave(cases, runs, 5, 0.02, bar)
    conn.close()
    return {name: {stage: summary(v) for stage, v in stages.items()} for name, stages in times.items()}


def serving_checks(model: Path, frame: bytes, requests: int, concurrency: int = 4, warmup: int = 100,
                   front: bool = False, retry_after: bool = False, **env: str) -> dict:
    """Cold start, then `requests` at `concurrency` after a warm-up, with worker RSS around it;
    through nginx (`python -m server front`, the image's CMD) with `front`."""
    import psutil

    server = (Front if front else Gunicorn)(model, **env)
    server.start(wait=False)
    cold = server.wait_ready()
    try:
        workers = server.wait_workers(server.n_workers)
        http.load(server.url, frame, warmup, concurrency)  # arenas, allocator pools, kernels
        rss_before = {pid: psutil.Process(pid).memory_info().rss for pid in workers}
        loaded = http.load(server.url, frame, requests, concurrency, timeout_s=1800, retry_after=retry_after)
        rss_after = {pid: psutil.Process(pid).memory_info().rss for pid in server.workers()}
    finally:
        server.stop()
    growth = {str(pid): rss_after[pid] / rss_before[pid] - 1 for pid in rss_before if pid in rss_after}
    return {"cold_start_s": cold, "load": loaded, "same_workers": sorted(rss_before) == sorted(rss_after),
            "rss_mb_before": {str(k): v / 2**20 for k, v in rss_before.items()},
            "rss_mb_after": {str(k): v / 2**20 for k, v in rss_after.items()}, "rss_growth": growth}


def overhead(shipped: Path, frame: bytes, runs: int) -> dict:
    """Where HTTP's extra time goes: the same frame over HTTP (client clock and the server's own
    pipeline clock from `timing_ms`), in process with a worker's threads, and a bare GET /healthz,
    interleaved round by round on one keep-alive connection."""
    import http.client

    server = Gunicorn(shipped)
    workers = server.n_workers
    ours = Ours(served(shipped), Config.from_env().threads)  # what a worker's session gets
    with server:
        server.wait_workers(workers)
        conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=30)

        def call(method: str, path: str, body: bytes | None = None) -> tuple[float, dict]:
            start = time.perf_counter()
            conn.request(method, path, body=body, headers={"Content-Type": "image/jpeg"} if body else {})
            response = conn.getresponse()
            answer = json.loads(response.read())
            assert response.status == 200, (response.status, answer)
            return (time.perf_counter() - start) * 1000, answer

        def classify() -> dict:
            client, answer = call("POST", "/v1/classify", frame)
            return {"client": client, "server_pipeline": answer["timing_ms"]["total"]}

        cases = {"http_classify": classify, "inprocess_worker_threads": lambda: ours.run(frame),
                 "http_healthz": lambda: {"client": call("GET", "/healthz")[0]}}
        with tqdm(total=runs + 5, desc="overhead", leave=False) as bar:
            times = interleave(cases, runs, 5, 0.02, bar)
        conn.close()
    p50 = {f"{case}.{stage}": summary(v)["p50"] for case, stages in times.items() for stage, v in stages.items()}
    http_p50, pipeline, inproc = p50["http_classify.client"], p50["http_classify.server_pipeline"], \
        p50["inprocess_worker_threads.total"]
    return {"workers": workers, "frame_bytes": len(frame), "p50_ms": p50, "split_ms": {
        "http minus in-process (the target)": http_p50 - inproc,
        "server pipeline minus in-process (same code, another process)": pipeline - inproc,
        "http minus server pipeline (socket, gunicorn, Flask, upload, JSON)": http_p50 - pipeline,
        "bare round trip (GET /healthz)": p50["http_healthz.client"]}}


def cmd_overhead(args) -> dict:
    shipped = args.models / "ecosort.json"
    return {"environment": environment(1), "overhead": overhead(shipped, headline(load_inputs(args.inputs)), args.runs)}


def defaults_matrix(shipped: Path, frame: bytes, requests: int) -> list[dict]:
    """Candidate gunicorn x onnxruntime settings, each measured at concurrency 1 and 4."""
    configs = [
        {"WEB_CONCURRENCY": "1", "ORT_THREADS": "2", "ORT_SPINNING": "0"},
        {"WEB_CONCURRENCY": "1", "ORT_THREADS": "2", "ORT_SPINNING": "1"},
        {"WEB_CONCURRENCY": "2", "ORT_THREADS": "1", "ORT_SPINNING": "0"},
        {"WEB_CONCURRENCY": "2", "ORT_THREADS": "2", "ORT_SPINNING": "0"},
        {"WEB_CONCURRENCY": "2", "ORT_THREADS": "2", "ORT_SPINNING": "1"},
        {"WEB_CONCURRENCY": "2", "ORT_THREADS": "1", "ORT_SPINNING": "0", "ORT_ARENA": "0"},
        # Before ORT_PARALLEL_RUNS existed: up to GUNICORN_THREADS (4) session runs at once per worker.
        {"WEB_CONCURRENCY": "2", "ORT_THREADS": "1", "ORT_SPINNING": "0", "ORT_PARALLEL_RUNS": "4"},
    ]
    import psutil

    rows = []
    for env in tqdm(configs, desc="serving defaults", leave=False):
        with Gunicorn(shipped, **env) as server:
            server.wait_workers(int(env["WEB_CONCURRENCY"]))
            http.load(server.url, frame, 40, 4)
            c1 = http.load(server.url, frame, requests // 2, 1)
            c4 = http.load(server.url, frame, requests, 4)
            rss = max(psutil.Process(pid).memory_info().rss for pid in server.workers()) / 2**20
        rows.append({"env": env, "c1": c1, "c4": c4, "rss_mb": rss})
    return rows


def cmd_all(args) -> dict:
    paths = bundles(args.models)
    shipped = args.models / "ecosort.json"
    inputs = load_inputs(args.inputs)
    frame = headline(inputs)
    server = Gunicorn(shipped)
    workers = server.n_workers
    threads_worker = Config.from_env().threads  # what a worker's session gets
    results: dict = {"environment": environment(threads_worker), "bundles": [p.stem for p in paths]}
    with server:
        server.wait_workers(workers)
        results["head_to_head"] = head_to_head(shipped, paths, frame, server, threads_worker, args.runs)
    results["serving"] = serving_checks(shipped, frame, args.requests)  # 4 clients
    results["stages"] = stage_table(paths, inputs, CORES, max(10, args.runs // 3), args.batch)
    if not args.skip_matrix:
        results["defaults"] = defaults_matrix(shipped, frame, args.requests // 2)
    results["targets"] = report.targets(results)
    return results


def cmd_load(args) -> dict:
    """The soak: many requests at high concurrency; only 200 or an explicit 503 allowed."""
    frame = load_inputs(None)[args.frame] if not args.inputs else next(iter(load_inputs(args.inputs).values()))
    # Each worker reaches its plateau (arena, malloc pools per thread) within ~800 requests
    # at this concurrency, then stays flat: measured with RSS snapshots every 400 requests.
    result = serving_checks(args.model, frame, args.requests, args.concurrency, warmup=args.warmup, front=args.front,
                            retry_after=args.retry_after)
    result["environment"] = environment(0)
    result["front"] = args.front
    return result


def cmd_fastpath(args) -> dict:
    """What FAST_DECODE costs: largest pixel deviation from the exact path, and accuracy of
    both paths on the test split, at native size and as camera-sized JPEG frames."""
    import io

    from PIL import Image

    exact, fast = Ours(args.model, CORES, fast_decode=False), Ours(args.model, CORES, fast_decode=True)
    classes = list(exact.bundle.classes)
    manifest = json.loads(Path(args.manifest).read_text())
    items = [it for it in manifest["items"] if it["split"] == "test"][: args.limit or None]
    spec = exact.bundle.preprocess
    scale = np.asarray(spec.std, np.float32)[:, None, None] * 255  # model input units -> grey levels
    out: dict = {"images": len(items), "sizes": {}}
    for size in [None, *args.sizes]:
        right = {"exact": 0, "fast": 0}
        worst, mean = 0.0, []
        for it in tqdm(items, desc=f"fast path {size or 'native'}", leave=False):
            data = (args.data / it["path"]).read_bytes()
            if size:
                w, h = size
                buffer = io.BytesIO()
                Image.open(io.BytesIO(data)).convert("RGB").resize((w, h), Image.Resampling.BICUBIC).save(
                    buffer, "JPEG", quality=90)
                data = buffer.getvalue()
            a, _ = exact.clf.prepare(data)
            b, _ = fast.clf.prepare(data)
            diff = np.abs(a - b) * scale
            worst, mean = max(worst, float(diff.max())), mean + [float(diff.mean())]
            for name, x in (("exact", a), ("fast", b)):
                logits = exact.runtime.infer(x[None])
                right[name] += classes[int(exact.runtime.probabilities(logits).argmax())] == it["label"]
        out["sizes"][f"{size[0]}x{size[1]}" if size else "native"] = {
            "max_pixel_deviation": worst, "mean_pixel_deviation": float(np.mean(mean)),
            "accuracy_exact": right["exact"] / len(items), "accuracy_fast": right["fast"] / len(items)}
    out["environment"] = environment(CORES)
    return out


def cmd_inprocess(args) -> dict:
    paths = bundles(args.models)
    return {"environment": environment(args.threads),
            "stages": stage_table(paths, load_inputs(args.inputs), args.threads, args.runs, args.batch)}


def cmd_http(args) -> dict:
    data = next(iter(load_inputs(args.inputs).values())) if args.inputs else load_inputs(None)["1920x1080"]
    return {"environment": environment(0), "http": http.load(args.url, data, args.requests, args.concurrency,
                                                             args.timeout)}


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    sub = p.add_subparsers(dest="mode", required=True)
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--inputs", type=Path, help="folder of images (default: generated camera frames)")
    common.add_argument("--out", type=Path, default=ROOT / "bench" / "results", help="JSON + Markdown folder")
    common.add_argument("--models", type=Path, default=ROOT / "models", help="folder of bundles")
    a = sub.add_parser("all", parents=[common], help="everything the README table needs (~8 min)")
    a.add_argument("--runs", type=int, default=60)
    a.add_argument("--requests", type=int, default=1000, help="requests for the RSS and concurrency checks")
    a.add_argument("--batch", type=int, default=8)
    a.add_argument("--skip-matrix", action="store_true", help="skip the serving-defaults matrix")
    a.set_defaults(run=cmd_all)
    i = sub.add_parser("inprocess", parents=[common], help="stage latencies per bundle and input")
    i.add_argument("--runs", type=int, default=30)
    i.add_argument("--batch", type=int, default=8)
    i.add_argument("--threads", type=int, default=CORES)
    i.set_defaults(run=cmd_inprocess)
    ld = sub.add_parser("load", parents=[common], help="start gunicorn and soak it (README: 20,000 at 16)")
    ld.add_argument("--model", type=Path, default=ROOT / "models" / "ecosort.json")
    ld.add_argument("--requests", type=int, default=20000)
    ld.add_argument("--concurrency", type=int, default=16)
    ld.add_argument("--frame", default="640x480", help="generated frame size to send")
    ld.add_argument("--warmup", type=int, default=1000, help="requests before the RSS baseline")
    ld.add_argument("--front", action="store_true", help="through nginx, as the image runs (server/front.py)")
    ld.add_argument("--retry-after", action="store_true", help="a refused client waits its Retry-After, as a "
                    "well-behaved client does (default: it asks again at once)")
    ld.set_defaults(run=cmd_load)
    fp = sub.add_parser("fastpath", parents=[common], help="accuracy and pixel deviation of FAST_DECODE")
    fp.add_argument("--model", type=Path, default=ROOT / "models" / "ecosort.json")
    fp.add_argument("--data", type=Path, default=ROOT.parent / "shared/data/trashnet/dataset-resized")
    fp.add_argument("--manifest", type=Path, default=ROOT / "training/splits/trashnet.json")
    fp.add_argument("--sizes", type=lambda s: tuple(map(int, s.split("x"))), nargs="*",
                    default=[(1920, 1080), (4032, 3024)])
    fp.add_argument("--limit", type=int, default=0)
    fp.set_defaults(run=cmd_fastpath)
    o = sub.add_parser("overhead", parents=[common], help="split HTTP's extra time against in-process")
    o.add_argument("--runs", type=int, default=100)
    o.set_defaults(run=cmd_overhead)
    h = sub.add_parser("http", parents=[common], help="load a running server (loopback only)")
    h.add_argument("--url", default="http://127.0.0.1:8000")
    h.add_argument("--requests", type=int, default=500)
    h.add_argument("--concurrency", type=int, default=4)
    h.add_argument("--timeout", type=float, default=120, help="stop after this many seconds")
    h.set_defaults(run=cmd_http)
    return p


def main(argv=None) -> int:
    # SIGTERM unwinds like Ctrl-C, so the servers a run started are stopped, not orphaned.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    args = get_args_parser().parse_args(argv)
    results = args.run(args)
    args.out.mkdir(parents=True, exist_ok=True)
    name = args.mode + ("-front" if getattr(args, "front", False) else "")
    (args.out / f"{name}.json").write_text(json.dumps(results, indent=1) + "\n")
    (args.out / f"{name}.md").write_text(report.markdown(results, " ".join(["python -m bench", *sys.argv[1:]])))
    sys.stdout.write((args.out / f"{name}.md").read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
