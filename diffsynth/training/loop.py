"""The training loop on accelerate, with DiffSynth's semantics (spec §4.1-4.4) plus what DiffSynth lacks:
a seed, full-state resume, a fixed-noise validation loss, sample images at every save point, MLflow."""
from __future__ import annotations

import contextlib
import hashlib
import json
import os
import resource
import shutil
import signal
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
from accelerate import Accelerator
from accelerate.utils import DistributedDataParallelKwargs, gather_object
from safetensors.torch import load_file, save_file
from torch.utils.data import DataLoader

from .. import cache
from ..config import Config, flatten
from ..errors import ConfigError
from ..data.buckets import bucket_stats, row_key
from ..data.dataset import metadata_dataset, split_keys
from ..data.metadata import read_metadata
from ..families import Pipeline, spec_for
from ..errors import DiffSynthError
from ..files import write_json
from ..models.fp8 import enable_fp8, fp8_entries
from ..models.lora_names import opensource_converter, to_diffsynth_checkpoint
from ..models.safetensors_io import read_tensors
from ..progress import progress
from ..tracking import MetricsLog, Tracker
from . import resume
from . import distributed
from . import state as train_state
from .checkpoint import checkpoint_name, save_checkpoint
from .lora import add_lora, fuse_lora, load_lora_checkpoint, parse_target_modules
from .loss import flow_match_loss
from .optim import Schedule, build_optimizer, total_optimizer_steps
from .memory import apply_memory_modes
from .sampler import BucketBatchSampler
from .schedule import FlowMatchSchedule
from .validation import FixedNoiseValidator

DTYPES = {"bfloat16": torch.bfloat16, "float16": torch.float16, "float32": torch.float32}
# Params that may change between an interrupted run and its resume; any other change makes the state invalid.
RESUMABLE_CHANGES = ("train.num_epochs", "train.max_steps", "train.resume", "output.save_steps",
                     "dataset.dataset_num_workers", "tracking.", "sample.", "validation.", "export.")


class TrainingInterrupted(DiffSynthError, RuntimeError):
    """SIGTERM/SIGINT arrived; a resumable state was written. Run again with train.resume: auto."""


def item_list(batch: list) -> list:
    """The DataLoader's collate: the batch's dataset items as they are (the family collates encoded inputs)."""
    return list(batch)


class TrainingModule(torch.nn.Module):
    """Wraps the family pipeline as ``self.pipe`` so parameter names read ``pipe.dit.<...>`` as in DiffSynth."""

    def __init__(self, pipe: Pipeline, schedule: FlowMatchSchedule, generator: torch.Generator,
                 boundaries: tuple[float, float] = (0.0, 1.0), offload_activations: bool = False):
        super().__init__()
        self.pipe = pipe
        self.schedule = schedule
        self.generator = generator
        self.boundaries = boundaries
        self.offload_activations = offload_activations

    def train(self, mode: bool = True) -> "TrainingModule":
        """Train mode for the trained models only: frozen encoders stay in eval mode, as in DiffSynth (T5/UMT5
        have dropout 0.1; in train mode every online encoding would be noised)."""
        super().train(mode)
        for child in self.pipe.children():
            if not any(p.requires_grad for p in child.parameters()):
                child.eval()
        return self

    def encode(self, item: dict) -> dict:
        """The model inputs of one dataset item: encoded now, or read from the encoder cache."""
        if "cached_inputs" in item:
            return to_device(item["cached_inputs"], self.pipe.device)
        return self.pipe.encode(item)

    @property
    def _no_split_modules(self) -> list[str]:
        """Read by accelerate's FSDP transformer-based wrapping: the block classes (diffusers lists them in
        ``_no_split_modules``) of the models being trained, so that each block is its own shard group."""
        names: set[str] = set()
        for child in self.pipe.children():
            if any(p.requires_grad for p in child.parameters()):
                present = {type(m).__name__ for m in child.modules()}
                names |= set(getattr(child, "_no_split_modules", None) or []) & present
        return sorted(names)

    def forward(self, items: list[dict]) -> torch.Tensor:
        """The loss of one batch: the items' dataset rows (one shape bucket); a single item is a batch of one."""
        if isinstance(items, dict):
            items = [items]
        batch = self.pipe.collate([self.encode(item) for item in items])
        ctx = torch.autograd.graph.save_on_cpu() if self.offload_activations else contextlib.nullcontext()
        with ctx:
            return flow_match_loss(self.pipe, self.schedule, batch, self.generator, *self.boundaries)


def to_device(inputs: dict, device) -> dict:
    return {k: [t.to(device) for t in v] if isinstance(v, list) else v.to(device) for k, v in inputs.items()}


