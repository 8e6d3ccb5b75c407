"""Replay the Dockerfile without a Docker engine: fresh venv from its requirements, only
what it COPYs, its ENV, its CMD, its HEALTHCHECK (its apt-get: Debian's nginx, which
tests/run.sh installs here); then classify real photos through the front."""

import json
import os
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import requests

from bench.serve import free_port
from server.bundle import for_this_cpu, load_bundle
from tests.conftest import ROOT, SAMPLES, SHIPPED
from tests.helpers import fewest_right


def instructions(path: Path) -> list[tuple[str, str]]:
    text = path.read_text().replace("\\\n", " ")
    rows = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            op, _, rest = line.partition(" ")
            rows.append((op.upper(), rest.strip()))
    return rows


def exec_form(rest: str) -> list[str]:
    assert rest.startswith("["), f"use the exec form (JSON array), got: {rest}"
    return json.loads(rest)


def test_dockerfile_shape():
    rows = instructions(ROOT / "Dockerfile")
    ops = [op for op, _ in rows]
    assert rows[0][0] == "FROM" and "slim" in rows[0][1]
    users = [rest for op, rest in rows if op == "USER"]
    assert users and users[-1] not in ("root", "0"), "the container must run as non-root"
    copies = [rest.split()[0] for op, rest in rows if op == "COPY"]
    assert set(copies) == {"requirements-serve.txt", "server/", "models/"}
    assert "HEALTHCHECK" in ops and "curl" not in dict(rows)["HEALTHCHECK"]
    assert exec_form(dict(rows)["CMD"]) == ["python", "-m", "server", "front"]
    assert any(op == "RUN" and "apt-get install" in rest and " nginx" in rest for op, rest in rows)
    ignore = (ROOT / ".dockerignore").read_text().split()
    assert ignore[ignore.index("*") + 1:][:3] == ["!server/", "!models/", "!requirements-serve.txt"]


@pytest.mark.slow
@pytest.mark.skipif(not SHIPPED.exists(), reason="needs the shipped model bundle in models/")
@pytest.mark.skipif(not shutil.which("nginx"), reason="tests/run.sh installs Debian's nginx, as the image does")
def test_replay_recipe(tmp_path):
    rows = instructions(ROOT / "Dockerfile")
    app = tmp_path / "app"
    app.mkdir()
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    bin_dir = venv / "bin"
    env = {"PATH": f"{bin_dir}:/usr/bin:/bin", "HOME": str(tmp_path)}
    workdir = None
    for op, rest in rows:
        if op == "WORKDIR":
            workdir = rest
        elif op == "ENV":
            for pair in shlex.split(rest):
                key, _, value = pair.partition("=")
                env[key] = value.replace(workdir, str(app)) if workdir else value
        elif op == "COPY":
            src, _ = rest.split()
            (shutil.copytree if (ROOT / src).is_dir() else shutil.copy)(ROOT / src, app / src.rstrip("/"))
        elif op == "RUN" and rest.startswith("pip install"):
            subprocess.run(shlex.split(rest), cwd=app, env=env, check=True, timeout=600)
        elif op == "RUN" and rest.startswith("chmod"):
            subprocess.run(shlex.split(rest.replace(workdir, str(app))), check=True)
    assert not any(os.access(p, os.W_OK) and p.stat().st_mode & 0o222 for p in (app / "models").iterdir())
    freeze = subprocess.run([bin_dir / "pip", "freeze"], capture_output=True, text=True, env=env).stdout.lower()
    assert "torch" not in freeze, "the kiosk image must not install torch"

    port = free_port()
    env.update(FRONT_BIND=f"127.0.0.1:{port}", BIND=f"127.0.0.1:{free_port()}")
    cmd = exec_form(dict(rows)["CMD"])
    server = subprocess.Popen(cmd, cwd=app, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        health = exec_form(dict(rows)["HEALTHCHECK"].split("CMD", 1)[1].strip())
        deadline = time.time() + 30
        while subprocess.run(health, env=env, capture_output=True).returncode != 0:
            assert server.poll() is None, server.stdout.read().decode()
            assert time.time() < deadline, "HEALTHCHECK never passed"
            time.sleep(0.3)
        right = 0
        for path in SAMPLES:
            r = requests.post(f"http://127.0.0.1:{port}/v1/classify", data=path.read_bytes(),
                              headers={"Content-Type": "image/jpeg"}, timeout=10)
            assert r.status_code == 200, r.text
            right += r.json()["label"] == path.stem.rstrip("0123456789")
        floor = fewest_right(len(SAMPLES), for_this_cpu(load_bundle(SHIPPED)).metrics["test"]["accuracy"])
        assert right >= floor, f"only {right}/{len(SAMPLES)} sample photos classified correctly"
    finally:
        server.terminate()
        server.wait(timeout=30)
