"""``train.blocks_to_swap`` in training: installs the block-swap engine (diffsynth/models/block_swap.py) on the
DiT once accelerate has placed the model, or refuses the setups that own parameter placement themselves."""
from __future__ import annotations

from accelerate import Accelerator
from accelerate.utils import DistributedType

from ..errors import ConfigError
from ..models.block_swap import BlockSwap, BlockSwapError, enable_block_swap

# Tests set this on CPU runs: a released weight becomes a meta tensor, so any use outside its load window fails.
CHECK_PLACEMENT = False


def install_block_swap(accelerator: Accelerator, pipe, config) -> BlockSwap | None:
    """The engine on ``pipe.dit`` for ``config.train.blocks_to_swap`` blocks, or None when it is 0."""
    n = config.train.blocks_to_swap
    if not n:
        return None
    if n < 0:
        raise ConfigError(f"train.blocks_to_swap: {n} is negative; give a number of DiT blocks, or 0 for off")
    kind = accelerator.distributed_type
    if kind == DistributedType.FSDP:
        raise ConfigError("train.blocks_to_swap cannot be used with FSDP: FSDP shards and gathers the block "
                          "weights itself. Set train.blocks_to_swap: 0, or train without FSDP.")
    if kind == DistributedType.DEEPSPEED:
        plugin = accelerator.state.deepspeed_plugin
        if plugin is not None and plugin.zero_stage == 3:
            raise ConfigError("train.blocks_to_swap cannot be used with DeepSpeed ZeRO-3: ZeRO-3 partitions and "
                              "offloads the weights itself. Set train.blocks_to_swap: 0, or use ZeRO-1/2.")
    dit = getattr(pipe, "dit", None)
    if dit is None:
        raise ConfigError("train.blocks_to_swap: this pipeline has no DiT to swap blocks of")
    try:
        return enable_block_swap(dit, n, accelerator.device, check=CHECK_PLACEMENT)
    except BlockSwapError as e:
        raise ConfigError(str(e)) from None