def cache_source(config: Config, metadata_path: str | None) -> tuple[str | None, dict | None]:
    """(folder, expected fingerprint) of the encoder cache training reads, or (None, None) to encode online.

    ``--task sft:train`` (DiffSynth's split training) reads ``dataset_base_path``; the pipeline's cache stage
    writes ``cache.data_dir`` and training checks it was built from the same data, resolution and models."""
    if config.train.task == "sft:train":
        return config.dataset.dataset_base_path, {"family": config.model.family,
                                                  "torch_dtype": config.model.torch_dtype}
    if config.cache.enabled:
        return config.cache.data_dir, cache.fingerprint(config, metadata_path)
    return None, None


def _pipe_model(pipe: Pipeline, name: str, what: str) -> torch.nn.Module:
    try:
        return pipe.get_submodule(name)
    except AttributeError:
        raise ConfigError(f"{what}: {name!r} is not a model of this pipeline; models: "
                          f"{[n for n, _ in pipe.named_children()]}") from None


def configure_trainable(module: TrainingModule, config: Config, dtype: torch.dtype) -> list[str]:
    """DiffSynth's order (spec §4.1): load a full checkpoint, freeze all but ``trainable_models``, fuse the
    preset LoRA, inject LoRA (optionally from ``lora_checkpoint``). Returns the trainable parameter names."""
    pipe = module.pipe
    pipe.eval().requires_grad_(False)
    for name in split_keys(config.train.trainable_models):
        _pipe_model(pipe, name, "train.trainable_models").train().requires_grad_(True)
    if config.lora.preset_lora_path:
        target = _pipe_model(pipe, config.lora.preset_lora_model, "lora.preset_lora_model")
        fuse_lora(target, read_tensors(config.lora.preset_lora_path, "lora.preset_lora_path"), pipe.spec,
                  source=config.lora.preset_lora_path)
    if config.lora.lora_base_model:
        base = _pipe_model(pipe, config.lora.lora_base_model, "lora.lora_base_model")
        targets = parse_target_modules(config.lora.lora_target_modules, base)
        # family names -> loaded module names (a single target stays one string: DiffSynth's regex full-match)
        mapped = pipe.map_lora_targets(config.lora.lora_base_model, [targets] if isinstance(targets, str) else targets)
        targets = mapped[0] if isinstance(targets, str) else mapped
        add_lora(base, targets, config.lora.lora_rank, alpha=config.lora.lora_alpha, dtype=dtype,
                 exclude=pipe.modules_without_gradient(config.lora.lora_base_model))
        if config.lora.lora_checkpoint:
            load_lora_checkpoint(base, read_tensors(config.lora.lora_checkpoint, "lora.lora_checkpoint"), pipe.spec,
                                 source=config.lora.lora_checkpoint)
    if config.gradient.use_gradient_checkpointing or config.gradient.use_gradient_checkpointing_offload:
        for child in pipe.children():
            if hasattr(child, "enable_gradient_checkpointing") and any(p.requires_grad for p in child.parameters()):
                child.enable_gradient_checkpointing()
    names = [n for n, p in module.named_parameters() if p.requires_grad]
    if not names:
        raise ConfigError("No trainable parameters: check train.trainable_models and lora.* settings")
    return names


def load_full_checkpoint(module: TrainingModule, path: str, prefix: str | None) -> None:
    """``--resume_from_checkpoint``: a saved full state dict, keys re-prefixed (spec §4.6)."""
    state = {f"{prefix or ''}{k}": v for k, v in read_tensors(path, "train.resume_from_checkpoint").items()}
    own = dict(module.named_parameters())
    unexpected = [k for k in state if k not in own]
    if unexpected:
        raise ConfigError(f"resume_from_checkpoint {path}: {len(unexpected)} keys fit no parameter (e.g. "
                          f"{unexpected[:3]}). It takes full fine-tune checkpoints; continue a LoRA with "
                          "lora.lora_checkpoint instead.")
    with torch.no_grad():
        for k, v in state.items():
            own[k].data.copy_(v.to(own[k].dtype))


@dataclass
class TrainResult:
    steps: int = 0
    checkpoints: list = field(default_factory=list)
    loss_history: list = field(default_factory=list)       # (step, loss)
    val_history: list = field(default_factory=list)        # (step, {metric: value})
    run_id: str | None = None
    tracking_uri: str | None = None
    world_size: int = 1
    resumed_from_step: int | None = None
    state_dir: str | None = None       # the store slot to release once the stage's outputs are written
    republished: bool = False          # finished before, killed before its outputs were written: not retrained


def _samples(pipe: Pipeline, config: Config, prompt_inputs: dict | None) -> list[tuple[int, str, int, object]]:
    """(prompt index, prompt, seed, image or list of frames) for every prompt × seed; conditioned on the prompt
    cache when training from the encoder cache."""
    s, out = config.sample, []
    pairs = [(i, prompt, int(seed)) for i, prompt in enumerate(s.prompts) for seed in s.seeds]
    for i, prompt, seed in progress(pairs, desc="samples", unit="image"):
        if prompt_inputs is not None:
            image = pipe.render(to_device(prompt_inputs[prompt], pipe.device), seed, s.height, s.width,
                                s.num_inference_steps, num_frames=s.num_frames)
        else:
            image = pipe.sample(prompt, seed, s.height, s.width, s.num_inference_steps, num_frames=s.num_frames)
        out.append((i, prompt, seed, image))
    return out


