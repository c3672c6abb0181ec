"""What training iterates: the encoder cache's rows (and its encoded sample prompts) or the metadata's, and every
index's shape bucket."""
from __future__ import annotations

from .. import cache
from ..config import Config
from ..data.buckets import row_key
from ..data.dataset import metadata_dataset
from ..data.metadata import read_metadata
from ..data.recipe import data_recipe
from ..errors import ConfigError


def open_training_data(config: Config, family, cache_dir: str | None, expected: dict | None,
                       metadata: str | None) -> tuple[object, dict | None, list[dict]]:
    """(dataset, encoded sample prompts or None, metadata rows). The rows are the metadata's where there are some
    (also when training from the pipeline's cache), for the resume fingerprint and the MLflow dataset; DiffSynth's
    cache alone has only its file names."""
    prompt_inputs = None
    if cache_dir:
        dataset = cache.open_cached_dataset(cache_dir, config.dataset.dataset_repeat, expected,
                                            family.diffsynth_cache_keys, recipe=data_recipe(config))
        if config.cache.enabled and config.train.task != "sft:train":
            prompt_inputs = cache.read_prompt_cache(config.cache.prompts_dir,
                                                    cache.fingerprint(config, None, what="prompts"))
    elif not metadata:
        raise ConfigError("dataset.dataset_metadata_path is empty: set it, or train from an encoder cache "
                          "(--task sft:train with --dataset_base_path <its folder>)")
    else:
        dataset = metadata_dataset(config, metadata, family.data_rules(config))
    return dataset, prompt_inputs, read_metadata(metadata) if metadata else dataset.rows


def bucket_keys(dataset, batch_size: int) -> list[str]:
    """Every dataset index's shape bucket. A batch of one needs no bucket: all items share one key, so no file is
    opened and the order is today's."""
    if batch_size == 1:
        keys = ["any"]
    elif hasattr(dataset, "bucket_keys"):  # the encoder cache: the shapes of the cached tensors
        keys = dataset.bucket_keys()
    else:
        keys = [row_key(row, dataset.base_path, dataset.data_file_keys, dataset.video_keys, dataset.rules)
                for row in dataset.rows]
    return [keys[i % len(keys)] for i in range(len(dataset))]
