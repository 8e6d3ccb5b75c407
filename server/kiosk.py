"""The kiosk page's station settings: which bin each class goes to (name, colour, icon)
and the words on the screen. A station overrides any of it with KIOSK_CONFIG (a JSON
file); the page gets them inlined, so it stays one offline, self-contained file."""

from __future__ import annotations

import copy
import json
import re
from pathlib import Path
from typing import Any

ICONS = frozenset({"paper", "bottle", "can", "trash"})
COLOUR = re.compile(r"^#[0-9a-fA-F]{6}$")
BLUE = {"name": "Paper & cardboard", "colour": "#1d4ed8", "ink": "#ffffff", "icon": "paper"}
YELLOW = {"name": "Plastic & metal", "colour": "#facc15", "ink": "#1f2937", "icon": "can"}
DEFAULT: dict[str, Any] = {
    "bins": {
        "cardboard": BLUE,
        "paper": BLUE,
        "glass": {"name": "Glass", "colour": "#15803d", "ink": "#ffffff", "icon": "bottle"},
        "metal": YELLOW,
        "plastic": YELLOW,
        "trash": {"name": "General waste", "colour": "#374151", "ink": "#ffffff", "icon": "trash"},
    },
    "text": {
        "title": "EcoSort",
        "idle": "Hold one item up to the camera",
        "sort": "Sort this item",
        "next": "Next item",
        "pick": "Choose a photo",
        "working": "Looking…",
        "put_in": "Put it in",
        "not_sure": "Not sure — please ask staff",
        "not_sure_hint": "Keep the item until someone helps you.",
        "nothing": "Nothing there",
        "nothing_hint": "Hold the item closer, in the middle of the picture.",
        "error": "Something went wrong",
        "error_hint": "Please try again.",
        "no_camera": "No camera here: choose a photo instead.",
    },
    # Under this confidence the top class is little better than a guess among the six:
    # the frame most likely shows no object (the model's no-object training pushes those
    # towards a uniform answer). Set where no val picture of the shipped bundle falls,
    # while most of the suite's empty frames do. Between it and the bundle's threshold:
    # not sure.
    "nothing_below": 0.3,
    "idle_after_s": 20,
}


class KioskConfigError(ValueError):
    pass


def load(path: str | Path | None, classes: tuple[str, ...] | list[str]) -> dict[str, Any]:
    """Defaults, overridden key by key by the station's file; checked against the bundle."""
    config = copy.deepcopy(DEFAULT)
    if path:
        try:
            override = json.loads(Path(path).read_text())
        except (OSError, ValueError) as exc:
            raise KioskConfigError(f"KIOSK_CONFIG {path}: {exc}") from None
        if not isinstance(override, dict):
            raise KioskConfigError(f"KIOSK_CONFIG {path}: not a JSON object")
        for key in ("bins", "text"):
            config[key].update(override.get(key, {}))
        for key in ("nothing_below", "idle_after_s"):
            config[key] = override.get(key, config[key])
    check(config, classes)
    return config


def check(config: dict[str, Any], classes) -> None:
    missing = set(classes) - set(config["bins"])
    if missing:
        raise KioskConfigError(f"KIOSK_CONFIG: no bin for {', '.join(sorted(missing))}")
    for label, spec in config["bins"].items():
        ok = (isinstance(spec, dict) and isinstance(spec.get("name"), str) and spec["name"]
              and all(COLOUR.match(str(spec.get(k, ""))) for k in ("colour", "ink")) and spec.get("icon") in ICONS)
        if not ok:
            raise KioskConfigError(f"KIOSK_CONFIG: bin for {label!r} needs a name, colour and ink (#rrggbb) "
                                   f"and an icon in {sorted(ICONS)}")
    if not all(isinstance(v, str) for v in config["text"].values()):
        raise KioskConfigError("KIOSK_CONFIG: every text must be a string")
    if not (isinstance(config["nothing_below"], int | float) and 0 <= config["nothing_below"] < 1):
        raise KioskConfigError("KIOSK_CONFIG: nothing_below must be a number in [0, 1)")
    if not (isinstance(config["idle_after_s"], int | float) and config["idle_after_s"] > 0):
        raise KioskConfigError("KIOSK_CONFIG: idle_after_s must be a positive number")


def render(page: bytes, config: dict[str, Any]) -> bytes:
    """The page with the settings inlined (`</` escaped: nothing can close the script)."""
    data = json.dumps(config, ensure_ascii=True).replace("</", "<\\/")
    return page.replace(b"/*KIOSK*/{}", data.encode())