def _apply_fp8(pipe: Pipeline, config: Config, dtype: torch.dtype) -> None:
    """``model.fp8_models``: frozen weights of the listed entries stored in fp8 (after LoRA injection)."""
    wanted = fp8_entries(config.model.fp8_models)
    unknown = wanted - set(pipe.component_sources.values())
    if unknown:
        raise ConfigError(f"model.fp8_models entries {sorted(unknown)} are not model entries; write them exactly as "
                          f"in the model flags: {sorted(pipe.component_sources.values())}")
    for component, source in pipe.component_sources.items():
        if source in wanted:
            enable_fp8(getattr(pipe, component), compute_dtype=dtype)  # computed in model.torch_dtype


def _fingerprint(config: Config, rows: list[dict], world_size: int) -> dict:
    flat = {k: v for k, v in flatten(config.to_dict()).items() if not k.startswith(RESUMABLE_CHANGES)}
    flat["_dataset_rows_sha256"] = hashlib.sha256(json.dumps(rows, sort_keys=True, default=str).encode()).hexdigest()
    flat["_world_size"] = world_size
    return {k: (v if isinstance(v, (str, int, float, bool)) or v is None else str(v)) for k, v in flat.items()}


def _check_world_size(accelerator: Accelerator) -> None:
    """`accelerate launch --multi_gpu` on a CPU machine without ACCELERATE_USE_CPU runs independent copies."""
    expected = int(os.environ.get("WORLD_SIZE", "1"))
    if expected != accelerator.num_processes:
        raise RuntimeError(
            f"The launcher started {expected} processes but accelerate sees {accelerator.num_processes}: they would "
            "train unsynchronised copies. On CPU use `accelerate launch --multi_gpu --num_processes N` with "
            "ACCELERATE_USE_CPU=1.")


def _peak_memory_mb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2 ** 20
    status = Path("/proc/self/status")
    if status.exists():  # VmHWM starts afresh at exec; ru_maxrss carries a parent's peak into its child
        for line in status.read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024  # kB
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


