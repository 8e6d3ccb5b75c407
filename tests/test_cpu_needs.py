"""A bundle whose graph needs a CPU flag: served where the CPU has it, its fallback elsewhere."""

import json

import pytest

from server import create_app
from server.__main__ import check
from server.bundle import BundleError, for_this_cpu, load_bundle
from tests.helpers import make_bundle, solid


def needing(folder, flags, otherwise="plain.json"):
    """`needy.json` needs one of `flags`; `plain.json` beside it is the same tiny network."""
    make_bundle(folder, "plain")
    path = make_bundle(folder, "needy")
    raw = json.loads(path.read_text())
    raw["requires"] = {"cpu_flags_any": flags, "otherwise": otherwise}
    path.write_text(json.dumps(raw))
    return path


def test_a_cpu_with_the_flag_serves_the_bundle_itself(tmp_path):
    bundle = load_bundle(needing(tmp_path, ["avx512_vnni", "avx_vnni"]))
    assert bundle.requires.cpu_flags_any == ("avx512_vnni", "avx_vnni")
    assert for_this_cpu(bundle, frozenset({"sse2", "avx_vnni"})) is bundle


def test_a_cpu_without_it_serves_the_bundle_named_instead(tmp_path, caplog):
    bundle = load_bundle(needing(tmp_path, ["avx512_vnni"]))
    served = for_this_cpu(bundle, frozenset({"sse2", "avx2"}))
    assert served.name == "plain" and served.requires is None
    assert "serving plain instead" in caplog.text


def test_the_server_and_its_check_serve_the_fallback_on_this_cpu(tmp_path):
    path = needing(tmp_path, ["no_cpu_has_this_flag"])
    assert check(path).startswith("ok: plain ")
    client = create_app({"model": path, "ort_threads": 1}).test_client()
    assert client.get("/v1/model").get_json()["name"] == "plain"
    assert client.post("/v1/classify", data=solid((255, 0, 0))).get_json()["label"] == "cardboard"


@pytest.mark.parametrize("requires, says", [
    ({"cpu_flags_any": [], "otherwise": "plain.json"}, "cpu_flags_any"),
    ({"cpu_flags_any": ["avx512_vnni"], "otherwise": "../plain.json"}, "otherwise"),
    ({"cpu_flags_any": ["avx512_vnni"], "otherwise": "plain.onnx"}, "otherwise"),
    ("avx512_vnni", "requires"),
])
def test_a_malformed_need_is_refused(tmp_path, requires, says):
    path = needing(tmp_path, ["x"])
    raw = json.loads(path.read_text())
    raw["requires"] = requires
    path.write_text(json.dumps(raw))
    with pytest.raises(BundleError, match=says):
        load_bundle(path)


def test_a_fallback_that_is_missing_or_needy_itself_stops_the_start(tmp_path):
    with pytest.raises(BundleError, match="not found"):
        for_this_cpu(load_bundle(needing(tmp_path, ["x"], otherwise="gone.json")), frozenset())
    loop = needing(tmp_path, ["x"], otherwise="needy.json")
    with pytest.raises(BundleError, match="needs of its own"):
        for_this_cpu(load_bundle(loop), frozenset())


def test_bench_times_in_process_the_bundle_a_worker_serves(tmp_path):
    """HTTP and in-process cases of `python -m bench` must time the same graph."""
    from bench.__main__ import served

    path = needing(tmp_path, ["avx512_vnni"])
    assert served(path, frozenset({"avx512_vnni"})) == path
    assert served(path, frozenset({"avx2"})) == tmp_path / "plain.json"
    plain = tmp_path / "plain.json"
    assert served(plain, frozenset()) == plain
