"""What the training loop needs to know about the process layout beyond what accelerate hides: sharded (FSDP2)
weights and optimizer state gathered at save points, evaluation on a sharded model, output folders that are
not shared between machines, and the silent fallbacks of accelerate on a CPU."""
from __future__ import annotations

import contextlib
import os
import signal
import uuid
from pathlib import Path

import torch
from accelerate import Accelerator, PartialState
from accelerate.utils import DistributedDataParallelKwargs, DistributedType, gather_object

from ..errors import ConfigError, DiffSynthError


def _env_flag(name: str) -> bool:
    return os.environ.get(name, "false").lower() in ("1", "true", "yes")


def prepare_cpu_state() -> None:
    """Call before creating the Accelerator.

    accelerate (1.15) applies an FSDP or DeepSpeed config only on accelerators: under ACCELERATE_USE_CPU it runs
    plain DDP (MULTI_CPU) without a word. FSDP2 itself runs on CPU over gloo, so for FSDP2 we let accelerate take
    its FSDP branch (which it gates on MULTI_GPU); FSDP1 (`device_id=cpu:N` is rejected by torch) and DeepSpeed
    (no CPU path in accelerate) are refused rather than silently replaced by DDP.
    """
    if not _env_flag("ACCELERATE_USE_CPU") or int(os.environ.get("WORLD_SIZE", "1")) < 2:
        return
    if _env_flag("ACCELERATE_USE_DEEPSPEED"):
        raise ConfigError("DeepSpeed configs need GPUs: with ACCELERATE_USE_CPU accelerate would silently run DDP "
                          "instead. Use accelerate.config=ddp (or fsdp) on a CPU.")
    if _env_flag("ACCELERATE_USE_FSDP"):
        if os.environ.get("FSDP_VERSION", "1") != "2":
            raise ConfigError("FSDP on CPU needs FSDP2 (fsdp_version: 2, as configs/accelerate/fsdp.yaml ships); "
                              "accelerate's FSDP1 passes a device id torch rejects on CPU.")
        state = PartialState(cpu=True)
        if state.distributed_type == DistributedType.MULTI_CPU:
            state.distributed_type = DistributedType.MULTI_GPU  # accelerate's FSDP branch is taken from here


def check_backend(accelerator: Accelerator) -> None:
    """The launcher asked for FSDP/DeepSpeed: refuse to train if accelerate set up something else."""
    for flag, kind in (("ACCELERATE_USE_FSDP", DistributedType.FSDP), ("ACCELERATE_USE_DEEPSPEED",
                                                                      DistributedType.DEEPSPEED)):
        if _env_flag(flag) and accelerator.num_processes > 1 and accelerator.distributed_type != kind:
            raise RuntimeError(f"The accelerate config asks for {kind.value} but accelerate set up "
                               f"{accelerator.distributed_type.value}; refusing to train with another strategy.")


def is_sharded(accelerator: Accelerator) -> bool:
    return accelerator.distributed_type == DistributedType.FSDP


def full_tensor(t: torch.Tensor) -> torch.Tensor:
    """The whole tensor of an FSDP2 shard (a collective: every rank calls it in the same order)."""
    return t.full_tensor() if hasattr(t, "full_tensor") else t


def full_trainable_weights(model: torch.nn.Module, keep: bool = True) -> dict[str, torch.Tensor]:
    """Every trainable parameter, whole, as CPU copies if ``keep`` (else an empty dict). Every rank must call
    it: sharded parameters are gathered; only the ranks that write a file keep a copy."""
    out = {}
    for n, p in model.named_parameters():
        if p.requires_grad:
            whole = full_tensor(p.detach())
            if keep:
                out[n] = whole.to("cpu").contiguous()
    return out


def load_trainable_weights(model: torch.nn.Module, weights: dict[str, torch.Tensor]) -> None:
    """Copy whole tensors into the parameters; a sharded parameter takes its own slice."""
    from torch.distributed.tensor import DTensor, distribute_tensor

    own = dict(model.named_parameters())
    with torch.no_grad():
        for k, v in weights.items():
            p = own[k]
            if isinstance(p, DTensor):
                v = distribute_tensor(v.to(p.dtype), p.device_mesh, p.placements)
            p.data.copy_(v)


def optimizer_state(model: torch.nn.Module, optimizer, sharded: bool) -> dict:
    """The (accelerate-wrapped) optimizer's state_dict. Under FSDP2 its tensors are shards: they are gathered
    whole onto the main process's CPU (a collective; the other ranks get an empty dict) and keyed by parameter
    name, so the state reloads into any sharding of the same model."""
    if not sharded:
        return optimizer.state_dict()
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_optimizer_state_dict

    return get_optimizer_state_dict(model, optimizer.optimizer,
                                    options=StateDictOptions(full_state_dict=True, cpu_offload=True))


def load_optimizer_state(model: torch.nn.Module, optimizer, state: dict, sharded: bool) -> None:
    if not sharded:
        optimizer.load_state_dict(state)
        return
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_optimizer_state_dict

    # Every rank passes the whole state read from the file and keeps its own shard of it. strict=False: trained
    # parameters that never get a gradient (Qwen-Image's last text-stream layers) have no optimizer state.
    set_optimizer_state_dict(model, optimizer.optimizer, state,
                             options=StateDictOptions(full_state_dict=True, strict=False))


