"""DiffSynth-Studio's example recipes as a table (``upstream_recipes.yaml``), and what it decides here.

The table (written by ``tests/upstream/read_recipes.py`` from one upstream commit) lists, per DiffSynth family
(the ``examples/<family>/`` folder whose ``train.py`` runs it), the model ids its recipes name and every recipe
with its flags as upstream writes them. It decides two things:

* which family a command line trains (:func:`recognise`): the family comes from the model ids. An id must be
  one of OUR families' (the specs' ``model_id_patterns``); an id of a DiffSynth family we do not train is
  refused in one line that names the id, that family and ours. Nothing falls back to a default family unless no
  model is named at all.
* how much of DiffSynth we cover (:func:`coverage`, ``diffsynth families``): per DiffSynth family, the recipes
  with a preset, the recipes that run from their flags, and the recipes refused and why.

Our family <-> DiffSynth family: a spec whose name or alias is a DiffSynth family name is that family
(``wan`` has the alias ``wanvideo``); a variant is its base's family.
"""
from __future__ import annotations

import argparse
import functools
import json
import re
from pathlib import Path

import yaml

from ..errors import ConfigError
from .registry import all_specs, get_spec, normalise

TABLE_PATH = Path(__file__).with_name("upstream_recipes.yaml")
TINY_NAMESPACE = "diffsynth-tiny"  # models/model_config.py's namespace of the tiny twins (same repo names)
# a preset names the recipe it reproduces in its header comment ("DiffSynth-Studio's examples/.../X.sh")
PRESET_RECIPE = re.compile(r"examples/[\w.-]+/model_training/[\w./-]+?\.sh")


class ForeignModelError(ConfigError):
    """A named model none of our families loads; ``diffsynth_family`` is its DiffSynth family where known."""

    def __init__(self, message: str, model_id: str, diffsynth_family: str | None):
        super().__init__(message)
        self.model_id = model_id
        self.diffsynth_family = diffsynth_family


@functools.cache
def table(path: str | None = None) -> dict:
    """The recipe table (``upstream_recipes.yaml``); libyaml's loader when present (the file is large)."""
    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
    with open(path or TABLE_PATH, encoding="utf-8") as f:
        return yaml.load(f, Loader=loader)


def _ids_by_name() -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for model_id in table()["model_ids"]:
        out.setdefault(model_id.split("/", 1)[-1].lower(), []).append(model_id)
    return out


def upstream_ids(model_id: str) -> list[str]:
    """The table's ids ``model_id`` stands for: itself, or for a tiny twin (``diffsynth-tiny/Qwen-Image``) the
    real ids of the same repository name."""
    known = {k.lower(): k for k in table()["model_ids"]}
    if model_id.lower() in known:
        return [known[model_id.lower()]]
    namespace, _, name = model_id.partition("/")
    if namespace.lower() == TINY_NAMESPACE and name:
        return _ids_by_name().get(name.lower(), [])
    return []


def diffsynth_families_of(model_id: str) -> list[str]:
    """The DiffSynth families whose recipes name ``model_id`` (empty: the table does not know it)."""
    fams: list[str] = []
    for real in upstream_ids(model_id):
        fams += [f for f in table()["model_ids"][real] if f not in fams]
    return fams


def diffsynth_family(our_family: str) -> str | None:
    """The DiffSynth family (``examples/<name>/``) one of our families or variants trains, or None."""
    spec = get_spec(our_family)
    if spec.variant_of:
        spec = get_spec(spec.variant_of)
    upstream = {normalise(name): name for name in table()["families"]}
    for name in (spec.name, *spec.aliases):
        if normalise(name) in upstream:
            return upstream[normalise(name)]
    return None


def our_families() -> list[str]:
    return sorted(s.name for s in all_specs())


def our_families_of(text: str) -> set[str]:
    """Our families whose model-id patterns occur in ``text`` (an id, a tiny twin's real id, or a file path)."""
    candidates = [text, *upstream_ids(text)]
    return {s.name for s in all_specs() for c in candidates
            if any(p.lower() in c.lower() for p in vars(s).get("model_id_patterns", ()))}


def split_model_ids(value) -> list[str]:
    """The model ids of a ``--model_id_with_origin_paths`` value (``id:origin,...``; a list works too)."""
    entries = value if isinstance(value, (list, tuple)) else str(value or "").split(",")
    ids: list[str] = []
    for entry in entries:
        model_id = str(entry).strip().split(":", 1)[0].strip()
        if model_id and model_id not in ids:
            ids.append(model_id)
    return ids


def split_model_paths(value) -> list[str]:
    """The files of a ``--model_paths`` value: a JSON list (items may be shard lists), a list, or a comma list."""
    if value is None or value == "":
        return []
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except ValueError:
            value = value.split(",")
    if isinstance(value, str):
        value = [value]
    out: list[str] = []
    for item in value:
        out += split_model_paths(item) if isinstance(item, (list, tuple)) else [str(item).strip()]
    return [p for p in out if p]


