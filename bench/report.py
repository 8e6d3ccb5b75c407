"""Targets (ratios from one run) and the Markdown tables the README shows."""

from __future__ import annotations


def _p50(results: dict, case: str, stage: str = "total") -> float | None:
    row = results.get("head_to_head", {}).get(case)
    return row[stage]["p50"] if row and stage in row else None


def targets(results: dict) -> list[dict]:
    h = lambda case, stage="total": _p50(results, case, stage)  # noqa: E731
    rows = []

    def add(name: str, value: float | None, goal: float, higher_is_better: bool, unit: str) -> None:
        ok = None if value is None else (value >= goal if higher_is_better else value <= goal)
        rows.append({"target": name, "measured": value, "goal": goal, "met": ok,
                     "sign": ">=" if higher_is_better else "<=", "unit": unit})

    http_p50, old = h("http_default_config"), h("old_project_pipeline")
    add("HTTP 1920x1080 p50 vs old project pipeline", old / http_p50 if old and http_p50 else None, 8, True, "x")
    eager, fp32, int8 = h("eager_shipped_backbone"), h("ort_fp32"), h("ort_int8")
    add("onnxruntime fp32 vs PyTorch eager, same network, batch 1", eager / fp32 if eager and fp32 else None,
        1.8, True, "x")
    add("int8 vs fp32, batch 1", fp32 / int8 if fp32 and int8 else None, 1.4, True, "x")
    add("int8 model time, batch 1 (issue 21)", int8, 10, False, "ms")
    tv, ours = h("preprocess_torchvision"), h("preprocess_ours_fast")
    add("preprocessing 1920x1080 JPEG vs torchvision", tv / ours if tv and ours else None, 2.5, True, "x")
    inproc = h("inprocess_worker_threads")
    add("HTTP p50 minus in-process total p50", http_p50 - inproc if http_p50 and inproc else None, 3, False, "ms")
    serving = results.get("serving", {})
    full = h("inprocess_all_cores")
    if serving and full:
        add("4 clients: server throughput / in-process throughput", serving["load"]["throughput"] / (1000 / full),
            0.9, True, "")
        add("errors under 4 clients", serving["load"]["errors"], 0, False, "")
        add("worker RSS after requests (max)", max(serving["rss_mb_after"].values()), 250, False, "MB")
        add("cold start to /readyz", serving["cold_start_s"], 3, False, "s")
    return rows


def _fmt(v, digits=2) -> str:
    return "n/a" if v is None else f"{v:.{digits}f}"


