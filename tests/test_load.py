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
