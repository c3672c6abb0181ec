"""DVC stages `cache` and `cache_prompts`: encode every validated row (and, separately, the sample prompts) once
with the family's frozen encoders, so training loads only the models the loss needs and experiments that change
only training params reuse the encoding. With cache.enabled false the outputs only say so.

Usage: python stages/cache.py data|prompts"""
import os
import sys

from _layout import VALIDATED_METADATA
from diffsynth import cache
from diffsynth.config import load_params
from diffsynth.encoding import build_data_cache, build_prompt_cache
from diffsynth.errors import run_main


def main() -> int:
    argv = [a for a in sys.argv[1:] if a != "--debug"]
    if len(argv) != 1 or argv[0] not in ("data", "prompts"):
        print("usage: python stages/cache.py data|prompts", file=sys.stderr)
        return 2
    which = argv[0]
    os.environ["DIFFSYNTH_SKIP_DOWNLOAD"] = "true"  # the models stage fetched and pinned every file
    config = load_params()
    out = config.cache.data_dir if which == "data" else config.cache.prompts_dir
    if not config.cache.enabled:
        cache.write_disabled(out, which)
        print(f"[cache] cache.enabled is false: training encodes online ({out} left empty)")
        return 0
    if which == "data":
        index = build_data_cache(config, str(VALIDATED_METADATA), out)
        size = sum(s["bytes"] for s in index["shards"])
        print(f"[cache] {index['rows']} rows encoded: {len(index['shards'])} shard(s), {size / 1e6:.1f} MB -> {out}")
    else:
        index = build_prompt_cache(config, str(VALIDATED_METADATA), out)
        print(f"[cache] {len(index['samples'])} sample prompt(s) encoded -> {out}")
    return 0


if __name__ == "__main__":
    sys.exit(run_main(main, sys.argv[1:]))  # known errors: one line, no traceback
