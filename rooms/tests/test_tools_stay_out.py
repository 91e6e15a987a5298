"""rooms/tools/ holds tools that drive Parley from outside (the scripted call participant): no
production module may import them, directly or through another module."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

CHECK = """
import importlib, pkgutil, sys
import django
django.setup()
production = []
for app in ("config", "accounts", "billing", "rooms", "moderation"):
    package = importlib.import_module(app)
    for module in pkgutil.walk_packages(package.__path__, app + "."):
        parts = module.name.split(".")
        if {"tests", "tools", "migrations"} & set(parts):
            continue
        importlib.import_module(module.name)
        production.append(module.name)
tools = sorted(name for name in sys.modules if name.startswith("rooms.tools."))
print(len(production), tools)
"""


def test_no_production_module_imports_the_tools() -> None:
    done = subprocess.run(  # noqa: S603 - our own interpreter and a fixed script
        [sys.executable, "-c", CHECK], cwd=ROOT, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    count, tools = done.stdout.strip().split(" ", 1)
    assert int(count) > 50  # the walk did reach the apps' modules
    assert tools == "[]"
