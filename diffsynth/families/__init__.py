"""Model families: one folder per family (``families/<name>/``), each a package holding everything the family is
(see ``families/README.md``). Importing this package imports every family folder; each registers itself with one
``register(...)`` line in its own ``__init__.py``, so adding a family is adding its folder.

Everything outside this package asks the registry: :func:`spec_for` (the family class a config trains, variants
resolved), :func:`get_spec` (by name, alias or tiny-twin name), :func:`all_specs`.
"""
from __future__ import annotations

import importlib
import pkgutil

from .base import DataRules, Family, load_components
from .registry import (UnknownFamilyError, all_specs, check_extra_inputs, default_family, get_spec, select_variant,
                       spec_for, split_inputs)

# every sub-package is a family folder
FAMILY_PACKAGES = tuple(sorted(m.name for m in pkgutil.iter_modules(__path__) if m.ispkg))
for _name in FAMILY_PACKAGES:
    importlib.import_module(f"{__name__}.{_name}")

__all__ = ["Family", "load_components", "DataRules", "UnknownFamilyError", "all_specs", "check_extra_inputs",
           "default_family", "get_spec", "select_variant", "spec_for", "split_inputs", "FAMILY_PACKAGES"]
