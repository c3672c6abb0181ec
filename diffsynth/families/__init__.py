"""Model families: one module per family, each registering ONE :class:`FamilySpec` (see ``spec.py``).

Everything outside this package asks the spec: :func:`spec_for` (the spec a config trains, variants
resolved), :func:`get_spec` (by name, alias or tiny-preset name), :func:`all_specs`.
"""
from __future__ import annotations

from .base import Pipeline, load_components
from .spec import (DataRules, FamilySpec, UnknownFamilyError, all_specs, check_extra_inputs, get_spec,
                   infer_family, select_variant, spec_for, split_inputs)

__all__ = ["Pipeline", "load_components", "DataRules", "FamilySpec", "UnknownFamilyError", "all_specs",
           "check_extra_inputs", "get_spec", "infer_family", "select_variant", "spec_for", "split_inputs"]
