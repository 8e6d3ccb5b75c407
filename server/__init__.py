"""EcoSort Edge inference server: `gunicorn -c server/gunicorn.conf.py 'server:create_app()'`.

Never imports torch: the kiosk image installs requirements-serve.txt only. Importing the
package is cheap on purpose: gunicorn's master reads `server.config` and must not load
onnxruntime before it forks (its static state is not fork-safe: workers aborted at exit).
"""

from __future__ import annotations

from typing import Any


def create_app(test_config: dict[str, Any] | None = None):
    """Build the Flask app (see server/app.py); called once per worker, after the fork."""
    from .app import create_app as build

    return build(test_config)
