"""A minimal PEP 517 build backend for the fixture plugin projects.

Building with setuptools needs setuptools ≥ 70.1 (or ``wheel``) in the test environment, or
network access for build isolation; neither is guaranteed in a fresh tox venv. This backend
has no dependencies: it reads ``[project]`` (name, version, entry points) from
``pyproject.toml`` and packs every top-level package of the project, data files included, into
a wheel. pip installs that wheel like any other, so the host finds the plugins through
``importlib.metadata`` exactly as it finds real ones.

Usage: ``PYTHONPATH=tests/fixture_plugins/_backend pip install --no-build-isolation ...``.
"""

from __future__ import annotations

import base64
import hashlib
import tomllib
import zipfile
from pathlib import Path
from typing import Any

WHEEL_TAG = "py3-none-any"


def get_requires_for_build_wheel(config_settings: Any = None) -> list[str]:
    return []


def build_wheel(
    wheel_directory: str, config_settings: Any = None, metadata_directory: Any = None
) -> str:
    root = Path.cwd()
    project = tomllib.loads((root / "pyproject.toml").read_text())["project"]
    name, version = project["name"], project["version"]
    stem = f"{name.replace('-', '_')}-{version}"
    dist_info = f"{stem}.dist-info"
    files: dict[str, bytes] = {}
    for package in sorted(p.parent for p in root.glob("*/__init__.py")):
        for path in sorted(package.rglob("*")):
            if path.is_file() and "__pycache__" not in path.parts:
                files[path.relative_to(root).as_posix()] = path.read_bytes()
    files[f"{dist_info}/METADATA"] = (
        f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n"
    ).encode()
    files[f"{dist_info}/WHEEL"] = (
        f"Wheel-Version: 1.0\nGenerator: fixture_backend\nRoot-Is-Purelib: true\n"
        f"Tag: {WHEEL_TAG}\n"
    ).encode()
    groups = project.get("entry-points", {})
    files[f"{dist_info}/entry_points.txt"] = "".join(
        f"[{group}]\n" + "".join(f"{k} = {v}\n" for k, v in eps.items()) + "\n"
        for group, eps in groups.items()
    ).encode()
    record = [f"{path},sha256={_digest(data)},{len(data)}" for path, data in files.items()]
    record.append(f"{dist_info}/RECORD,,")
    files[f"{dist_info}/RECORD"] = ("\n".join(record) + "\n").encode()
    filename = f"{stem}-{WHEEL_TAG}.whl"
    with zipfile.ZipFile(Path(wheel_directory) / filename, "w") as wheel:
        for path, data in files.items():
            wheel.writestr(path, data)
    return filename


def _digest(data: bytes) -> str:
    return base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
