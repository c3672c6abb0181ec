"""The training loop on accelerate, with DiffSynth's semantics (its ``launch_training_task``). Each save point goes
to the components beside it: checkpoints (``checkpoint.py``), validation and samples (``evaluation.py``), tracking
(``run_log.py``), the resumable state (``run_state.py``); the loop only calls them at fixed points."""
from __future__ import annotations

import contextlib
import os
import time
from pathlib import Path

import torch
from accelerate import Accelerator
from accelerate.utils import DistributedDataParallelKwargs
from torch.utils.data import DataLoader

from ..config import Config, torch_dtype
from ..data.buckets import bucket_stats
from ..data.recipe import set_epoch
from ..families import spec_for
from ..progress import progress
from . import distributed, trajectory
from .distributed import TrainingInterrupted
from .block_swap import install_block_swap
from .checkpoint import Checkpointer
from .data import bucket_keys, open_training_data
from .ema import EMA
from .evaluation import Evaluator
from .memory import apply_memory_modes
from .module import (TrainingModule, apply_fp8, cache_source, configure_trainable, item_list, load_full_checkpoint,
                     trains_unused)
from .optim import build_optimizer, run_schedule
from .run_log import RunLog, peak_memory_mb
from .run_state import Position, RunState, StateStore, TrainResult, fingerprint
from .sampler import BucketBatchSampler
from .schedule import FlowMatchSchedule, TimestepSampling
from .validation import validator_for


