"""``nodehost new NAME``: a plugin package that installs, lists, runs and passes its tests.

The templates are package data (``nodehost/templates/plugin``): file and folder names
``__package__`` and ``__module__`` and ``{{key}}`` in the text are filled in; ``.tmpl`` is
dropped. What comes out::

    NAME/
    ├── pyproject.toml            entry point in group "nodehost", manifests as package data
    ├── README.md
    ├── PACKAGE/{__init__,plugin,MODULE}.py, py.typed, manifests/MODULE.yaml
    ├── pipelines/sample.yaml     TextSource → NODE → TextSink
    └── tests/                    NodeHarness in-process, and a real session
"""

from __future__ import annotations

import keyword
import re
from dataclasses import dataclass
from importlib.resources import files
from importlib.resources.abc import Traversable
from pathlib import Path

from nodehost.errors import ScaffoldError as ScaffoldError

TEMPLATE = "templates/plugin"
SUFFIX = ".tmpl"


@dataclass(frozen=True)
class Names:
    dist: str  # "textstats", "my-nodes"
    package: str  # "textstats", "my_nodes"
    node_type: str  # "WordCount"
    module: str  # "word_count"
    nodehost_req: str  # "nodehost>=0.1,<0.2"

    def fill(self, text: str) -> str:
        for key, value in vars(self).items():
            text = text.replace("{{" + key + "}}", value)
        return text


def nodehost_requirement(version: str) -> str:
    """``nodehost>=0.1,<0.2`` for 0.1.x: the same minor series, where the API holds."""
    major, minor = (int(p) for p in re.findall(r"\d+", version)[:2])
    return f"nodehost>={major}.{minor},<{major}.{minor + 1}"


def names(name: str, node_type: str = "WordCount") -> Names:
    import nodehost

    if not re.fullmatch(r"[A-Za-z][A-Za-z0-9._-]*[A-Za-z0-9]|[A-Za-z]", name):
        raise ScaffoldError(f"NAME {name!r}: use letters, digits, '-', '_' or '.', starting "
                            "with a letter (it becomes the distribution name)")
    package = re.sub(r"[-.]+", "_", name).lower()
    if keyword.iskeyword(package) or package in ("nodehost", "test", "tests"):
        raise ScaffoldError(f"NAME {name!r}: the package would be called {package!r}, which "
                            "Python or nodehost already uses; choose another name")
    if not re.fullmatch(r"[A-Z][A-Za-z0-9]*", node_type):
        raise ScaffoldError(f"--node {node_type!r}: a node type is CamelCase, e.g. WordCount")
    module = re.sub(r"(?<=[a-z0-9])(?=[A-Z])", "_", node_type).lower()
    return Names(name, package, node_type, module, nodehost_requirement(nodehost.__version__))


def _walk(folder: Traversable, rel: Path) -> list[tuple[Path, Traversable]]:
    out: list[tuple[Path, Traversable]] = []
    for item in sorted(folder.iterdir(), key=lambda p: p.name):
        if item.is_dir():
            if item.name != "__pycache__":
                out += _walk(item, rel / item.name)
        elif item.name.endswith(SUFFIX):
            out.append((rel / item.name[:-len(SUFFIX)], item))
    return out


def create(target: Path, name: str, node_type: str = "WordCount") -> list[Path]:
    """Write the plugin package into ``target`` (absent or empty); return the files."""
    n = names(name, node_type)
    if target.exists() and (not target.is_dir() or any(target.iterdir())):
        raise ScaffoldError(f"{target} already exists and is not empty; choose another "
                            "folder (--dir) or remove it")
    written: list[Path] = []
    for rel, item in _walk(files("nodehost") / TEMPLATE, Path()):
        path = target / Path(*(part.replace("__package__", n.package)
                               .replace("__module__", n.module) for part in rel.parts))
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(n.fill(item.read_text(encoding="utf-8")), encoding="utf-8")
        written.append(path)
    return written
