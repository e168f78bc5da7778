"""Every package directory ships: a wheel only holds the packages pyproject lists."""

from __future__ import annotations

import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_every_package_directory_is_listed_in_pyproject() -> None:
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    roots = {"leadflow": ROOT / "src" / "leadflow"}
    roots.update({name: ROOT / path for name, path in config["package-dir"].items() if name})
    found = set()
    for name, root in roots.items():
        for init in root.rglob("__init__.py"):
            if "__pycache__" in init.parts:
                continue
            found.add(".".join((name, *init.parent.relative_to(root).parts)))
    assert found == set(config["packages"])
