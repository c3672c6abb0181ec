"""The training loop on accelerate, with DiffSynth's semantics (spec §4.1-4.4) plus what DiffSynth lacks:
a seed, a fixed-noise validation loss, sample images at every save point, and MLflow tracking."""
from __future__ import annotations

import contextlib
import importlib
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
from accelerate import Accelerator
from accelerate.utils import DistributedDataParallelKwargs
from torch.utils.data import DataLoader

from ..config import Config, ConfigError, flatten
from ..data.dataset import ImageRules, UnifiedDataset, split_keys
from ..families import get_family
from ..families.base import Pipeline
from ..files import write_json
from ..models.model_config import parse_model_configs
from ..tracking import MetricsCSV, Tracker
from .checkpoint import checkpoint_name, save_checkpoint, trainable_state_dict
from .lora import add_lora, parse_target_modules
from .loss import flow_match_loss
from .schedule import FlowMatchSchedule
from .validation import FixedNoiseValidator

DTYPES = {"bfloat16": torch.bfloat16, "float16": torch.float16, "float32": torch.float32}


def first_item(batch: list):
    """DiffSynth's collate: batch size is 1, the item is passed through unchanged."""
    return batch[0]


class TrainingModule(torch.nn.Module):
    """Wraps the family pipeline as ``self.pipe`` so parameter names read ``pipe.dit.<...>`` as in DiffSynth."""

    def __init__(self, pipe: Pipeline, schedule: FlowMatchSchedule, generator: torch.Generator,
                 offload_activations: bool = False):
        super().__init__()
        self.pipe = pipe
        self.schedule = schedule
        self.generator = generator
        self.offload_activations = offload_activations

    def forward(self, item: dict) -> torch.Tensor:
        inputs = self.pipe.encode(item)
        ctx = torch.autograd.graph.save_on_cpu() if self.offload_activations else contextlib.nullcontext()
        with ctx:
            return flow_match_loss(self.pipe, self.schedule, inputs, self.generator)


def configure_trainable(module: TrainingModule, config: Config, dtype: torch.dtype) -> list[str]:
    """Freeze everything, unfreeze ``trainable_models``, inject LoRA; return trainable parameter names."""
    pipe = module.pipe
    pipe.eval().requires_grad_(False)
    for name in split_keys(config.train.trainable_models):
        try:
            sub = pipe.get_submodule(name)
        except AttributeError:
            raise ConfigError(f"train.trainable_models: {name!r} is not a model of this pipeline; "
                              f"models: {[n for n, _ in pipe.named_children()]}") from None
        sub.train().requires_grad_(True)
    if config.lora.lora_base_model:
        base = getattr(pipe, config.lora.lora_base_model, None)
        if not isinstance(base, torch.nn.Module):
            raise ConfigError(f"lora.lora_base_model {config.lora.lora_base_model!r} is not a model of this "
                              f"pipeline; models: {[n for n, _ in pipe.named_children()]}")
        targets = parse_target_modules(config.lora.lora_target_modules, base)
        add_lora(base, targets, config.lora.lora_rank, dtype=dtype)
    if config.gradient.use_gradient_checkpointing or config.gradient.use_gradient_checkpointing_offload:
        for child in pipe.children():
            if hasattr(child, "enable_gradient_checkpointing") and any(p.requires_grad for p in child.parameters()):
                child.enable_gradient_checkpointing()
    names = [n for n, p in module.named_parameters() if p.requires_grad]
    if not names:
        raise ConfigError("No trainable parameters: check train.trainable_models and lora.* settings")
    return names


def build_optimizer(config: Config, params) -> torch.optim.Optimizer:
    cls = torch.optim.AdamW
    if config.train.customized_optimizer:
        module_name, _, class_name = config.train.customized_optimizer.rpartition(".")
        try:
            cls = getattr(importlib.import_module(module_name), class_name)
        except (ImportError, AttributeError, ValueError) as e:
            raise ConfigError(f"train.customized_optimizer {config.train.customized_optimizer!r} cannot be "
                              f"imported ({e}); give a dotted class path like bitsandbytes.optim.Adam8bit") from None
    return cls(params, lr=config.train.learning_rate, weight_decay=config.train.weight_decay)


@dataclass
class TrainResult:
    steps: int = 0
    checkpoints: list = field(default_factory=list)
    loss_history: list = field(default_factory=list)       # (step, loss)
    val_history: list = field(default_factory=list)        # (step, {metric: value})
    run_id: str | None = None
    tracking_uri: str | None = None
    world_size: int = 1


def _sample_images(pipe: Pipeline, config: Config) -> list[tuple[str, int, object]]:
    out = []
    for prompt in config.sample.prompts:
        for seed in config.sample.seeds:
            out.append((prompt, int(seed), pipe.sample(prompt, int(seed), config.sample.height,
                                                       config.sample.width, config.sample.num_inference_steps)))
    return out