def _supported() -> str:
    return ", ".join(our_families())


def _refuse(model_id: str, fams: list[str]) -> ForeignModelError:
    if not fams:
        return ForeignModelError(
            f"model id {model_id!r} is none of our families' models and not one DiffSynth's example recipes use "
            f"(table at DiffSynth-Studio {table()['commit'][:12]}); we train: {_supported()}. A model of your own: "
            f"name its family with --family (params.yaml model.family).", model_id, None)
    ours = [f for f in fams if any(diffsynth_family(o) == f for o in our_families())]
    what = "/".join(fams)
    if ours:  # a family we have, a model of it we do not load (a ControlNet, an adapter, another base)
        why = [text for spec in all_specs() if diffsynth_family(spec.name) in ours
               for part, text in vars(spec).get("refused_models", {}).items() if part.lower() in model_id.lower()]
        if why:
            return ForeignModelError(f"model id {model_id!r} belongs to DiffSynth's {what} recipes: {why[0]}",
                                     model_id, fams[0] if len(fams) == 1 else what)
        return ForeignModelError(
            f"model id {model_id!r} belongs to DiffSynth's {what} recipes, but none of our families loads it; "
            f"we train: {_supported()}. Remove it, or use a recipe of ours (`diffsynth families`).",
            model_id, fams[0] if len(fams) == 1 else what)
    return ForeignModelError(
        f"model id {model_id!r} belongs to DiffSynth's {what} family "
        f"(examples/{fams[0]}/model_training/train.py), which we do not train yet; we train: {_supported()}.",
        model_id, fams[0] if len(fams) == 1 else what)


def recognise(model_id_with_origin_paths=None, model_paths=None) -> str | None:
    """Our (base) family for the named models, None when no model is named at all; otherwise raises a
    one-line :class:`ConfigError` (:class:`ForeignModelError` for a model none of our families loads)."""
    ids = split_model_ids(model_id_with_origin_paths)
    paths = split_model_paths(model_paths)
    if not ids and not paths:
        return None
    # the DiffSynth family the ids have in common: it names the recipe's family when one id is not ours
    shared: list[str] | None = None
    for model_id in ids:
        fams = diffsynth_families_of(model_id)
        if fams:
            shared = fams if shared is None else [f for f in shared if f in fams]
    votes: list[tuple[str, set[str]]] = []
    for model_id in ids:
        ours = our_families_of(model_id)
        if not ours:
            own = diffsynth_families_of(model_id)
            # the family all ids share is the recipe's (Qwen3-VL-4B with Krea-2: krea2, not lingbot_video)
            raise _refuse(model_id, (shared or own) if own else [])
        votes.append((model_id, ours))
    votes += [(p, our_families_of(p)) for p in paths if our_families_of(p)]  # a local file may say nothing
    if not votes:
        raise ConfigError(f"--model_paths {', '.join(paths)}: no file name says which family it is; name it with "
                          f"--family (params.yaml model.family), one of {_supported()}.")
    common = set.intersection(*(fams for _, fams in votes))
    if len(common) != 1:
        named = "; ".join(f"{name} -> {'/'.join(sorted(fams))}" for name, fams in votes)
        raise ConfigError(f"the named models are of {'different' if not common else 'several'} families ({named}); "
                          f"name models of one family, or choose it with --family (one of {_supported()}).")
    family = common.pop()
    # never read a recipe as another family: the table's family for these ids must be ours
    if shared and diffsynth_family(family) not in shared:
        culprit = next(i for i in ids if diffsynth_families_of(i))
        raise _refuse(culprit, shared)
    return family


def recognise_argv(argv: list[str]) -> str | None:
    """:func:`recognise` on a DiffSynth command line before its other flags are judged (an unknown flag or
    extra input of another family is then reported as that family's). None where ``--family`` or ``--params``
    decides, or no model is named."""
    parser = argparse.ArgumentParser(add_help=False, allow_abbrev=False)
    for flag in ("family", "params", "model_id_with_origin_paths", "model_paths"):
        parser.add_argument(f"--{flag}", default=None)
    known, _ = parser.parse_known_args(argv)
    if known.family or known.params:
        return None
    return recognise(known.model_id_with_origin_paths, known.model_paths)


# --- coverage: which upstream recipes we run, and how ------------------------------------------------------


def refused_by_name(recipe: dict) -> str | None:
    """The one line a family of ours declares for an upstream recipe it refuses by name (``refused_recipes``:
    template models, adapters, distillation schemes we do not train), or None."""
    for spec in all_specs():
        if spec.variant_of or diffsynth_family(spec.name) != recipe["family"]:
            continue
        for pattern, why in vars(spec).get("refused_recipes", {}).items():
            if re.search(pattern, recipe["path"]):
                return why
    return None
