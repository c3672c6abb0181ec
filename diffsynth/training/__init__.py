"""Training: flow-matching schedule and loss, LoRA, the loop, checkpoints."""
from .schedule import FlowMatchSchedule

__all__ = ["FlowMatchSchedule"]