def run_training(config: Config, metadata_path: str | None = None, tags: dict | None = None,
                 log_files: list[str] | None = None) -> TrainResult:
    """Train as ``config`` says. ``metadata_path`` overrides the dataset's (the validated copy in DVC runs)."""
    accelerator = Accelerator(
        gradient_accumulation_steps=config.gradient.gradient_accumulation_steps,
        kwargs_handlers=[DistributedDataParallelKwargs(find_unused_parameters=config.train.find_unused_parameters)],
    )
    main = accelerator.is_main_process
    dtype = DTYPES[config.model.torch_dtype]
    output = Path(config.output.output_path)
    torch.manual_seed(config.train.seed)

    family = get_family(config.model.family)
    pipe = family.load_pipeline(parse_model_configs(config.model.model_paths, config.model.model_id_with_origin_paths),
                                config.model.tokenizer_path, dtype, accelerator.device)
    schedule = FlowMatchSchedule.for_family(pipe.schedule_name)
    generator = torch.Generator().manual_seed(config.train.seed + 1000 * accelerator.process_index)
    module = TrainingModule(pipe, schedule, generator, config.gradient.use_gradient_checkpointing_offload)
    configure_trainable(module, config, dtype)

    rules = ImageRules(config.resolution.max_pixels, config.resolution.height, config.resolution.width,
                       pipe.height_factor, pipe.width_factor)
    metadata = metadata_path or config.dataset.dataset_metadata_path
    if not metadata:
        raise ConfigError("dataset.dataset_metadata_path is empty; cached-dataset training is not supported yet")
    dataset = UnifiedDataset(config.dataset.dataset_base_path, metadata, split_keys(config.dataset.data_file_keys),
                             rules, repeat=config.dataset.dataset_repeat)
    loader = DataLoader(dataset, shuffle=True, collate_fn=first_item, num_workers=config.dataset.dataset_num_workers,
                        generator=torch.Generator().manual_seed(config.train.seed))
    optimizer = build_optimizer(config, [p for p in module.parameters() if p.requires_grad])
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda _: 1.0)
    model, optimizer, loader, scheduler = accelerator.prepare(module, optimizer, loader, scheduler)

    validator = FixedNoiseValidator([dataset.load_row(r) for r in dataset.rows[: config.validation.num_samples]],
                                    config.validation.sigmas, config.validation.seed)
    result = TrainResult(world_size=accelerator.num_processes)
    tracker = Tracker(config.tracking.experiment, config.tracking.uri, enabled=main)
    csv_log = MetricsCSV(output / "loss.csv") if main and config.tracking.enable_csv_log else None
    tb_writer = None
    if main and config.tracking.enable_tensorboard_log:
        from torch.utils.tensorboard import SummaryWriter
        tb_writer = SummaryWriter(str(output / "tensorboard_log"))

    def log(metrics: dict, step: int) -> None:
        tracker.log_metrics(metrics, step)
        if csv_log:
            csv_log.log(metrics, step)
        if tb_writer:
            for k, v in metrics.items():
                tb_writer.add_scalar(k, v, step)

    def save_point(step: int, epoch: int | None) -> None:
        accelerator.wait_for_everyone()
        if not main:
            return
        state = trainable_state_dict(accelerator.unwrap_model(model), config.output.remove_prefix_in_ckpt)
        path = save_checkpoint(state, output / checkpoint_name(epoch=epoch, step=None if epoch is not None else step))
        result.checkpoints.append(str(path))
        tracker.log_artifact(path, "checkpoints")
        evaluate(step)

    def evaluate(step: int) -> None:
        metrics = validator.evaluate(pipe, schedule)
        result.val_history.append((step, metrics))
        log(metrics, step)
        print(f"[train] step {step}: val_loss {metrics['val_loss']:.5f}", flush=True)
        table = {"prompt": [], "seed": [], "step": [], "image": []}
        for i, (prompt, seed, image) in enumerate(_sample_images(pipe, config)):
            key = f"sample/p{i // len(config.sample.seeds)}_s{seed}"
            tracker.log_image(image, key=key, step=step)
            table["prompt"].append(prompt), table["seed"].append(seed), table["step"].append(step)
            table["image"].append(f"{key} step {step}")
        tracker.log_table(table, "samples.json")

    status = "FAILED"
    try:
        if main:
            output.mkdir(parents=True, exist_ok=True)
            write_json(output / "training_args.json", config.to_dict(), indent=4)
            result.run_id = tracker.start(flatten(config.to_dict()), tags=tags, run_name=_run_name())
            result.tracking_uri = tracker.uri
            tracker.log_dataset(dataset.rows, source=str(Path(metadata).resolve()), name=Path(metadata).parent.name)
            for f in [output / "training_args.json", *(log_files or [])]:
                tracker.log_artifact(f, "config")
            tracker.set_tags({"world_size": str(accelerator.num_processes)})
            evaluate(0)
        model.train()
        step, save_steps = 0, config.output.save_steps
        done = False
        for epoch in range(config.train.num_epochs):
            for item in loader:
                start = time.perf_counter()
                with accelerator.accumulate(model):
                    loss = model(item)
                    accelerator.backward(loss)
                    optimizer.step()
                    scheduler.step()
                    optimizer.zero_grad()
                step += 1
                if main:
                    value = loss.detach().float().item()
                    result.loss_history.append((step, value))
                    log({"loss": value, "lr": scheduler.get_last_lr()[0],
                         "step_time": time.perf_counter() - start}, step)
                if save_steps and step % save_steps == 0:
                    save_point(step, None)
                if config.train.max_steps and step >= config.train.max_steps:
                    done = True
                    break
            if save_steps is None and not done:
                save_point(step, epoch)
            if done:
                break
        if save_steps and step % save_steps != 0:
            save_point(step, None)
        elif save_steps is None and done:
            save_point(step, epoch)
        result.steps = step
        status = "FINISHED"
    except KeyboardInterrupt:
        status = "KILLED"
        raise
    finally:
        tracker.finish(status)
        if csv_log:
            csv_log.close()
        if tb_writer:
            tb_writer.close()
        accelerator.end_training()
    return result


def _run_name() -> str | None:
    import os
    return os.environ.get("DVC_EXP_NAME") or None


__all__ = ["run_training", "TrainResult", "TrainingModule", "configure_trainable"]