class Trainer:
    """One training run: set up in ``__init__``, run with :meth:`run`.

    State lives on the instance so the save points, the resumable state and the MLflow logging read as
    separate methods rather than closures in one long function.
    """

    def __init__(self, config: Config, metadata_path: str | None = None, tags: dict | None = None,
                 log_files: list[str] | None = None, state_store: str | Path | None = None):
        self.config, self.tags, self.log_files = config, tags, log_files or []
        distributed.prepare_cpu_state()
        self.accelerator = accelerator = Accelerator(
            gradient_accumulation_steps=config.gradient.gradient_accumulation_steps,
            kwargs_handlers=[DistributedDataParallelKwargs(find_unused_parameters=config.train.find_unused_parameters)],
        )
        _check_world_size(accelerator)
        distributed.check_backend(accelerator)
        self.sharded = distributed.is_sharded(accelerator)  # FSDP: each rank holds a shard of the weights
        self.main, self.rank, self.world = accelerator.is_main_process, accelerator.process_index, accelerator.num_processes
        dtype = DTYPES[config.model.torch_dtype]
        self.output = Path(config.output.output_path)
        torch.manual_seed(config.train.seed)

        self.spec = spec = spec_for(config)
        self.metadata = metadata_path or config.dataset.dataset_metadata_path
        cache_dir, expected = cache_source(config, self.metadata)
        load_device = "cpu" if config.model.initialize_model_on_cpu or config.train.enable_model_cpu_offload \
            else accelerator.device
        # from the cache, the encoders are never built: only the trained model(s) and the VAE decoder
        self.pipe = pipe = spec.load_pipeline(config, dtype, load_device, "train_cached" if cache_dir else "full")
        self.schedule = FlowMatchSchedule.for_family(spec.name)
        self.generator = torch.Generator().manual_seed(config.train.seed + 1000 * self.rank)
        module = TrainingModule(pipe, self.schedule, self.generator,
                                (config.train.min_timestep_boundary, config.train.max_timestep_boundary),
                                config.gradient.use_gradient_checkpointing_offload)
        if config.train.resume_from_checkpoint:
            load_full_checkpoint(module, config.train.resume_from_checkpoint, config.output.remove_prefix_in_ckpt)
        self.trainable = set(configure_trainable(module, config, dtype))
        self.convert_checkpoint = _checkpoint_converter(spec, config)
        _apply_fp8(pipe, config, dtype)
        self.memory = apply_memory_modes(module, config, dtype, accelerator)  # quant_options, CPU offload

        self._open_dataset(cache_dir, expected)
        self.bucket_keys = self._bucket_keys()
        self.buckets = bucket_stats(self.bucket_keys, config.train.batch_size, self.world)
        self.samples_seen = 0
        optimizer = build_optimizer(config, [p for p in module.parameters() if p.requires_grad])
        # micro-steps per epoch on this rank (the sampler's length) and in the whole run: decay length, progress total
        self.batches_per_epoch = self.sampler(0, 0).per_rank
        self.total_micro_steps = min(self.batches_per_epoch * config.train.num_epochs,
                                     config.train.max_steps or float("inf"))
        self.lr_schedule = Schedule(optimizer, config.train.lr_scheduler, config.train.lr_warmup_steps, self.world,
                                    total_optimizer_steps(self.batches_per_epoch, config.train.num_epochs,
                                                          config.gradient.gradient_accumulation_steps,
                                                          config.train.max_steps),
                                    config.train.lr_min_ratio)
        if (self.world > 1 and not self.sharded and not config.train.find_unused_parameters
                and _trains_unused(module, self.trainable)):
            # a full fine-tune includes modules the loss never reaches; DDP must be told (DiffSynth: a crash)
            accelerator.ddp_handler = DistributedDataParallelKwargs(find_unused_parameters=True)
            if self.main:
                print("[train] find_unused_parameters enabled: trained modules include some that get no gradient")
        self.model, self.optimizer = accelerator.prepare(module, optimizer)
        self.params = [p for p in self.model.parameters() if p.requires_grad]
        # the metadata rows where there are some (also when training from the pipeline's cache), for the resume
        # fingerprint and the MLflow dataset; DiffSynth's cache alone has only its file names
        self.rows = read_metadata(self.metadata) if self.metadata else self.dataset.rows
        self.fingerprint = _fingerprint(config, self.rows, self.world)
        # the state: in <output_path>/state, or (DVC stage) in a store slot outside every DVC output
        self.slot = resume.Slot(state_store, resume.run_key(config, self.rows, self.world)) \
            if state_store else None
        self.state_parent = self.slot.path if self.slot else self.output
        # Machines with their own disks each keep a full copy of the resumable state (DDP: every rank holds it
        # all), so each can resume; on a shared folder only the main process writes it.
        shared = distributed.output_is_shared(accelerator, self.output)  # a collective: every rank asks
        self.writes_state = self.main or (accelerator.is_local_main_process and not self.sharded and not shared)

        self.validator = FixedNoiseValidator(
            [self.dataset[i] for i in range(min(config.validation.num_samples, len(self.dataset.rows)))],
            config.validation.sigmas, config.validation.seed, encode=module.encode)
        self.result = TrainResult(world_size=self.world, state_dir=str(self.slot.path) if self.slot else None)
        self.tracker = Tracker(config.tracking.experiment, config.tracking.uri, enabled=self.main)
        self.metrics_log = None  # opened with the output folder (main process)
        self.stop_requested = False

    def _open_dataset(self, cache_dir: str | None, expected: dict | None) -> None:
        """The rows training iterates: the encoder cache's (and its encoded sample prompts), or the metadata's."""
        config, spec = self.config, self.spec
        self.prompt_inputs = None
        if cache_dir:
            self.dataset = cache.open_cached_dataset(cache_dir, config.dataset.dataset_repeat, expected,
                                                     spec.diffsynth_cache_keys)
            if config.cache.enabled and config.train.task != "sft:train":
                self.prompt_inputs = cache.read_prompt_cache(
                    config.cache.prompts_dir, cache.fingerprint(config, None, what="prompts"))
            return
        if not self.metadata:
            raise ConfigError("dataset.dataset_metadata_path is empty: set it, or train from an encoder cache "
                              "(--task sft:train with --dataset_base_path <its folder>)")
        self.dataset = metadata_dataset(config, self.metadata, spec.data_rules(config))

    def _bucket_keys(self) -> list[str]:
        """Every dataset index's shape bucket. A batch of one needs no bucket: all items share one key, so no
        file is opened and the order is today's."""
        if self.config.train.batch_size == 1:
            return ["any"] * len(self.dataset)
        d = self.dataset
        if hasattr(d, "bucket_keys"):  # the encoder cache: the shapes of the cached tensors
            keys = d.bucket_keys()
        else:
            keys = [row_key(row, d.base_path, d.data_file_keys, d.video_keys, d.rules) for row in d.rows]
        return [keys[i % len(keys)] for i in range(len(d))]

    def sampler(self, epoch: int, start: int) -> BucketBatchSampler:
        return BucketBatchSampler(self.bucket_keys, self.config.train.batch_size, self.config.train.seed, epoch,
                                  self.rank, self.world, start)

    # ------------------------------------------------------------------ logging
    def log(self, metrics: dict, at: int) -> None:
        if self.metrics_log:
            self.metrics_log.log(metrics, at)

    def _open_local_logs(self) -> None:
        # MLflow + loss.csv (also when MLflow fails, whatever enable_csv_log says) + tensorboard
        tracking = self.config.tracking
        self.metrics_log = MetricsLog(self.tracker, self.output / "loss.csv", tracking.enable_csv_log,
                                      self.output / "tensorboard_log" if tracking.enable_tensorboard_log else None)

    def _start_tracking(self, resumed_run_id: str | None) -> None:
        config, tracker = self.config, self.tracker
        self.output.mkdir(parents=True, exist_ok=True)
        write_json(self.output / "training_args.json", {**config.to_dict(), "world_size": self.world,
                                                         "distributed_type": self.accelerator.distributed_type.value},
                   indent=4)
        if resumed_run_id:
            self.result.run_id = tracker.start(run_id=resumed_run_id)
            tracker.set_tags({f"resumed_at_step_{self.result.resumed_from_step}": "true"})
        else:
            self.result.run_id = tracker.start(flatten(config.to_dict()), tags=self.tags,
                                               run_name=os.environ.get("DVC_EXP_NAME") or None)
            tracker.log_dataset(self.rows, source=str(Path(self.metadata or config.dataset.dataset_base_path).resolve()),
                                name=Path(config.dataset.dataset_base_path).name or "dataset")
            for f in [self.output / "training_args.json", *self.log_files]:
                tracker.log_artifact(f, "config")
            tracker.set_tags({"world_size": str(self.world)})
            write_json(self.output / "buckets.json", self.buckets)
            tracker.log_artifact(self.output / "buckets.json", "data")
            tracker.set_tags({"buckets": str(self.buckets["num_buckets"]),
                              "batches_per_epoch": str(self.buckets["batches"])})
        self.result.tracking_uri = tracker.uri

    def evaluate(self, at: int) -> None:
        """Fixed-noise validation loss and sample images, logged by the main process. Under FSDP every rank
        runs it (the wrapped blocks gather their weights in collectives) and only the main process logs."""
        metrics = self.validator.evaluate(self.pipe, self.schedule)
        # --task sft:train has no text encoder and no prompt cache, so no samples (as in DiffSynth)
        renders = not (self.pipe.role == "train_cached" and self.prompt_inputs is None)
        if not self.main:
            if renders:
                _samples(self.pipe, self.config, self.prompt_inputs)
            return
        self.result.val_history.append((at, metrics))
        self.log(metrics, at)
        print(f"[train] step {at}: val_loss {metrics['val_loss']:.5f}", flush=True)
        table = {"prompt": [], "seed": [], "step": [], "image": [], "image_key": []}
        if self.config.sample.out_dir:  # a DVC output even when no sample is rendered
            Path(self.config.sample.out_dir).mkdir(parents=True, exist_ok=True)
        if not renders:
            return
        for i, prompt, seed, image in _samples(self.pipe, self.config, self.prompt_inputs):
            key = f"sample/p{i}_s{seed}"  # one image key per prompt × seed; the step slider walks the save points
            shown = self.tracker.log_sample(image, key=key, step=at)
            if self.config.sample.out_dir:  # also on disk: a DVC image plot, and kept when MLflow is down
                folder = Path(self.config.sample.out_dir)
                folder.mkdir(parents=True, exist_ok=True)
                shown.save(folder / f"step{at:06d}_p{i}_s{seed}.png")
            for column, value in (("prompt", prompt), ("seed", seed), ("step", at), ("image", shown),
                                  ("image_key", key)):
                table[column].append(value)
        self.tracker.log_table(table, "samples.json")

    # ------------------------------------------------------------------ checkpoints and state
    def save_point(self, at: int, epoch: int | None) -> None:
        """DiffSynth's checkpoint (trainable tensors, prefix removed), then validation and samples."""
        state = self.accelerator.get_state_dict(self.model)  # collective under ZeRO-3/FSDP: every rank calls it
        with self._whole_model():
            self._save_checkpoint(state, at, epoch)
        self.accelerator.wait_for_everyone()

    def _whole_model(self):
        """Around evaluation: under FSDP the weights are gathered whole for it on every rank."""
        if not self.sharded:
            return contextlib.nullcontext()
        return distributed.whole_model(self.model, self.accelerator.state.fsdp_plugin.reshard_after_forward)

    def _save_checkpoint(self, state: dict, at: int, epoch: int | None) -> None:
        if self.main:
            prefix = self.config.output.remove_prefix_in_ckpt
            ckpt = {(k[len(prefix):] if prefix and k.startswith(prefix) else k): v.detach().to("cpu").contiguous()
                    for k, v in state.items() if k in self.trainable}
            if self.convert_checkpoint:
                ckpt = self.convert_checkpoint(ckpt, alpha=self.config.lora.lora_alpha)
            elif self.config.lora.lora_base_model == "dit":  # the DiT's LoRA in DiffSynth's own DiT names
                dit = "pipe.dit."
                dit = dit[len(prefix):] if prefix and dit.startswith(prefix) else dit
                ckpt = to_diffsynth_checkpoint(ckpt, self.spec, dit, alpha=self.config.lora.lora_alpha)
            name = checkpoint_name(epoch=epoch, step=None if epoch is not None else at)
            path = save_checkpoint(ckpt, self.output / name)
            self.result.checkpoints.append(str(path))
            self.tracker.log_artifact(path, "checkpoints")
        if self.main or self.sharded:
            self.evaluate(at)

    def save_state(self, at: int, epoch: int, position: int, finished: bool = False) -> None:
        """The main process (and, on machines that do not share its folder, each machine's first process)
        writes the whole state, every rank's RNG included, to a staging folder and swaps it in."""
        accelerator, folder = self.accelerator, train_state.staging_dir(self.state_parent)
        # collectives first, on every rank: RNG states of all ranks, whole weights and optimizer state (FSDP)
        rng = gather_object([self.generator.get_state()])
        weights = distributed.full_trainable_weights(accelerator.unwrap_model(self.model), keep=self.writes_state)
        optimizer = distributed.optimizer_state(self.model, self.optimizer, self.sharded)
        if self.writes_state:
            train_state.begin(self.state_parent)
            for rank, generator in enumerate(rng):
                save_file({"generator": generator}, str(folder / f"rng-rank{rank}.safetensors"))
            save_file(weights, str(folder / "trainable.safetensors"))
            train_state.save_structure(optimizer, folder, "optimizer")
            train_state.save_structure(self.lr_schedule.state_dict(), folder, "scheduler")
            write_json(folder / "meta.json", {"step": at, "epoch": epoch, "offset": position, "finished": finished,
                                              "samples_seen": self.samples_seen,
                                              "mlflow_run_id": self.result.run_id, "fingerprint": self.fingerprint})
            self._save_history(folder)
            if self.slot:
                resume.snapshot(self._output_folders(), folder)
            train_state.commit(self.state_parent)
        accelerator.wait_for_everyone()

    def restore_or_reset(self) -> tuple[int, int, int, str | None]:
        """Continue an interrupted run (train.resume: auto) or clear the persisted folder for a fresh one.

        Returns (step, epoch, position in the epoch, MLflow run id to reopen).
        """
        if self.slot and self.main:
            self.slot.acquire()
        meta = train_state.read_meta(self.state_parent) if self.config.train.resume == "auto" else None
        folder = self.state_parent / train_state.STATE_DIR
        # every rank must take the same decision (machines with their own disks read their own copies)
        seen = gather_object([None if meta is None else (meta["step"], meta.get("finished"))])
        if any(s != seen[0] for s in seen):
            raise ConfigError(f"The processes found different resumable states in {folder} (step, finished per "
                              f"rank: {seen}): copy the main machine's folder to the others, or set train.resume: "
                              "never to start over.")
        if meta is not None and meta.get("finished") and self.slot:
            self._republish(folder, meta)
            return meta["step"], 0, 0, meta.get("mlflow_run_id")
        if meta is None or meta.get("finished"):
            if self.writes_state and self.output.exists():
                # a fresh run: old files in the (DVC-persisted) folder would mix with the new ones
                for old in [*self.output.glob("epoch-*.safetensors"), *self.output.glob("step-*.safetensors"),
                            self.output / "loss.csv"]:
                    old.unlink(missing_ok=True)
                shutil.rmtree(self.output / train_state.STATE_DIR, ignore_errors=True)
                if self.config.sample.out_dir:
                    shutil.rmtree(self.config.sample.out_dir, ignore_errors=True)
            if self.main and self.slot:
                shutil.rmtree(folder, ignore_errors=True)
                self._tell_other_states()
            self.accelerator.wait_for_everyone()
            return 0, 0, 0, None
        changed = sorted(k for k in set(meta["fingerprint"]) | set(self.fingerprint)
                         if meta["fingerprint"].get(k) != self.fingerprint.get(k))
        if changed:
            raise ConfigError(
                f"Cannot resume the interrupted run in {folder}: these params changed since it started: "
                f"{changed[:10]}. Restore them, or set train.resume: never to start over (this discards the "
                "interrupted run's progress).")
        distributed.load_trainable_weights(self.accelerator.unwrap_model(self.model),
                                           load_file(str(folder / "trainable.safetensors")))
        distributed.load_optimizer_state(self.model, self.optimizer, train_state.load_structure(folder, "optimizer"),
                                         self.sharded)
        self.lr_schedule.load_state_dict(train_state.load_structure(folder, "scheduler"))
        self.generator.set_state(load_file(str(folder / f"rng-rank{self.rank}.safetensors"))["generator"])
        self.result.resumed_from_step = meta["step"]
        self.samples_seen = meta.get("samples_seen", meta["step"] * self.world)
        if self.main:
            if self.slot:  # DVC checked out another run's outputs: put back this run's
                resume.restore(folder, self._output_folders())
            self._load_history(folder)
            print(f"[train] resuming at step {meta['step']} (epoch {meta['epoch']}, batch {meta['offset']}) "
                  f"from {folder}", flush=True)
        return meta["step"], meta["epoch"], meta["offset"], meta.get("mlflow_run_id")

    def _output_folders(self) -> dict[str, Path]:
        folders = {"output": self.output}
        if self.config.sample.out_dir:
            folders["samples"] = Path(self.config.sample.out_dir)
        return folders

    def _save_history(self, folder: Path) -> None:
        r = self.result
        train_state.save_history(folder, {"loss": r.loss_history, "val": r.val_history, "checkpoints": r.checkpoints,
                                          "tracking_uri": r.tracking_uri})

    def _load_history(self, folder: Path) -> None:
        history = train_state.load_history(folder) or {}
        self.result.loss_history = [tuple(x) for x in history.get("loss", [])]
        self.result.val_history = [tuple(x) for x in history.get("val", [])]
        self.result.checkpoints = list(history.get("checkpoints", []))
        self.result.tracking_uri = history.get("tracking_uri")

    def _republish(self, folder: Path, meta: dict) -> None:
        """The run finished, but its stage was stopped before writing its outputs: give them back untrained."""
        self.result.republished = True
        if self.main:
            resume.restore(folder, self._output_folders())
            self._load_history(folder)
            self.result.steps, self.result.run_id = meta["step"], meta.get("mlflow_run_id")
            print(f"[train] this run already finished (step {meta['step']}, MLflow run {self.result.run_id}) but "
                  f"its outputs were not written: publishing them from {folder} instead of training again",
                  flush=True)

    def _tell_other_states(self) -> None:
        others = self.slot.others()
        if others:
            size = sum(resume.size_mb(f) for f, _ in others)
            steps = ", ".join(f"{f.name} (step {m['step']})" for f, m in others[:5])
            print(f"[train] {len(others)} interrupted run(s) with other params keep their state in {self.slot.store} "
                  f"({size:.0f} MB): {steps}. Each resumes when run again with its params; delete its folder to "
                  "discard it.", flush=True)

    # ------------------------------------------------------------------ the loop
    def _request_stop(self, signum, _frame) -> None:
        self.stop_requested = True
        print(f"[train] signal {signum}: writing a resumable state at the next optimizer step", flush=True)

    def _stop_agreed(self) -> bool:
        """Every rank must stop at the same step, whichever one got the signal."""
        if self.world > 1:
            flag = torch.tensor([1.0 if self.stop_requested else 0.0], device=self.accelerator.device)
            self.stop_requested = bool(self.accelerator.reduce(flag, reduction="sum").item() > 0)
        return self.stop_requested

    def train_step(self, items: list[dict], step: int, samples: int) -> None:
        """One micro-step on this process's batch ``items``; ``samples``: all processes' samples in this step."""
        accelerator, started = self.accelerator, time.perf_counter()
        lr = self.lr_schedule.lr()  # the lr this step's update uses (the schedule moves on after it)
        with accelerator.accumulate(self.model):
            loss = self.model(items)
            accelerator.backward(loss)
            self.memory.after_backward()  # offload: weights released, gradients to the host (optimizer offload)
            grad_norm = None
            if accelerator.sync_gradients:
                norm = accelerator.clip_grad_norm_(self.params, self.config.train.max_grad_norm or float("inf"))
                grad_norm = float(norm) if norm is not None else None  # inf: measured, not clipped
            self.optimizer.step()
            self.optimizer.zero_grad()
        if accelerator.sync_gradients:
            self.lr_schedule.step()
        self.samples_seen += samples
        if self.main:
            value, elapsed = loss.detach().float().item(), time.perf_counter() - started
            self.result.loss_history.append((step, value))
            # step = micro-step (one batch per process); an optimizer step every gradient_accumulation_steps
            metrics = {"loss": value, "lr": lr, "step_time": elapsed,
                       "samples_per_s": samples / elapsed, "samples_seen": self.samples_seen,
                       "optimizer_step": step // self.config.gradient.gradient_accumulation_steps,
                       "peak_memory_mb": _peak_memory_mb(accelerator.device)}
            if grad_norm is not None:
                metrics["grad_norm"] = grad_norm
            self.log(metrics, step)

    def run(self) -> TrainResult:
        config, accelerator = self.config, self.accelerator
        step, epoch0, offset, run_id = self.restore_or_reset()
        if self.result.republished:
            if self.slot:
                self.slot.release_lock()
            accelerator.end_training()
            return self.result
        previous_handlers = {s: signal.signal(s, self._request_stop) for s in (signal.SIGTERM, signal.SIGINT)}
        status = "FAILED"
        try:
            if self.main:
                self._open_local_logs()  # first: a tracking failure at start switches the CSV on
                self._start_tracking(run_id)
            if (self.main or self.sharded) and self.result.resumed_from_step is None:
                with self._whole_model():
                    self.evaluate(0)
            accelerator.wait_for_everyone()
            self.model.train()
            save_steps, done, state_pending, epoch = config.output.save_steps, False, False, epoch0
            bar = progress(total=self.total_micro_steps, desc="train", unit="step", initial=step) if self.main else None
            for epoch in range(epoch0, config.train.num_epochs):
                start = offset if epoch == epoch0 else 0
                sampler = self.sampler(epoch, start)  # position and per_rank count this process's batches
                loader = DataLoader(self.dataset, batch_sampler=sampler, collate_fn=item_list,
                                    num_workers=config.dataset.dataset_num_workers)
                position = start
                for items in loader:
                    self.train_step(items, step + 1, sampler.samples_in_step(position))
                    step, position = step + 1, position + 1
                    if bar:
                        bar.set_postfix(epoch=f"{epoch + 1}/{config.train.num_epochs}",
                                        loss=self.result.loss_history[-1][1])
                        bar.update()
                    if save_steps and step % save_steps == 0:
                        self.save_point(step, None)
                        state_pending = True
                    done = bool(config.train.max_steps and step >= config.train.max_steps)
                    if accelerator.sync_gradients:  # resumable states only between optimizer steps
                        where = (epoch + 1, 0) if position >= sampler.per_rank else (epoch, position)
                        if self._stop_agreed():
                            self.save_state(step, *where)
                            raise TrainingInterrupted(f"stopped at step {step}; state saved in "
                                                      f"{self.state_parent / train_state.STATE_DIR}. Run again to "
                                                      "resume.")
                        if state_pending and not done:
                            self.save_state(step, *where)
                            state_pending = False
                    if done:
                        break
                if save_steps is None:
                    self.save_point(step, epoch)
                    if not done and accelerator.sync_gradients:
                        self.save_state(step, epoch + 1, 0)
                if done:
                    break
            if save_steps and step % save_steps != 0:
                self.save_point(step, None)
            if bar:
                bar.close()
            _check_ranks_agree(accelerator, self.model)
            self.save_state(step, epoch + 1, 0, finished=True)
            self.result.steps = step
            status = "FINISHED"
        except (KeyboardInterrupt, TrainingInterrupted):
            status = "KILLED"
            raise
        finally:
            for s, handler in previous_handlers.items():
                signal.signal(s, handler)
            if self.slot:
                self.slot.release_lock()
            self.tracker.finish(status)
            if self.metrics_log:
                self.metrics_log.close()
            accelerator.end_training()
        return self.result


