"""Short form of the soak (`python -m bench load`, README): real gunicorn, 16 clients."""

from bench.__main__ import serving_checks
from bench.frames import camera_frame


def test_soak_short(tiny_bundle):
    result = serving_checks(tiny_bundle, camera_frame((640, 480)), requests=1500, concurrency=16, warmup=300)
    load = result["load"]
    assert load["requests"] == 1500
    assert set(load["statuses"]) <= {"200", "503"}, load["statuses"]  # 503 is the documented shed
    assert load["statuses"].get("200", 0) >= 1400
    assert result["same_workers"], "a worker died under load"
    assert max(result["rss_growth"].values()) < 0.10, result["rss_growth"]
    assert result["cold_start_s"] < 10


def test_overhead_split(tiny_bundle):
    """`python -m bench overhead`: every clock present, and the split is the difference of its p50s."""
    from bench.__main__ import overhead

    r = overhead(tiny_bundle, camera_frame((640, 480)), runs=5)
    p50, split = r["p50_ms"], r["split_ms"]
    assert {"http_classify.client", "http_classify.server_pipeline", "inprocess_worker_threads.total",
            "http_healthz.client"} <= set(p50)
    assert 0 < p50["http_classify.server_pipeline"] < p50["http_classify.client"]  # the server's clock is inside
    # HTTP wraps the same pipeline: it can only add time, and a bare round trip is cheaper
    assert p50["inprocess_worker_threads.total"] < p50["http_classify.client"]
    assert 0 < p50["http_healthz.client"] < p50["http_classify.client"]
    assert "http minus in-process (the target)" in split


def test_decode_cases_compare_the_same_dct_scale(tiny_bundle):
    """`python -m bench all` times Pillow's draft against simplejpeg: both must decode the
    1080p frame to the same reduced size, or the comparison would not be like for like."""
    import simplejpeg

    from bench.inprocess import Ours, simplejpeg_decode

    frame = camera_frame((1920, 1080))
    ours = Ours(tiny_bundle, 1)
    side = ours.bundle.preprocess.resize
    with ours.clf.decoded(frame) as image:
        drafted = image.size
    pixels = simplejpeg.decode_jpeg(frame, "RGB", min_height=side, min_width=side)
    assert drafted == (pixels.shape[1], pixels.shape[0])
    assert drafted[0] < 1920 and min(drafted) >= side  # scaled, never below the resize
    assert ours.decode_only(frame)["total"] > 0 and simplejpeg_decode(frame, side)["total"] > 0