def markdown(results: dict, command: str) -> str:
    env = results.get("environment", {})
    lines = [f"Made by `{command}` on {env.get('when')}: {env.get('cpu')}, {env.get('cores')} cores, "
             f"VNNI {', '.join(env.get('vnni') or ['none'])}, "
             f"versions {env.get('versions')}.", ""]
    if results.get("targets"):
        lines += ["| target | measured | goal | met |", "| --- | --- | --- | --- |"]
        for t in results["targets"]:
            met = {True: "yes", False: "**no**", None: "n/a"}[t["met"]]
            lines.append(f"| {t['target']} | {_fmt(t['measured'])} {t['unit']} | {t['sign']} {t['goal']} "
                         f"{t['unit']} | {met} |")
        lines.append("")
    if results.get("head_to_head"):
        lines += ["Head to head on one 1920x1080 JPEG (ms, interleaved):", "",
                  "| case | p50 | p90 | p99 |", "| --- | --- | --- | --- |"]
        for case, stages in results["head_to_head"].items():
            t = stages["total"]
            lines.append(f"| {case} | {_fmt(t['p50'])} | {_fmt(t['p90'])} | {_fmt(t['p99'])} |")
        lines.append("")
    if results.get("stages"):
        lines += ["In-process stages (ms, p50 / p90 / p99; images/s from total p50):", "",
                  "| bundle | input | batch | decode | preprocess | inference | total | images/s |",
                  "| --- | --- | --- | --- | --- | --- | --- | --- |"]
        for r in results["stages"]:
            s = r["stages"]
            cell = lambda k, s=s: "/".join(_fmt(s[k][p], 1) for p in ("p50", "p90", "p99"))  # noqa: E731
            lines.append(f"| {r['bundle']} ({r['precision']}) | {r['input']} | {r['batch']} | {cell('decode')} | "
                         f"{cell('preprocess')} | {cell('inference')} | {cell('total')} | "
                         f"{_fmt(s['total']['images_per_s'], 1)} |")
        lines.append("")
    if results.get("defaults"):
        lines += ["Serving settings (gunicorn workers x onnxruntime threads), 1920x1080 JPEG over HTTP:", "",
                  "| settings | c=1 p50 ms | c=1 p99 ms | c=4 p50 ms | c=4 images/s | errors | worker RSS MB (max) |",
                  "| --- | --- | --- | --- | --- | --- | --- |"]
        for r in results["defaults"]:
            name = ", ".join(f"{k}={v}" for k, v in r["env"].items())
            c1, c4 = r["c1"], r["c4"]
            lines.append(f"| {name} | {_fmt(c1['latency_ms']['p50'])} | {_fmt(c1['latency_ms']['p99'])} | "
                         f"{_fmt(c4['latency_ms']['p50'])} | {_fmt(c4['throughput'], 1)} | "
                         f"{c1['errors'] + c4['errors']} | {_fmt(r.get('rss_mb'), 0)} |")
        lines.append("")
    if results.get("load"):
        r, lat = results["load"], results["load"]["latency_ms"] or {}
        growth = max(results["rss_growth"].values()) if results["rss_growth"] else None
        shed = r.get("refused_ms") or {}
        lines += ["| requests | concurrency | statuses | p50 ms | p99 ms | max ms | 503 p99 ms | 503 max ms | "
                  "images/s | worker RSS MB after | max RSS growth |",
                  "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
                  f"| {r['requests']} | {r['concurrency']} | {r['statuses']} | {_fmt(lat.get('p50'))} | "
                  f"{_fmt(lat.get('p99'))} | {_fmt(lat.get('max'))} | {_fmt(shed.get('p99'))} | "
                  f"{_fmt(shed.get('max'))} | {_fmt(r['throughput'], 1)} | "
                  f"{', '.join(_fmt(v, 0) for v in results['rss_mb_after'].values())} | "
                  f"{_fmt(100 * growth if growth is not None else None, 1)}% |", ""]
    if results.get("sizes"):
        lines += [f"FAST_DECODE on the {results['images']} test-split images (pixel deviation in grey levels "
                  "of the model input):", "",
                  "| frames | max deviation | mean deviation | accuracy exact | accuracy fast |",
                  "| --- | --- | --- | --- | --- |"]
        for name, r in results["sizes"].items():
            lines.append(f"| {name} | {_fmt(r['max_pixel_deviation'], 1)} | {_fmt(r['mean_pixel_deviation'], 2)} | "
                         f"{100 * r['accuracy_exact']:.2f}% | {100 * r['accuracy_fast']:.2f}% |")
        lines.append("")
    if results.get("overhead"):
        r = results["overhead"]
        lines += [f"One 1920x1080 JPEG ({r['frame_bytes']} bytes), {r['workers']} workers, interleaved (p50 ms):", "",
                  "| case.clock | p50 ms |", "| --- | --- |"]
        lines += [f"| {k} | {_fmt(v)} |" for k, v in r["p50_ms"].items()]
        lines += ["", "| split | ms |", "| --- | --- |"]
        lines += [f"| {k} | {_fmt(v)} |" for k, v in r["split_ms"].items()]
        lines.append("")
    if results.get("http"):
        r = results["http"]
        lat = r["latency_ms"] or {}
        lines += ["| requests | concurrency | p50 ms | p90 ms | p99 ms | images/s | errors |",
                  "| --- | --- | --- | --- | --- | --- | --- |",
                  f"| {r['requests']} | {r['concurrency']} | {_fmt(lat.get('p50'))} | {_fmt(lat.get('p90'))} | "
                  f"{_fmt(lat.get('p99'))} | {_fmt(r['throughput'], 1)} | {r['errors']} |", ""]
    return "\n".join(lines)
