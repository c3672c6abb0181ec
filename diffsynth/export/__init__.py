"""LoRA and checkpoint export: formats (``lora_formats``), key checks against the base model (``check``),
whole-model folders (``full``), and :func:`export_checkpoint`, which the export stage and ``diffsynth export`` run."""
from .check import check_against_model, check_lora, original_weight_shapes, weight_shapes
from .full import load_full_weights, merge_lora, save_model_folder
from ..models.lora_names import FORMATS, is_lora_key, lora_modules, opensource_converter
from .lora_formats import ExportError, to_diffusers, to_original_names, write_format
from .run import FILE_NAMES, ExportResult, base_model, export_checkpoint, export_lora

__all__ = ["FORMATS", "FILE_NAMES", "ExportError", "ExportResult", "base_model", "check_against_model", "check_lora",
           "export_checkpoint", "export_lora", "is_lora_key", "load_full_weights", "lora_modules", "merge_lora", "opensource_converter",
           "original_weight_shapes", "save_model_folder", "to_diffusers", "to_original_names", "weight_shapes",
           "write_format"]
