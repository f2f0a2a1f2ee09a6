"""Package faces whose names are imported on first use (PEP 562's module `__getattr__`).

latbench's own face and the simulator's both name more than a process usually needs: a worker
imports `latbench` and, through the spec, `latbench.sim`, yet runs neither a benchmark nor the
simulator's server. So a face lists where each name lives and imports that module only when the
name is first read; the value is then kept in the package, so later reads skip the lookup.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Iterable, Mapping
from typing import Any


def lazy_face(
    package: str, namespace: dict[str, Any], homes: Mapping[str, Iterable[str]]
) -> tuple[Callable[[str], Any], Callable[[], list[str]]]:
    """`__getattr__` and `__dir__` for `package`, whose globals are `namespace`; `homes` maps
    each defining module to the names it gives the face."""
    home = {name: module for module, names in homes.items() for name in names}

    def getattr_(name: str) -> Any:
        module = home.get(name)
        if module is None:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(module), name)
        namespace[name] = value
        return value

    def dir_() -> list[str]:
        return sorted(namespace["__all__"])

    return getattr_, dir_
