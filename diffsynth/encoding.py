"""Build the encoder cache: load only the family's encoders (role "encode": text/image encoders and the VAE
encoder; the DiT as a meta-device architecture for its config) and encode every validated row once, and the
sample prompts. Used by the cache stage and by ``--task sft:data_process``."""
from __future__ import annotations

from pathlib import Path

import torch

from . import cache
from .config import Config, torch_dtype
from .errors import ConfigError
from .data.dataset import UnifiedDataset, metadata_dataset
from .data.masks import attach
from .families import spec_for
from .progress import progress as progress_bar
from .sampling import load_images, sample_entries



def encoding_dataset(config: Config, metadata_path: str) -> UnifiedDataset:
    """The validated rows, each once (no ``dataset_repeat``: repeats re-read the cache, never re-encode)."""
    return metadata_dataset(config, metadata_path, spec_for(config).data_rules(config), repeat=1, each_row_once=True)


def empty_prompt_inputs(encode, item: dict) -> dict:
    """The inputs that change when ``item``'s prompt is replaced by the empty prompt, as the empty prompt gives
    them (the prompt embeddings, whatever the family calls them): caption dropout swaps these in. Encoded once."""
    with torch.no_grad():
        own, empty = encode(item), encode({**item, "prompt": ""})

    def same(a, b):
        if isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor):
            return a.shape == b.shape and torch.equal(a, b)
        if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
            return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b))
        return False

    return {k: v for k, v in empty.items() if k != "latents" and not same(own.get(k), v)}


def cache_encoder(pipe):
    """What the cache stores per row: the family's encoding plus the row's loss mask (not its weight, a training
    param)."""
    return lambda item: attach(pipe.encode(item), {k: v for k, v in item.items() if k != "loss_weight"})


def load_encoders(config: Config, device: str | torch.device = "cpu"):
    return spec_for(config).load_pipeline(config, torch_dtype(config.model.torch_dtype), device, "encode")


def build_data_cache(config: Config, metadata_path: str, out_dir: str | Path, pipe=None,
                     progress=progress_bar) -> dict:
    """Encode every validated row into ``out_dir``; returns the index."""
    if not metadata_path:
        raise ConfigError("building the encoder cache needs dataset.dataset_metadata_path (the rows to encode)")
    pipe = pipe or load_encoders(config)
    dataset = encoding_dataset(config, metadata_path)
    items = ((i, dataset[i]) for i in range(len(dataset.rows)))
    null_prompt = None
    if dataset.recipe.uses_dropout:  # caption dropout: the empty prompt, encoded once
        first = next((i for i, r in enumerate(dataset.rows) if str(r.get("prompt") or "").strip()), 0)
        null_prompt = empty_prompt_inputs(pipe.encode, dataset[first])
    return cache.write_cache(out_dir, cache_encoder(pipe), items, cache.fingerprint(config, metadata_path),
                             total=len(dataset.rows), progress=progress, null_prompt=null_prompt)


def build_prompt_cache(config: Config, metadata_path: str | None, out_dir: str | Path, pipe=None) -> dict:
    """The save-point samples' conditioning for every ``sample.prompts`` entry, and its negative prompt's when
    the entry is guided (cfg_scale != 1), with the entry's images. Families whose samples are otherwise
    conditioned on the dataset (Wan image-to-video: the first frame; Qwen-Image-Edit: the edit image) see the
    first row first, as online training does (the validation rows are encoded before the first sample)."""
    pipe = pipe or load_encoders(config)
    if metadata_path:
        pipe.encode(encoding_dataset(config, metadata_path)[0])
    s = config.sample

    def items():
        for entry in sample_entries(config, type(pipe)):
            images = load_images(config, entry, type(pipe))
            extra = {} if images is None else {"images": images}

            def encode(prompt, extra=extra):
                return lambda: pipe.sample_inputs(prompt, s.height, s.width, s.num_frames, **extra)
            yield entry.key, entry.prompt, encode(entry.prompt)
            if entry.guided:
                yield entry.negative_key, entry.negative_prompt, encode(entry.negative_prompt)

    return cache.write_prompt_cache(out_dir, items(), cache.fingerprint(config, None, what="prompts"))
