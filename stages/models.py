"""DVC stage `models`: write the tiny preset (if model.tiny_preset is set), resolve every model entry through
the same fetch code a real ModelScope id uses, and write the manifest (files, sizes, sha256).

The model bytes live under $DIFFSYNTH_MODEL_BASE_PATH (default <project>/models), not in the DVC cache."""
import os
import sys

from _layout import MODEL_MANIFEST
from diffsynth.config import load_params
from diffsynth.errors import ConfigError
from diffsynth.errors import run_main
from diffsynth.families import spec_for
from diffsynth.files import project_root, write_json
from diffsynth.models.manifest import build_manifest
from diffsynth.models.model_config import TINY_MODEL_NAMESPACE, fetch, model_base_path, parse_model_configs, parse_path_or_model_id
from diffsynth.models.safetensors_io import read_keys_and_shapes
from diffsynth.models import lpips as lpips_weights
from diffsynth.models.tiny import tiny_preset, write_tiny_model


def main() -> int:
    config = load_params()
    m = config.model
    configs = parse_model_configs(m.model_paths, m.model_id_with_origin_paths)
    if m.tiny_preset:
        model_ids = {c.model_id for c in configs if c.model_id}
        if len(model_ids) != 1:
            raise ConfigError(f"model.tiny_preset needs exactly one model_id in model_id_with_origin_paths, got {model_ids}")
        model_id = model_ids.pop()
        if model_id.split("/")[0] != TINY_MODEL_NAMESPACE:
            raise ConfigError(f"Tiny presets are written under the model id prefix {TINY_MODEL_NAMESPACE}/, not {model_id!r}, "
                            "so a tiny model can never be mistaken for downloaded real weights: use "
                            f"{TINY_MODEL_NAMESPACE}/<name>:<pattern> entries as in presets/tiny/.")
        print(f"[models] writing tiny preset {m.tiny_preset!r} ({tiny_preset(m.tiny_preset)[1]} layout)")
        write_tiny_model(m.tiny_preset, model_base_path() / model_id, seed=config.train.seed)
    entries = {c.source_string: fetch(c).weight_files() for c in configs}
    # a truncated download fails here (headers only, cheap), not minutes later in the train stage
    read_keys_and_shapes([f for files in entries.values() for f in files if str(f).endswith(".safetensors")])
    if config.train.task == lpips_weights.TASK:  # its LPIPS weights, fetched (or for a tiny model, written) here
        lpips = lpips_weights.lpips_entry(m.lpips_path)
        if lpips.model_id and lpips.model_id.split("/")[0] == TINY_MODEL_NAMESPACE:
            lpips_weights.write_tiny_lpips(model_base_path() / lpips.model_id / lpips.origin_file_pattern,
                                           seed=config.train.seed)
        entries[lpips.source_string] = fetch(lpips).weight_files()
    for value in spec_for(config).auxiliary_entries(config).values():
        folder = fetch(parse_path_or_model_id(value, "")).files()[0]
        entries[value] = [os.path.join(folder, f) for f in sorted(os.listdir(folder))]
    manifest = build_manifest(entries, project_root())
    manifest["tiny_preset"] = m.tiny_preset or None
    write_json(MODEL_MANIFEST, manifest)
    print(f"[models] {sum(len(v) for v in entries.values())} files, {manifest['total_size'] / 1e6:.1f} MB -> {MODEL_MANIFEST}")
    return 0


if __name__ == "__main__":
    sys.exit(run_main(main, sys.argv[1:]))  # known errors: one line, no traceback