def run_training(config: Config, metadata_path: str | None = None, tags: dict | None = None,
                 log_files: list[str] | None = None, state_store: str | Path | None = None) -> TrainResult:
    """Train as ``config`` says. ``metadata_path`` overrides the dataset's (the validated copy in DVC runs).
    ``state_store``: keep the resumable state there (see :mod:`.resume`) instead of in ``<output_path>/state``;
    the caller releases ``result.state_dir`` once it has written its outputs.

    ``--task sft:data_process`` only encodes: the encoder cache is written to ``output.output_path`` (main
    process), for a later ``--task sft:train --dataset_base_path <that folder>``."""
    if config.train.task == "sft:data_process":
        from ..encoding import build_data_cache
        if int(os.environ.get("RANK", "0")) == 0:
            index = build_data_cache(config, metadata_path or config.dataset.dataset_metadata_path,
                                     config.output.output_path)
            print(f"[cache] encoded {index['rows']} rows into {config.output.output_path}")
        return TrainResult()
    return Trainer(config, metadata_path, tags, log_files, state_store).run()


def _checkpoint_converter(spec, config: Config):
    """``output.align_to_opensource_format``: the family's saved-LoRA converter (checked before training)."""
    if not config.output.align_to_opensource_format:
        return None
    converter = opensource_converter(spec)
    if converter is None:
        raise ConfigError(f"output.align_to_opensource_format: the {spec.name} family has no open-source "
                          "LoRA format; turn the flag off")
    return converter


