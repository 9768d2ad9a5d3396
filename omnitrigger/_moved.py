"""The flat layout's module names, kept importable: `import omnitrigger.recording` gives omnitrigger.io.recording.

Scripts and tests written against the old flat layout (`from omnitrigger.kafka_mock import MockCluster`)
keep working; the name is the new module itself (one module object, so a monkeypatch through either
name is seen through both). New code imports the new names.
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.machinery
import importlib.util
import sys
from types import ModuleType

#: old name -> new name
MOVED = {f"omnitrigger.{name}": f"omnitrigger.io.{name}"
         for name in ("recording", "live_input", "kafka_tools", "kafka_mock", "outputs", "stores", "catalog")}


class _MovedModules(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    def find_spec(self, fullname: str, path, target=None) -> importlib.machinery.ModuleSpec | None:
        return importlib.util.spec_from_loader(fullname, self) if fullname in MOVED else None

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> ModuleType:
        return importlib.import_module(MOVED[spec.name])

    def exec_module(self, module: ModuleType) -> None:
        """Nothing to run: the new module ran when it was imported."""


def install() -> None:
    if not any(isinstance(finder, _MovedModules) for finder in sys.meta_path):
        sys.meta_path.append(_MovedModules())
