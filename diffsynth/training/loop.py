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
from accelerate.utils import DistributedDataParallelKwargs
from safetensors.torch import load_file, save_file
from torch.utils.data import DataLoader

from ..config import Config, ConfigError, flatten
from ..data.dataset import ImageRules, UnifiedDataset, split_keys
from ..export.lora_formats import to_diffsynth_checkpoint
from ..families import get_family
from ..families.base import Pipeline
from ..files import write_json
from ..models.fp8 import enable_fp8, fp8_entries
from ..tracking import MetricsLog, Tracker
from . import state as train_state
from .checkpoint import checkpoint_name, save_checkpoint
from .lora import add_lora, fuse_lora, load_lora_checkpoint, parse_target_modules
from .loss import flow_match_loss
from .optim import Schedule, build_optimizer
from .sampler import EpochShuffleSampler
from .schedule import FlowMatchSchedule
from .validation import FixedNoiseValidator

DTYPES = {"bfloat16": torch.bfloat16, "float16": torch.float16, "float32": torch.float32}
# Params that may change between an interrupted run and its resume; any other change makes the state invalid.
RESUMABLE_CHANGES = ("train.num_epochs", "train.max_steps", "train.resume", "output.save_steps",
                     "dataset.dataset_num_workers", "tracking.", "sample.", "validation.", "export.")


class TrainingInterrupted(RuntimeError):
    """SIGTERM/SIGINT arrived; a resumable state was written. Run again with train.resume: auto."""


