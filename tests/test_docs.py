"""The README's settings table is Config, field for field and default for default."""

import re
from dataclasses import fields
from pathlib import Path

from server.config import ROOT, Config


def readme_settings() -> dict[str, str]:
    text = (ROOT / "README.md").read_text()
    section = text.split("## Settings", 1)[1].split("\n## ", 1)[0]
    return {m[1]: m[2].strip() for m in re.finditer(r"^\| `([A-Z_]+)` \| ([^|]+) \|", section, re.M)}


def shown(value) -> str:
    if isinstance(value, bool):
        return str(int(value))
    if isinstance(value, Path):
        return f"`{value.relative_to(ROOT)}`"
    if isinstance(value, str):
        return f"`{value}`" if value else "empty"
    return str(value)


def test_settings_table_is_config():
    table = readme_settings()
    config = {f.name.upper(): shown(f.default) for f in fields(Config)}
    assert list(table) == list(config), set(table) ^ set(config)
    assert table == config