@contextlib.contextmanager
def whole_model(model: torch.nn.Module, reshard_after_forward: bool = True):
    """Evaluation calls the pipeline's parts directly, on the main process only. Under FSDP2 each rank holds
    a shard of every weight: gather them on every rank (a collective) and keep them whole until the block ends;
    forward hooks of wrapped blocks would otherwise re-shard after each call and wait for the other ranks."""
    from torch.distributed.fsdp import FSDPModule

    sharded = [m for m in model.modules() if isinstance(m, FSDPModule)]
    if not sharded:
        yield
        return
    # FSDP2 takes the first wrapped module to run forward as the root; evaluation may call an inner block
    # first, so settle the root (the whole model) now. No public API for this in torch 2.13.
    model._get_fsdp_state()._lazy_init()
    for m in sharded:
        m.unshard()
        m.set_reshard_after_forward(False, recurse=False)  # torch's documented way to run evals
    try:
        yield
    finally:
        for m in sharded:
            # as in training: inner blocks as configured, the root never (FSDP2's own choice for the root)
            m.set_reshard_after_forward(reshard_after_forward and m is not model, recurse=False)
            m.reshard()


def output_is_shared(accelerator: Accelerator, folder: Path) -> bool:
    """Whether every process sees the main process's ``folder`` (one machine, or a shared filesystem).

    On machines with their own disks each machine keeps its own copy of the resumable state (see save_state).
    """
    if accelerator.num_processes == 1:
        return True
    token = None
    if accelerator.is_main_process:
        folder.mkdir(parents=True, exist_ok=True)
        token = uuid.uuid4().hex
        (folder / ".shared-probe").write_text(token)
    token = gather_object([token])[0]  # gather_object keeps rank order: the main process's token first
    probe = folder / ".shared-probe"
    seen = probe.exists() and probe.read_text() == token
    shared = all(gather_object([seen]))
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        probe.unlink(missing_ok=True)
    return shared


def check_world_size(accelerator: Accelerator) -> None:
    """`accelerate launch --multi_gpu` on a CPU machine without ACCELERATE_USE_CPU runs independent copies."""
    expected = int(os.environ.get("WORLD_SIZE", "1"))
    if expected != accelerator.num_processes:
        raise RuntimeError(
            f"The launcher started {expected} processes but accelerate sees {accelerator.num_processes}: they would "
            "train unsynchronised copies. On CPU use `accelerate launch --multi_gpu --num_processes N` with "
            "ACCELERATE_USE_CPU=1.")


def check_ranks_agree(accelerator: Accelerator, model: torch.nn.Module) -> None:
    """After DDP every rank must hold the same trainable weights; a mismatch means unsynchronised copies."""
    if accelerator.num_processes == 1:
        return
    # Under FSDP each rank holds a shard: the sums are over the gathered whole weights, so the ranks agree by
    # construction and the value is comparable with a DDP run of the same training.
    own = accelerator.unwrap_model(model)
    checksum = torch.stack([full_tensor(p.detach()).double().sum()
                            for p in own.parameters() if p.requires_grad]).sum()
    sums = accelerator.gather(checksum.reshape(1).to(accelerator.device)).cpu()
    if accelerator.is_main_process:
        print(f"[train] trainable-weight checksums per rank: {sums.tolist()}", flush=True)
    if not torch.all(sums == sums[0]):
        raise RuntimeError(f"Ranks ended with different weights (checksums {sums.tolist()}): gradients were not "
                           "synchronised across processes.")


class TrainingInterrupted(DiffSynthError, RuntimeError):
    """SIGTERM/SIGINT arrived; a resumable state was written. Run again with train.resume: auto."""


class StopRequest:
    """SIGTERM/SIGINT while training: noted, and acted on at the next optimizer step by every rank at once."""

    def __init__(self, accelerator: Accelerator):
        self.accelerator, self.requested = accelerator, False
        self._previous = {s: signal.signal(s, self._note) for s in (signal.SIGTERM, signal.SIGINT)}

    def _note(self, signum, _frame) -> None:
        self.requested = True
        print(f"[train] signal {signum}: writing a resumable state at the next optimizer step", flush=True)

    def agreed(self) -> bool:
        """Every rank must stop at the same step, whichever one got the signal."""
        if self.accelerator.num_processes > 1:
            flag = torch.tensor([1.0 if self.requested else 0.0], device=self.accelerator.device)
            self.requested = bool(self.accelerator.reduce(flag, reduction="sum").item() > 0)
        return self.requested

    def close(self) -> None:
        for s, handler in self._previous.items():
            signal.signal(s, handler)


def find_unused_if_needed(accelerator: Accelerator, trains_unused: bool, asked: bool) -> None:
    """A multi-process full fine-tune that trains modules the loss never reaches needs DDP's
    ``find_unused_parameters`` (DiffSynth: a crash); switch it on and say so."""
    if accelerator.num_processes > 1 and not is_sharded(accelerator) and not asked and trains_unused:
        accelerator.ddp_handler = DistributedDataParallelKwargs(find_unused_parameters=True)
        if accelerator.is_main_process:
            print("[train] find_unused_parameters enabled: trained modules include some that get no gradient")