def first_item(batch: list):
    """DiffSynth's collate: batch size is 1, the item is passed through unchanged."""
    return batch[0]


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

    def forward(self, item: dict) -> torch.Tensor:
        inputs = self.pipe.encode(item)
        ctx = torch.autograd.graph.save_on_cpu() if self.offload_activations else contextlib.nullcontext()
        with ctx:
            return flow_match_loss(self.pipe, self.schedule, inputs, self.generator, *self.boundaries)


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
        fuse_lora(target, load_file(config.lora.preset_lora_path), pipe.family, source=config.lora.preset_lora_path)
    if config.lora.lora_base_model:
        base = _pipe_model(pipe, config.lora.lora_base_model, "lora.lora_base_model")
        targets = parse_target_modules(config.lora.lora_target_modules, base)
        # family names -> loaded module names (a single target stays one string: DiffSynth's regex full-match)
        mapped = pipe.map_lora_targets(config.lora.lora_base_model, [targets] if isinstance(targets, str) else targets)
        targets = mapped[0] if isinstance(targets, str) else mapped
        add_lora(base, targets, config.lora.lora_rank, alpha=config.lora.lora_alpha, dtype=dtype,
                 exclude=pipe.modules_without_gradient(config.lora.lora_base_model))
        if config.lora.lora_checkpoint:
            load_lora_checkpoint(base, load_file(config.lora.lora_checkpoint), pipe.family,
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
    state = {f"{prefix or ''}{k}": v for k, v in load_file(path).items()}
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


def _samples(pipe: Pipeline, config: Config) -> list[tuple[int, str, int, object]]:
    """(prompt index, prompt, seed, image or list of frames) for every prompt × seed."""
    out = []
    for i, prompt in enumerate(config.sample.prompts):
        for seed in config.sample.seeds:
            out.append((i, prompt, int(seed), pipe.sample(prompt, int(seed), config.sample.height, config.sample.width,
                                                          config.sample.num_inference_steps,
                                                          num_frames=config.sample.num_frames)))
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
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


class Trainer:
    """One training run: set up in ``__init__``, run with :meth:`run`.

    State lives on the instance so the save points, the resumable state and the MLflow logging read as
    separate methods rather than closures in one long function.
    """

    def __init__(self, config: Config, metadata_path: str | None = None, tags: dict | None = None,
                 log_files: list[str] | None = None):
        self.config, self.tags, self.log_files = config, tags, log_files or []
        self.accelerator = accelerator = Accelerator(
            gradient_accumulation_steps=config.gradient.gradient_accumulation_steps,
            kwargs_handlers=[DistributedDataParallelKwargs(find_unused_parameters=config.train.find_unused_parameters)],
        )
        _check_world_size(accelerator)
        self.main, self.rank, self.world = accelerator.is_main_process, accelerator.process_index, accelerator.num_processes
        dtype = DTYPES[config.model.torch_dtype]
        self.output = Path(config.output.output_path)
        torch.manual_seed(config.train.seed)

        self.family = family = get_family(config.model.family)
        load_device = "cpu" if config.model.initialize_model_on_cpu else accelerator.device
        self.pipe = pipe = family.load_pipeline(config, dtype, load_device)
        self.schedule = FlowMatchSchedule.for_family(pipe.schedule_name)
        self.generator = torch.Generator().manual_seed(config.train.seed + 1000 * self.rank)
        module = TrainingModule(pipe, self.schedule, self.generator,
                                (config.train.min_timestep_boundary, config.train.max_timestep_boundary),
                                config.gradient.use_gradient_checkpointing_offload)
        if config.train.resume_from_checkpoint:
            load_full_checkpoint(module, config.train.resume_from_checkpoint, config.output.remove_prefix_in_ckpt)
        self.trainable = set(configure_trainable(module, config, dtype))
        self.convert_checkpoint = _checkpoint_converter(pipe, config)
        _apply_fp8(pipe, config, dtype)

        rules = ImageRules(config.resolution.max_pixels, config.resolution.height, config.resolution.width,
                           pipe.height_factor, pipe.width_factor, num_frames=config.resolution.num_frames,
                           time_division_factor=pipe.time_division_factor,
                           time_division_remainder=pipe.time_division_remainder)
        self.metadata = metadata_path or config.dataset.dataset_metadata_path
        if not self.metadata:
            raise ConfigError("dataset.dataset_metadata_path is empty; cached-dataset training is not supported yet")
        self.dataset = UnifiedDataset(config.dataset.dataset_base_path, self.metadata,
                                      split_keys(config.dataset.data_file_keys), rules,
                                      repeat=config.dataset.dataset_repeat, video_keys=family.VIDEO_KEYS)
        optimizer = build_optimizer(config, [p for p in module.parameters() if p.requires_grad])
        self.lr_schedule = Schedule(optimizer, config.train.lr_scheduler, config.train.lr_warmup_steps, self.world)
        if self.world > 1 and not config.train.find_unused_parameters and _trains_unused(module, self.trainable):
            # a full fine-tune includes modules the loss never reaches; DDP must be told (DiffSynth: a crash)
            accelerator.ddp_handler = DistributedDataParallelKwargs(find_unused_parameters=True)
            if self.main:
                print("[train] find_unused_parameters enabled: trained modules include some that get no gradient")
        self.model, self.optimizer = accelerator.prepare(module, optimizer)
        self.params = [p for p in self.model.parameters() if p.requires_grad]
        self.fingerprint = _fingerprint(config, self.dataset.rows, self.world)

        self.validator = FixedNoiseValidator(
            [self.dataset.load_row(r) for r in self.dataset.rows[: config.validation.num_samples]],
            config.validation.sigmas, config.validation.seed)
        self.result = TrainResult(world_size=self.world)
        self.tracker = Tracker(config.tracking.experiment, config.tracking.uri, enabled=self.main)
        self.metrics_log = None  # opened with the output folder (main process)
        self.stop_requested = False

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
        write_json(self.output / "training_args.json", {**config.to_dict(), "world_size": self.world}, indent=4)
        if resumed_run_id:
            self.result.run_id = tracker.start(run_id=resumed_run_id)
            tracker.set_tags({f"resumed_at_step_{self.result.resumed_from_step}": "true"})
        else:
            self.result.run_id = tracker.start(flatten(config.to_dict()), tags=self.tags,
                                               run_name=os.environ.get("DVC_EXP_NAME") or None)
            tracker.log_dataset(self.dataset.rows, source=str(Path(self.metadata).resolve()),
                                name=Path(config.dataset.dataset_base_path).name or "dataset")
            for f in [self.output / "training_args.json", *self.log_files]:
                tracker.log_artifact(f, "config")
            tracker.set_tags({"world_size": str(self.world)})
        self.result.tracking_uri = tracker.uri

    def evaluate(self, at: int) -> None:
        """Fixed-noise validation loss and sample images (main process)."""
        metrics = self.validator.evaluate(self.pipe, self.schedule)
        self.result.val_history.append((at, metrics))
        self.log(metrics, at)
        print(f"[train] step {at}: val_loss {metrics['val_loss']:.5f}", flush=True)
        table = {"prompt": [], "seed": [], "step": [], "image": [], "image_key": []}
        for i, prompt, seed, image in _samples(self.pipe, self.config):
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
        state = self.accelerator.get_state_dict(self.model)  # collective under ZeRO-3: every rank calls it
        if self.main:
            prefix = self.config.output.remove_prefix_in_ckpt
            ckpt = {(k[len(prefix):] if prefix and k.startswith(prefix) else k): v.detach().to("cpu").contiguous()
                    for k, v in state.items() if k in self.trainable}
            if self.convert_checkpoint:
                ckpt = self.convert_checkpoint(ckpt, alpha=self.config.lora.lora_alpha)
            elif self.config.lora.lora_base_model == "dit":  # the DiT's LoRA in DiffSynth's own DiT names
                dit = "pipe.dit."
                dit = dit[len(prefix):] if prefix and dit.startswith(prefix) else dit
                ckpt = to_diffsynth_checkpoint(ckpt, self.pipe.family, dit, alpha=self.config.lora.lora_alpha)
            name = checkpoint_name(epoch=epoch, step=None if epoch is not None else at)
            path = save_checkpoint(ckpt, self.output / name)
            self.result.checkpoints.append(str(path))
            self.tracker.log_artifact(path, "checkpoints")
            self.evaluate(at)
        self.accelerator.wait_for_everyone()

    def save_state(self, at: int, epoch: int, position: int, finished: bool = False) -> None:
        """All ranks stage their RNG; the main process stages the rest and swaps the folder in."""
        accelerator, folder = self.accelerator, train_state.staging_dir(self.output)
        if self.main:
            train_state.begin(self.output)
        accelerator.wait_for_everyone()
        save_file({"generator": self.generator.get_state()}, str(folder / f"rng-rank{self.rank}.safetensors"))
        accelerator.wait_for_everyone()
        if self.main:
            own = accelerator.unwrap_model(self.model)
            save_file({n: p.detach().to("cpu").contiguous() for n, p in own.named_parameters() if p.requires_grad},
                      str(folder / "trainable.safetensors"))
            train_state.save_structure(self.optimizer.state_dict(), folder, "optimizer")
            train_state.save_structure(self.lr_schedule.state_dict(), folder, "scheduler")
            write_json(folder / "meta.json", {"step": at, "epoch": epoch, "offset": position, "finished": finished,
                                              "mlflow_run_id": self.result.run_id, "fingerprint": self.fingerprint})
            train_state.commit(self.output)
        accelerator.wait_for_everyone()

    def restore_or_reset(self) -> tuple[int, int, int, str | None]:
        """Continue an interrupted run (train.resume: auto) or clear the persisted folder for a fresh one.

        Returns (step, epoch, position in the epoch, MLflow run id to reopen).
        """
        meta = train_state.read_meta(self.output) if self.config.train.resume == "auto" else None
        if meta is None or meta.get("finished"):
            if self.main and self.output.exists():
                # a fresh run: old files in the (DVC-persisted) folder would mix with the new ones
                for old in [*self.output.glob("epoch-*.safetensors"), *self.output.glob("step-*.safetensors"),
                            self.output / "loss.csv"]:
                    old.unlink(missing_ok=True)
                shutil.rmtree(self.output / train_state.STATE_DIR, ignore_errors=True)
                if self.config.sample.out_dir:
                    shutil.rmtree(self.config.sample.out_dir, ignore_errors=True)
            self.accelerator.wait_for_everyone()
            return 0, 0, 0, None
        folder = self.output / train_state.STATE_DIR
        changed = sorted(k for k in set(meta["fingerprint"]) | set(self.fingerprint)
                         if meta["fingerprint"].get(k) != self.fingerprint.get(k))
        if changed:
            raise ConfigError(
                f"Cannot resume the interrupted run in {folder}: these params changed since it started: "
                f"{changed[:10]}. Restore them, or set train.resume: never to start over (this discards the "
                "interrupted run's progress).")
        own = dict(self.accelerator.unwrap_model(self.model).named_parameters())
        with torch.no_grad():
            for k, v in load_file(str(folder / "trainable.safetensors")).items():
                own[k].data.copy_(v)
        self.optimizer.load_state_dict(train_state.load_structure(folder, "optimizer"))
        self.lr_schedule.load_state_dict(train_state.load_structure(folder, "scheduler"))
        self.generator.set_state(load_file(str(folder / f"rng-rank{self.rank}.safetensors"))["generator"])
        self.result.resumed_from_step = meta["step"]
        if self.main:
            print(f"[train] resuming at step {meta['step']} (epoch {meta['epoch']}, item {meta['offset']}) "
                  f"from {folder}", flush=True)
        return meta["step"], meta["epoch"], meta["offset"], meta.get("mlflow_run_id")

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

    def train_step(self, item: dict, step: int) -> None:
        accelerator, started = self.accelerator, time.perf_counter()
        with accelerator.accumulate(self.model):
            loss = self.model(item)
            accelerator.backward(loss)
            grad_norm = None
            if accelerator.sync_gradients:
                norm = accelerator.clip_grad_norm_(self.params, self.config.train.max_grad_norm or float("inf"))
                grad_norm = float(norm) if norm is not None else None  # inf: measured, not clipped
            self.optimizer.step()
            self.optimizer.zero_grad()
        if accelerator.sync_gradients:
            self.lr_schedule.step()
        if self.main:
            value, elapsed = loss.detach().float().item(), time.perf_counter() - started
            self.result.loss_history.append((step, value))
            metrics = {"loss": value, "lr": self.lr_schedule.lr(), "step_time": elapsed,
                       "samples_per_s": self.world / elapsed, "peak_memory_mb": _peak_memory_mb(accelerator.device)}
            if grad_norm is not None:
                metrics["grad_norm"] = grad_norm
            self.log(metrics, step)

    def run(self) -> TrainResult:
        config, accelerator = self.config, self.accelerator
        step, epoch0, offset, run_id = self.restore_or_reset()
        previous_handlers = {s: signal.signal(s, self._request_stop) for s in (signal.SIGTERM, signal.SIGINT)}
        status = "FAILED"
        try:
            if self.main:
                self._open_local_logs()  # first: a tracking failure at start switches the CSV on
                self._start_tracking(run_id)
                if self.result.resumed_from_step is None:
                    self.evaluate(0)
            accelerator.wait_for_everyone()
            self.model.train()
            save_steps, done, state_pending, epoch = config.output.save_steps, False, False, epoch0
            for epoch in range(epoch0, config.train.num_epochs):
                start = offset if epoch == epoch0 else 0
                sampler = EpochShuffleSampler(len(self.dataset), config.train.seed, epoch, self.rank, self.world, start)
                loader = DataLoader(self.dataset, sampler=sampler, batch_size=1, collate_fn=first_item,
                                    num_workers=config.dataset.dataset_num_workers)
                position = start
                for item in loader:
                    step, position = step + 1, position + 1
                    self.train_step(item, step)
                    if save_steps and step % save_steps == 0:
                        self.save_point(step, None)
                        state_pending = True
                    done = bool(config.train.max_steps and step >= config.train.max_steps)
                    if accelerator.sync_gradients:  # resumable states only between optimizer steps
                        where = (epoch + 1, 0) if position >= sampler.per_rank else (epoch, position)
                        if self._stop_agreed():
                            self.save_state(step, *where)
                            raise TrainingInterrupted(f"stopped at step {step}; state saved in "
                                                      f"{self.output / train_state.STATE_DIR}. Run again to resume.")
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
            self.tracker.finish(status)
            if self.metrics_log:
                self.metrics_log.close()
            accelerator.end_training()
        return self.result


def run_training(config: Config, metadata_path: str | None = None, tags: dict | None = None,
                 log_files: list[str] | None = None) -> TrainResult:
    """Train as ``config`` says. ``metadata_path`` overrides the dataset's (the validated copy in DVC runs)."""
    return Trainer(config, metadata_path, tags, log_files).run()


def _checkpoint_converter(pipe: Pipeline, config: Config):
    """``output.align_to_opensource_format``: the family's saved-LoRA converter (checked before training)."""
    if not config.output.align_to_opensource_format:
        return None
    converter = pipe.checkpoint_converter()
    if converter is None:
        raise ConfigError(f"output.align_to_opensource_format: the {config.model.family} family has no open-source "
                          "LoRA format (DiffSynth has it for FLUX); turn the flag off")
    return converter


def _trains_unused(module: TrainingModule, trainable: list[str]) -> bool:
    unused = [f"pipe.{name}.{m}." for name, _ in module.pipe.named_children()
              for m in module.pipe.modules_without_gradient(name)]
    return any(n.startswith(tuple(unused)) for n in trainable) if unused else False


def _check_ranks_agree(accelerator: Accelerator, model: torch.nn.Module) -> None:
    """After DDP every rank must hold the same trainable weights; a mismatch means unsynchronised copies."""
    if accelerator.num_processes == 1:
        return
    own = accelerator.unwrap_model(model)
    checksum = torch.stack([p.detach().double().sum() for p in own.parameters() if p.requires_grad]).sum()
    sums = accelerator.gather(checksum.reshape(1).to(accelerator.device)).cpu()
    if accelerator.is_main_process:
        print(f"[train] trainable-weight checksums per rank: {sums.tolist()}", flush=True)
    if not torch.all(sums == sums[0]):
        raise RuntimeError(f"Ranks ended with different weights (checksums {sums.tolist()}): gradients were not "
                           "synchronised across processes.")


__all__ = ["run_training", "Trainer", "TrainResult", "TrainingModule", "configure_trainable", "TrainingInterrupted"]