def _trains_unused(module: TrainingModule, trainable: list[str]) -> bool:
    unused = [f"pipe.{name}.{m}." for name, _ in module.pipe.named_children()
              for m in module.pipe.modules_without_gradient(name)]
    return any(n.startswith(tuple(unused)) for n in trainable) if unused else False


def _check_ranks_agree(accelerator: Accelerator, model: torch.nn.Module) -> None:
    """After DDP every rank must hold the same trainable weights; a mismatch means unsynchronised copies."""
    if accelerator.num_processes == 1:
        return
    # Under FSDP each rank holds a shard: the sums are over the gathered whole weights, so the ranks agree by
    # construction and the value is comparable with a DDP run of the same training.
    own = accelerator.unwrap_model(model)
    checksum = torch.stack([distributed.full_tensor(p.detach()).double().sum()
                            for p in own.parameters() if p.requires_grad]).sum()
    sums = accelerator.gather(checksum.reshape(1).to(accelerator.device)).cpu()
    if accelerator.is_main_process:
        print(f"[train] trainable-weight checksums per rank: {sums.tolist()}", flush=True)
    if not torch.all(sums == sums[0]):
        raise RuntimeError(f"Ranks ended with different weights (checksums {sums.tolist()}): gradients were not "
                           "synchronised across processes.")


__all__ = ["run_training", "Trainer", "TrainResult", "TrainingModule", "configure_trainable", "TrainingInterrupted"]