class Trainer:
    """One training run: built in ``__init__``, run with :meth:`run`."""

    def __init__(self, config: Config, metadata_path: str | None = None, tags: dict | None = None,
                 log_files: list[str] | None = None, state_store: StateStore | None = None):
        self.config = config
        distributed.prepare_cpu_state()
        self.accelerator = accelerator = Accelerator(
            gradient_accumulation_steps=config.gradient.gradient_accumulation_steps,
            kwargs_handlers=[DistributedDataParallelKwargs(find_unused_parameters=config.train.find_unused_parameters)],
        )
        distributed.check_world_size(accelerator)
        distributed.check_backend(accelerator)
        self.sharded = distributed.is_sharded(accelerator)  # FSDP: each rank holds a shard of the weights
        self.main, self.rank, self.world = accelerator.is_main_process, accelerator.process_index, accelerator.num_processes
        self.output = Path(config.output.output_path)
        self.metadata = metadata_path or config.dataset.dataset_metadata_path
        # MLflow and the extra loggers (wandb, SwanLab); before the models load, so a missing package stops at once
        self.log = RunLog(config, self.output, self.main, tags, log_files or [])
        torch.manual_seed(config.train.seed)
        module = self._load_module()
        self._open_dataset()
        self._prepare(module)
        self.result = TrainResult(world_size=self.world)
        self.checkpointer = Checkpointer(self.output, self.trainable, config, self.family, self.log.tracker, self.ema)
        validation_rows = [self.dataset[i] for i in range(min(config.validation.num_samples, len(self.dataset.rows)))]
        self.evaluator = Evaluator(self.pipe, self.schedule, config, validator_for(
            validation_rows, config, module.encode), self.prompt_inputs, self.log.tracker, self.log.log, self.main)
        self._open_state(state_store)

    # ------------------------------------------------------------------ setup
    def _load_module(self) -> TrainingModule:
        """The family pipeline, made trainable in DiffSynth's order; from the encoder cache the encoders are never
        built (only the trained model(s) and the VAE decoder)."""
        config = self.config
        dtype = torch_dtype(config.model.torch_dtype)
        self.family = spec_for(config)
        self.cache_dir, self.cache_expected = cache_source(config, self.metadata)
        offload = config.model.initialize_model_on_cpu or config.train.enable_model_cpu_offload
        load_device = "cpu" if offload else self.accelerator.device
        role = "train_cached" if self.cache_dir else "full"
        self.pipe = self.family.load_pipeline(config, dtype, load_device, role)
        self.schedule = FlowMatchSchedule.for_family(self.family.name).with_sampling(TimestepSampling.from_config(config.train))
        if self.main:
            print(f"[train] {self.schedule.sampling.describe()}", flush=True)
        self.generator = torch.Generator().manual_seed(config.train.seed + 1000 * self.rank)
        module = TrainingModule(self.pipe, self.schedule, self.generator,
                                (config.train.min_timestep_boundary, config.train.max_timestep_boundary),
                                config.gradient.use_gradient_checkpointing_offload, config.train.task)
        if config.train.resume_from_checkpoint:
            load_full_checkpoint(module, config.train.resume_from_checkpoint, config.output.remove_prefix_in_ckpt)
        self.trainable = set(configure_trainable(module, config, dtype))
        apply_fp8(self.pipe, config, dtype)
        if config.train.task == trajectory.TASK:  # the frozen teacher: the trained models as they start
            module.trajectory = trajectory.TrajectoryImitation.build(self.pipe, config)
        self.memory = apply_memory_modes(module, config, dtype, self.accelerator)  # quant_options, CPU offload
        return module

    def _open_dataset(self) -> None:
        self.dataset, self.prompt_inputs, self.rows = open_training_data(
            self.config, self.family, self.cache_dir, self.cache_expected, self.metadata)
        self.bucket_keys = bucket_keys(self.dataset, self.config.train.batch_size)
        self.buckets = bucket_stats(self.bucket_keys, self.config.train.batch_size, self.world)

    def _prepare(self, module: TrainingModule) -> None:
        """Optimizer, LR schedule and the accelerate-wrapped model."""
        config, accelerator = self.config, self.accelerator
        optimizer = build_optimizer(config, [(n, p) for n, p in module.named_parameters() if p.requires_grad])
        # micro-steps per epoch on this rank (the sampler's length) and in the whole run: decay length, progress total
        self.batches_per_epoch = self.sampler(0, 0).per_rank
        self.total_micro_steps = min(self.batches_per_epoch * config.train.num_epochs,
                                     config.train.max_steps or float("inf"))
        self.lr_schedule = run_schedule(optimizer, config, self.batches_per_epoch, self.world)
        distributed.find_unused_if_needed(accelerator, trains_unused(module, self.trainable),
                                          config.train.find_unused_parameters)
        self.model, self.optimizer = accelerator.prepare(module, optimizer)
        self.block_swap = install_block_swap(accelerator, self.pipe, config)  # train.blocks_to_swap
        self.params = [p for p in self.model.parameters() if p.requires_grad]
        self.ema = EMA.from_config(config, accelerator.unwrap_model(self.model), self.sharded)  # None: ema_decay 0

    def _open_state(self, store: StateStore | None) -> None:
        """The resumable state: in ``<output_path>/state``, or where the caller's store keeps it. Machines with their
        own disks each keep a full copy (DDP: every rank holds it all); on a shared folder only the main process
        writes it."""
        store = (store or StateStore(self.output)).bind(self.config, self.rows, self.world)
        shared = distributed.output_is_shared(self.accelerator, self.output)  # a collective: every rank asks
        writes = self.main or (self.accelerator.is_local_main_process and not self.sharded and not shared)
        self.state = RunState(self, store, fingerprint(self.config, self.rows, self.world), writes)
        self.result.state_dir = str(store.parent) if store.carries_outputs else None

    def sampler(self, epoch: int, start: int) -> BucketBatchSampler:
        return BucketBatchSampler(self.bucket_keys, self.config.train.batch_size, self.config.train.seed, epoch,
                                  self.rank, self.world, start)

    # ------------------------------------------------------------------ the loop
    def run(self) -> TrainResult:
        start = self.state.restore_or_reset()
        if self.result.republished:  # nothing to train: no tracking either
            self.state.store.release()
            self.accelerator.end_training()
            return self.result
        self.stop, status = distributed.StopRequest(self.accelerator), "FAILED"  # SIGTERM/SIGINT: stop cleanly
        try:
            self._begin(start)
            step, epoch = start.step, start.epoch
            for epoch in range(start.epoch, self.config.train.num_epochs):
                offset = start.offset if epoch == start.epoch else 0
                sampler = self.sampler(epoch, offset)  # position and per_rank count this process's batches
                set_epoch(self.dataset, epoch)  # per-sample draws (caption dropout) of this epoch
                loader = DataLoader(self.dataset, batch_sampler=sampler, collate_fn=item_list,
                                    num_workers=self.config.dataset.dataset_num_workers)
                for position, items in enumerate(loader, start=offset + 1):  # batches done after this one
                    step += 1
                    self.train_step(items, step, sampler.samples_in_step(position - 1))
                    if self.on_step_end(step, epoch, position, sampler.per_rank):
                        break
                if self.on_epoch_end(step, epoch):
                    break
            self.on_train_end(step, epoch)
            status = "FINISHED"
        except (KeyboardInterrupt, TrainingInterrupted):
            status = "KILLED"
            raise
        finally:
            self.stop.close()
            self._end(status)
        return self.result

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
            if self.ema is not None:
                self.ema.update()
        self.result.samples_seen += samples
        if self.main:
            value, elapsed = loss.detach().float().item(), time.perf_counter() - started
            self.result.loss_history.append((step, value))
            # step = micro-step (one batch per process); an optimizer step every gradient_accumulation_steps
            metrics = {"loss": value, "lr": lr, "step_time": elapsed,
                       "samples_per_s": samples / elapsed, "samples_seen": self.result.samples_seen,
                       "optimizer_step": step // self.config.gradient.gradient_accumulation_steps,
                       "peak_memory_mb": peak_memory_mb(accelerator.device)}
            if grad_norm is not None:
                metrics["grad_norm"] = grad_norm
            self.log.log(metrics, step)

    # ------------------------------------------------------------------ what happens at fixed points
    def _begin(self, start: Position) -> None:
        """Open tracking, evaluate the untrained model (fresh runs), start the progress bar."""
        self.state_pending = False
        if self.main:
            self.result.run_id = self.log.start(
                start.run_id, self.result.resumed_from_step,
                {"world_size": self.world, "distributed_type": self.accelerator.distributed_type.value},
                self.rows, self.metadata or self.config.dataset.dataset_base_path, self.buckets)
            self.result.tracking_uri = self.log.tracker.uri
        if (self.main or self.sharded) and self.result.resumed_from_step is None:
            self._evaluate(0)
        self.accelerator.wait_for_everyone()
        self.model.train()
        self.bar = progress(total=self.total_micro_steps, desc="train", unit="step",
                            initial=start.step) if self.main else None

    def _max_steps_reached(self, step: int) -> bool:
        return bool(self.config.train.max_steps and step >= self.config.train.max_steps)

    def on_step_end(self, step: int, epoch: int, position: int, per_rank: int) -> bool:
        """Progress, DiffSynth's ``save_steps`` save point, and a resumable state at the next optimizer-step
        boundary (a stop request writes one and stops). True: the run is done."""
        if self.bar:
            self.bar.set_postfix(epoch=f"{epoch + 1}/{self.config.train.num_epochs}",
                                 loss=self.result.loss_history[-1][1])
            self.bar.update()
        save_steps = self.config.output.save_steps
        if save_steps and step % save_steps == 0:
            self.save_point(step, None)
            self.state_pending = True
        done = self._max_steps_reached(step)
        if self.accelerator.sync_gradients:  # resumable states only between optimizer steps
            where = (epoch + 1, 0) if position >= per_rank else (epoch, position)
            if self.stop.agreed():
                self.state.save(step, *where)
                raise TrainingInterrupted(f"stopped at step {step}; state saved in {self.state.folder}. Run again "
                                          "to resume.")
            if self.state_pending and not done:
                self.state.save(step, *where)
                self.state_pending = False
        return done

    def on_epoch_end(self, step: int, epoch: int) -> bool:
        """Without ``save_steps``, DiffSynth saves at every epoch end. True: the run is done."""
        done = self._max_steps_reached(step)
        if self.config.output.save_steps is None:
            self.save_point(step, epoch)
            if not done and self.accelerator.sync_gradients:
                self.state.save(step, epoch + 1, 0)
        return done

    def on_train_end(self, step: int, epoch: int) -> None:
        save_steps = self.config.output.save_steps
        if save_steps and step % save_steps != 0:
            self.save_point(step, None)
        if self.bar:
            self.bar.close()
        distributed.check_ranks_agree(self.accelerator, self.model)
        self.state.save(step, epoch + 1, 0, finished=True)
        self.result.steps = step

    def save_point(self, at: int, epoch: int | None) -> None:
        """DiffSynth's checkpoint (trainable tensors, prefix removed), then validation and samples."""
        state = self.accelerator.get_state_dict(self.model)  # collective under ZeRO-3/FSDP: every rank calls it
        if self.main:
            self.result.checkpoints.append(str(self.checkpointer.save(state, at, epoch)))
        if self.main or self.sharded:
            self._evaluate(at)
        self.accelerator.wait_for_everyone()

    def _evaluate(self, at: int) -> None:
        """Under FSDP the weights are gathered whole for evaluation on every rank."""
        whole = (distributed.whole_model(self.model, self.accelerator.state.fsdp_plugin.reshard_after_forward)
                 if self.sharded else contextlib.nullcontext())
        with whole:
            metrics = self.evaluator.evaluate(at)
        if metrics is not None:
            self.result.val_history.append((at, metrics))

    def _end(self, status: str) -> TrainResult:
        if self.main:
            self.state.store.release()
        self.log.finish(status)
        self.accelerator.end_training()
        return self.result


def run_training(config: Config, metadata_path: str | None = None, tags: dict | None = None,
                 log_files: list[str] | None = None, state_store: StateStore | None = None) -> TrainResult:
    """Train as ``config`` says; ``metadata_path`` overrides the dataset's (the validated copy in DVC runs).
    ``state_store``: where the resumable state lives (default ``<output_path>/state``). ``--task sft:data_process``
    only writes the encoder cache to ``output.output_path``, for a later ``--task sft:train``."""
    if config.train.task == "sft:data_process":
        from ..encoding import build_data_cache
        if int(os.environ.get("RANK", "0")) == 0:
            index = build_data_cache(config, metadata_path or config.dataset.dataset_metadata_path,
                                     config.output.output_path)
            print(f"[cache] encoded {index['rows']} rows into {config.output.output_path}")
        return TrainResult()
    return Trainer(config, metadata_path, tags, log_files, state_store).run()


__all__ = ["run_training", "Trainer", "TrainResult", "TrainingInterrupted"]
