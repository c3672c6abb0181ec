"""Typed configuration: one dataclass per params.yaml section, YAML coercion and the whole-run checks.

Every field of a section is one key of params.yaml and one ``--flag`` of ``diffsynth train`` (the DiffSynth
command-line layer is ``command_line.py``). Fields that
exist in DiffSynth's ``train.py`` keep its name, type, default and meaning (DiffSynth-Studio's
``diffsynth/diffusion/parsers.py``; the flag table is docs/flags.md); fields we add are marked ``ours`` in their
metadata. The tiny demo in params.yaml overrides some defaults (smaller sizes, float32 on CPU); the dataclass
defaults are DiffSynth's.
"""
from __future__ import annotations

import dataclasses
import difflib
import json
import os
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Optional, get_args, get_origin, get_type_hints

import yaml

from .errors import ConfigError



def torch_dtype(name: str):
    """The torch dtype a ``model.torch_dtype`` value means (torch is imported only by whoever asks)."""
    import torch
    return {"bfloat16": torch.bfloat16, "float16": torch.float16, "float32": torch.float32}[name]


def _f(default, help: str, *, flag: str | None = None, ours: bool = False, choices=None):
    return field(default=default, metadata={"help": help, "flag": flag, "ours": ours, "choices": choices})


def _fl(default, help: str, *, ours: bool = False):
    return field(default_factory=lambda: list(default), metadata={"help": help, "ours": ours})


@dataclass
class DatasetConfig:
    dataset_base_path: str = _f("", "root folder; relative file paths in the metadata are joined to it")
    dataset_metadata_path: Optional[str] = _f(None, "metadata.csv/.json/.jsonl (other extensions are read as CSV)")
    dataset_repeat: int = _f(1, "dataset length multiplier per epoch")
    dataset_num_workers: int = _f(0, "DataLoader worker processes")
    data_file_keys: str = _f("image,video", "comma list of metadata columns holding file paths")
    source: str = _f("local", "where the data comes from: builtin (generated sample), local (metadata file), "
                     "modelscope, or folder (images/videos under dataset_base_path, recursive, each with a same-name "
                     ".txt caption, as kohya/ai-toolkit lay them out; dataset_metadata_path is not read)",
                     ours=True, choices=["builtin", "local", "modelscope", "folder"])
    builtin_name: str = _f("shapes", "built-in sample dataset when source=builtin: shapes, moving_shapes, "
                           "shapes_edit (reference images under the data_file_keys column beside image), shapes_control "
                           "(shapes with their edge maps as control images, Z-Image's controlnet_image), "
                           "shapes_distill / moving_shapes_distill (with direct_distill's seed, rand_device, "
                           "num_inference_steps, cfg_scale columns), moving_shapes_conditioned (clips with "
                           "control clips, reference images, camera moves and motion buckets), or "
                           "moving_shapes_control (control videos / reference images under the data_file_keys "
                           "columns beside video)", ours=True)
    modelscope_dataset_id: str = _f("", "ModelScope dataset id when source=modelscope", ours=True)
    modelscope_include: str = _f("", "comma list of file globs to download from the ModelScope dataset "
                                     "(modelscope download --include); empty: all files", ours=True)
    on_invalid: str = _f("error", "invalid rows: error (stop before training) or skip (train on the rest)",
                         ours=True, choices=["error", "skip"])
    caption_extension: str = _f(".txt", "source folder: caption file beside each image/video (kohya's "
                                "--caption_extension)", ours=True)
    missing_caption: str = _f("empty", "source folder, a file without caption: empty (train with the empty caption, "
                              "a warning per file, as kohya does) or error (the row is invalid)", ours=True,
                              choices=["empty", "error"])
    trigger_word: str = _f("", "substituted for [trigger] in each caption, else prepended as '<trigger> <caption>' "
                           "(ai-toolkit's rule); empty: captions unchanged", ours=True)
    caption_dropout: float = _f(0.0, "probability that a sample trains on the empty prompt (drawn per sample from "
                                "train.seed, epoch and position; encoded once in the encoder cache)", ours=True)
    masked_loss: bool = _f(False, "weight the loss by a per-sample mask (mask_column cell, else <name>_mask.png "
                           "beside the file; none: all ones), resized to the latent grid; 0 = no gradient", ours=True)
    mask_column: str = _f("mask", "masked_loss: metadata column holding mask file paths (white = trained)", ours=True)
    datasets: list = _fl([], "several datasets in one run: a list of mappings with source (local|folder), "
                         "dataset_base_path, dataset_metadata_path, dataset_repeat, max_pixels, height, width, "
                         "caption_extension, missing_caption, trigger_word, caption_dropout, masked_loss, mask_column "
                         "and weight (loss multiplier); unset keys inherit dataset.* / resolution.*; empty: the one "
                         "dataset above", ours=True)


@dataclass
class ResolutionConfig:
    height: Optional[int] = _f(None, "fixed height; leave height or width empty for dynamic resolution")
    width: Optional[int] = _f(None, "fixed width; leave height or width empty for dynamic resolution")
    max_pixels: int = _f(1024 * 1024, "dynamic resolution: larger images are scaled down to this area")
    num_frames: int = _f(81, "video: frames taken from each clip (reduced to 4k+1)")
    frame_sampling: str = _f("first", "video: which frames: first (the first num_frames, DiffSynth's) | uniform "
                             "(evenly spaced over the clip) | random (consecutive, from a start drawn per clip from "
                             "frame_seed)", ours=True, choices=["first", "uniform", "random"])
    frame_seed: int = _f(0, "frame_sampling random: seed of each clip's start (fixed per clip, so the encoder cache "
                         "holds it)", ours=True)


def _default_family() -> str:
    from .families import default_family  # the families declare which one DiffSynth's train.py defaults to
    return default_family()


@dataclass
class ModelConfigSection:
    family: str = field(default_factory=_default_family, metadata={
        "help": "model family or alias (`diffsynth families` lists them); a variant is chosen by its extra input, as "
                "DiffSynth's one script per family does", "flag": None, "ours": True, "choices": None})
    tiny_preset: str = _f("", "generate a tiny random model of this family in the real layout (test/demo only)",
                          ours=True)
    model_paths: Optional[str] = _f(None, "JSON list of model files; an item may be a list of shards")
    model_id_with_origin_paths: Optional[str] = _f(None, "comma list of model_id:glob, e.g. Qwen/Qwen-Image:vae/*.safetensors")
    tokenizer_path: Optional[str] = _f(None, "tokenizer folder or model_id:folder/")
    processor_path: Optional[str] = _f(None, "image processor folder or model_id:folder/ (edit models)")
    tokenizer_1_path: Optional[str] = _f(None, "FLUX CLIP tokenizer folder or model_id:folder/ "
                                         "(None: black-forest-labs/FLUX.1-dev:tokenizer/)")
    tokenizer_2_path: Optional[str] = _f(None, "FLUX T5 tokenizer folder or model_id:folder/ "
                                         "(None: black-forest-labs/FLUX.1-dev:tokenizer_2/)")
    extra_inputs: Optional[str] = _f(None, "comma list of metadata columns passed to the model as extra inputs")
    zero_cond_t: bool = _f(False, "Qwen-Image-Edit-2511: edit-image tokens are modulated at timestep 0")
    edit_image_area: int = _f(1024 * 1024, "Qwen-Image-Edit: each edit image is resized to this area (ratio kept, "
                              "sides multiples of 32) before VAE encoding; DiffSynth uses 1024*1024", ours=True)
    fp8_models: Optional[str] = _f(None, "models stored in fp8 (entries of the two model lists)")
    quant_options: Optional[str] = _f(None, "dynamic quantization of frozen Linear weights for LoRA training: "
                                      "';'-separated <model entry>:<method>[/<exclude modules>], e.g. "
                                      "...:bitsandbytes_nf4/img_mod.1,txt_mod.1 (methods: models/quantize.py)")
    offload_models: Optional[str] = _f(None, "comma list of frozen model entries kept in CPU memory between uses "
                                       "(loaded per layer for each forward)")
    initialize_model_on_cpu: bool = _f(False, "load the models into CPU memory; accelerate moves them to the GPU "
                                              "when training starts (DeepSpeed ZeRO-3 partitions them first)")
    enable_npu_patch: bool = _f(False, "DiffSynth's Ascend NPU kernel swap (fused RMSNorm and RoPE, the same "
                                       "arithmetic; DiffSynth applies it only where torch_npu finds an NPU): accepted "
                                       "so its NPU recipes run as written; this trainer has no NPU kernels, so it "
                                       "changes nothing")
    torch_dtype: str = _f("bfloat16", "dtype the models are loaded and computed in", ours=True,
                          choices=["bfloat16", "float16", "float32"])
    lpips_path: str = _f("DiffSynth-Studio/ImageMetrics:LPIPS/alexnet.safetensors",
                         "train.task trajectory_imitation: the AlexNet LPIPS weights (model_id:file, fetched by the "
                         "models stage, or a local file) in DiffSynth-Studio's layout", ours=True)


@dataclass
class TrainConfig:
    learning_rate: float = _f(1e-4, "AdamW learning rate (DiffSynth suggests 1e-4 LoRA, 1e-5 full)")
    num_epochs: int = _f(1, "number of epochs")
    trainable_models: Optional[str] = _f(None, "comma list of models (or dotted sub-modules) to train fully")
    find_unused_parameters: bool = _f(False, "DDP: tolerate parameters that get no gradient")
    weight_decay: float = _f(0.01, "AdamW weight decay")
    task: str = _f("sft", "training task: sft; sft:data_process writes the encoder cache to output_path and stops; "
                   "sft:train trains from the cache in dataset_base_path (DiffSynth's split training); "
                   "direct_distill: the few-step student's sample from each row's seed against the row's image; "
                   "trajectory_imitation (Z-Image-Turbo): an 8-step student matches a frozen copy's 50-step CFG-2 "
                   "trajectory, plus an LPIPS term (model.lpips_path) that carries no gradient",
                   choices=["sft", "sft:data_process", "sft:train", "direct_distill", "trajectory_imitation"])
    customized_optimizer: Optional[str] = _f(None, "dotted optimizer class, default torch.optim.AdamW")
    fused_optimizer: bool = _f(True, "AdamW's fused kernel (same update up to rounding, ~4x faster step)", ours=True)
    optimizer: str = _f("adamw", "adamw (torch, DiffSynth's) | adamw8bit (bitsandbytes, extra [bitsandbytes]) | prodigy "
                        "(prodigyopt, extra [prodigy]; set learning_rate 1.0) | adafactor (transformers, fixed lr)",
                        ours=True, choices=["adamw", "adamw8bit", "prodigy", "adafactor"])
    ema_decay: float = _f(0.0, "EMA of the trained weights, updated each optimizer step (e.g. 0.999), saved beside each "
                          "checkpoint as <name>.ema.safetensors and in the resumable state; 0: off", ours=True)
    loraplus_lr_ratio: Optional[float] = _f(None, "LoRA+: LoRA B matrices train at learning_rate x this ratio "
                                            "(kohya's loraplus_lr_ratio, e.g. 16); None: off", ours=True)
    dop_weight: float = _f(0.0, "differential output preservation (ai-toolkit's): weight of the MSE between the "
                           "prediction with and without the LoRA on each prompt with its trigger word replaced by "
                           "dop_class; 0: off", ours=True)
    dop_class: str = _f("", "dop_weight: the class word replacing the trigger word (e.g. 'person' for trigger 'sks')",
                        ours=True)
    resume_from_checkpoint: Optional[str] = _f(None, "full fine-tune checkpoint loaded before training (weights only)")
    seed: int = _f(0, "seed for data order, noise and timesteps (DiffSynth has none)", ours=True)
    max_steps: Optional[int] = _f(None, "stop after this many micro-steps, i.e. batches (None: run all epochs)",
                                  ours=True)
    batch_size: int = _f(1, "samples per micro-step, all of one shape bucket (1: DiffSynth's behaviour, bit for bit)",
                         ours=True)
    lr_scheduler: str = _f("constant", "constant | constant_with_warmup | cosine | linear (decay to "
                           "lr_min_ratio over the run's optimizer steps, after the warm-up) | diffsynth (DiffSynth's "
                           "hidden ConstantLR: first 5 scheduler steps at lr/3)", ours=True,
                           choices=["constant", "constant_with_warmup", "cosine", "linear", "diffsynth"])
    lr_warmup_steps: int = _f(0, "optimizer steps of linear warm-up from 0 (diffusers' convention) for "
                              "constant_with_warmup, cosine and linear", ours=True)
    lr_min_ratio: float = _f(0.0, "cosine / linear: final lr as a fraction of learning_rate", ours=True)
    max_grad_norm: Optional[float] = _f(None, "clip the gradient norm to this value (None: no clipping)", ours=True)
    resume: str = _f("auto", "auto: continue an interrupted run from <output_path>/state; never: start fresh",
                     ours=True, choices=["auto", "never"])
    min_timestep_boundary: float = _f(0.0, "lower end of the sampled timestep range, as a fraction of the grid")
    max_timestep_boundary: float = _f(1.0, "upper end of the sampled timestep range (Wan2.2 experts)")
    blocks_to_swap: int = _f(0, "DiT blocks whose frozen weights stay on the host and stream to the device "
                             "for forward and backward (0: off)", ours=True)
    enable_model_cpu_offload: bool = _f(False, "layer-wise offload training: weights live in CPU memory and each "
                                        "layer is loaded to the device for its forward and backward")
    enable_optimizer_cpu_offload: bool = _f(False, "with enable_model_cpu_offload: trainable weights, gradients "
                                            "and optimizer states live in CPU memory, the optimizer steps there")
    cpu_offload_split_threshold: Optional[int] = _f(None, "with enable_model_cpu_offload: a module above this many "
                                                    "2**20 parameters is split into its children (None: every leaf "
                                                    "module is a unit)")
    timestep_sampling: str = _f("diffsynth", "how a step draws its noise level: diffsynth (uniform grid index with "
                                "DiffSynth's bell-curve loss weights) | uniform | logit_normal | sigmoid | shifted "
                                "(continuous sigma as SD3/kohya/musubi, loss weight 1: a change from DiffSynth)",
                                ours=True, choices=["diffsynth", "uniform", "logit_normal", "sigmoid", "shifted"])
    timestep_logit_mean: float = _f(0.0, "logit_normal: mean of the normal whose sigmoid is sigma", ours=True)
    timestep_logit_std: float = _f(1.0, "logit_normal: std of the normal whose sigmoid is sigma", ours=True)
    timestep_sigmoid_scale: float = _f(1.0, "sigmoid / shifted: sigma = sigmoid(scale * N(0,1)) (kohya sigmoid_scale)",
                                       ours=True)
    timestep_shift: float = _f(3.0, "shifted: sigma = shift*s / (1 + (shift-1)*s) (kohya discrete_flow_shift)",
                               ours=True)


@dataclass
class LoraConfigSection:
    lora_base_model: Optional[str] = _f(None, "model to put LoRA on, e.g. dit")
    lora_target_modules: str = _f("q,k,v,o,ffn.0,ffn.2", "comma list of module-name suffixes")
    lora_rank: int = _f(32, "LoRA rank")
    lora_alpha: Optional[float] = _f(None, "LoRA alpha (None: = rank, DiffSynth's fixed choice)", ours=True)
    adapter: str = _f("lora", "adapter trained on lora_target_modules: lora (DiffSynth's) | dora (LoRA with a learned "
                      "per-row magnitude) | loha (Hadamard product of two rank-r pairs) | lokr (Kronecker product), "
                      "all through peft with lora_rank and lora_alpha", ours=True,
                      choices=["lora", "dora", "loha", "lokr"])
    lokr_factor: int = _f(-1, "lokr: the Kronecker factor's size (peft decompose_factor; -1: as square as the layer "
                          "allows)", ours=True)
    lora_checkpoint: Optional[str] = _f(None, "LoRA file to continue training from")
    preset_lora_path: Optional[str] = _f(None, "LoRA fused into the base weights before training")
    preset_lora_model: Optional[str] = _f(None, "model the preset LoRA is fused into, e.g. dit")


@dataclass
class GradientConfig:
    use_gradient_checkpointing: bool = _f(False, "recompute each block's activations in backward")
    use_gradient_checkpointing_offload: bool = _f(False, "checkpointing with saved inputs in CPU memory")
    gradient_accumulation_steps: int = _f(1, "micro-steps per optimizer step")


@dataclass
class OutputConfig:
    output_path: str = _f("./models", "folder for checkpoints and training_args.json")
    remove_prefix_in_ckpt: Optional[str] = _f("pipe.dit.", "prefix stripped from saved keys")
    save_steps: Optional[int] = _f(None, "save every N micro-steps (batches); empty: once per epoch")
    align_to_opensource_format: bool = _f(False, "FLUX: save LoRA checkpoints in kohya names "
                                                 "(lora_unet_double_blocks_0_img_attn_qkv.lora_down.weight, .alpha)")


@dataclass
class ValidationConfig:
    sigmas: list = _fl([0.1, 0.3, 0.5, 0.7, 0.9], "fixed noise levels of the validation loss", ours=True)
    num_samples: int = _f(8, "dataset rows used for the validation loss", ours=True)
    seed: int = _f(1234, "seed of the fixed validation noise", ours=True)


@dataclass
class CacheConfig:
    enabled: bool = _f(False, "train from the encoder cache the cache stage writes (no text/image encoders in the "
                       "train stage); false: encode every step, as DiffSynth's plain sft does", ours=True)
    data_dir: str = _f("outputs/cache/data", "encoded dataset rows (safetensors shards + index.json)", ours=True)
    prompts_dir: str = _f("outputs/cache/prompts", "encoded sample prompts (save-point samples)", ours=True)


@dataclass
class SampleConfig:
    prompts: list = _fl(["a red circle on a white background"], "prompts rendered at each save point: a string, or "
                        "{prompt, negative_prompt, cfg_scale, num_inference_steps, images, seeds} (images: the edit/"
                        "Kontext reference/first-frame file(s), relative to the project root)", ours=True)
    seeds: list = _fl([0], "one sample per prompt and seed", ours=True)
    height: int = _f(1024, "sample height", ours=True)
    width: int = _f(1024, "sample width", ours=True)
    num_inference_steps: int = _f(30, "sampler steps", ours=True)
    negative_prompt: str = _f("", "negative prompt of guided samples (cfg_scale != 1)", ours=True)
    cfg_scale: float = _f(1.0, "classifier-free guidance scale (DiffSynth's cfg_scale; 1 = one prediction per step, "
                          "no negative prompt; DiffSynth's pipelines default to 4 for Qwen-Image, 5 for Wan, 1 for "
                          "FLUX.1)", ours=True)
    embedded_guidance: float = _f(3.5, "FLUX.1's distilled guidance of samples (DiffSynth's embedded_guidance); "
                                  "families without one ignore it", ours=True)
    sigma_shift: Optional[float] = _f(None, "shift of the samples' sigma grid (DiffSynth's Wan sigma_shift: 20 for "
                                      "Krea Realtime's 6 steps); empty: the family's own (Wan 5); Wan only",
                                      ours=True)
    num_frames: int = _f(1, "frames per sample for video families (4k+1)", ours=True)
    out_dir: str = _f("", "also save samples as PNG here (videos as a frame strip); empty: MLflow only", ours=True)


@dataclass
class TrackingConfig:
    experiment: str = _f("diffsynth", "MLflow experiment name", ours=True, flag="mlflow_experiment")
    uri: str = _f("", "MLflow tracking URI; empty: sqlite mlflow.db at the project root", ours=True,
                  flag="tracking_uri")
    enable_csv_log: bool = _f(False, "append step,key,value rows to <output_path>/loss.csv")
    enable_tensorboard_log: bool = _f(False, "write loss to <output_path>/tensorboard_log")
    enable_swanlab_log: bool = _f(False, "also log to SwanLab (<output_path>/swanlab_log; mode as SwanLab's settings "
                                         "say, e.g. SWANLAB_MODE=offline)")
    swanlab_project: str = _f("DiffSynth-Studio", "SwanLab project name ($SWANLAB_PROJECT wins)")
    enable_wandb_log: bool = _f(False, "also log to Weights & Biases (<output_path>/wandb_log; mode as wandb's "
                                       "settings say, e.g. WANDB_MODE=offline)")
    wandb_project: str = _f("DiffSynth-Studio", "wandb project name ($WANDB_PROJECT wins)")


@dataclass
class ExportConfig:
    formats: list = _fl(["diffusers"], "LoRA export formats: diffsynth | diffusers | comfyui | kohya", ours=True)
    merge_lora: bool = _f(False, "also write base + LoRA merged as a full model folder (<out_dir>/model)", ours=True)
    max_shard_size: str = _f("5GB", "shard size of exported model folders", ours=True)
    out_dir: str = _f("outputs/export", "folder of the exported files", ours=True)


SECTIONS: dict[str, type] = {
    "dataset": DatasetConfig,
    "resolution": ResolutionConfig,
    "model": ModelConfigSection,
    "train": TrainConfig,
    "lora": LoraConfigSection,
    "gradient": GradientConfig,
    "output": OutputConfig,
    "validation": ValidationConfig,
    "sample": SampleConfig,
    "tracking": TrackingConfig,
    "export": ExportConfig,
    "cache": CacheConfig,
}
# Sections that are not training flags (read by other stages or by the DVC command line).
PASSTHROUGH_SECTIONS = {"accelerate"}

# Why a DiffSynth value of a choice flag is refused, appended to the error.
UNSUPPORTED_CHOICES = {
    ("train", "task"): (": direct_distill:data_process / direct_distill:train (split distillation: its rows' seeds "
                        "are not in the encoder cache; use direct_distill) are not supported yet"),
}
# Extra inputs a task reads from each row, whatever the family (DiffSynth: its loss reads them from the inputs).
TASK_EXTRA_INPUTS = {"direct_distill": ("seed", "rand_device", "num_inference_steps", "cfg_scale")}


@dataclass
class Config:
    dataset: DatasetConfig = field(default_factory=DatasetConfig)
    resolution: ResolutionConfig = field(default_factory=ResolutionConfig)
    model: ModelConfigSection = field(default_factory=ModelConfigSection)
    train: TrainConfig = field(default_factory=TrainConfig)
    lora: LoraConfigSection = field(default_factory=LoraConfigSection)
    gradient: GradientConfig = field(default_factory=GradientConfig)
    output: OutputConfig = field(default_factory=OutputConfig)
    validation: ValidationConfig = field(default_factory=ValidationConfig)
    sample: SampleConfig = field(default_factory=SampleConfig)
    tracking: TrackingConfig = field(default_factory=TrackingConfig)
    export: ExportConfig = field(default_factory=ExportConfig)
    cache: CacheConfig = field(default_factory=CacheConfig)
    extra: dict = field(default_factory=dict)  # passthrough sections, e.g. accelerate

    def to_dict(self) -> dict:
        out = {name: dataclasses.asdict(getattr(self, name)) for name in SECTIONS}
        out.update(self.extra)
        return out

    def validate(self) -> "Config":
        for name in SECTIONS:
            section = getattr(self, name)
            for f in fields(section):
                choices = f.metadata.get("choices")
                value = getattr(section, f.name)
                if choices and value not in choices:
                    hint = UNSUPPORTED_CHOICES.get((name, f.name), "")
                    raise ConfigError(f"{name}.{f.name} = {value!r} is not one of {choices}{hint}")
        if self.train.num_epochs < 1:
            raise ConfigError(f"train.num_epochs = {self.train.num_epochs}: must be at least 1")
        if self.train.batch_size < 1:
            raise ConfigError(f"train.batch_size = {self.train.batch_size}: must be at least 1")
        if self.gradient.gradient_accumulation_steps < 1:
            raise ConfigError("gradient.gradient_accumulation_steps must be at least 1")
        if self.output.save_steps is not None and self.output.save_steps < 1:
            raise ConfigError(f"output.save_steps = {self.output.save_steps}: must be >= 1, or empty for per-epoch saving")
        if self.train.lr_warmup_steps < 0:
            raise ConfigError("train.lr_warmup_steps must be >= 0")
        if self.train.lr_warmup_steps and self.train.lr_scheduler in ("constant", "diffsynth"):
            raise ConfigError(f"train.lr_warmup_steps = {self.train.lr_warmup_steps} has no effect with "
                              f"lr_scheduler {self.train.lr_scheduler}: use constant_with_warmup, cosine or linear, "
                              "or set lr_warmup_steps to 0")
        if not 0 <= self.train.lr_min_ratio <= 1:
            raise ConfigError(f"train.lr_min_ratio = {self.train.lr_min_ratio}: must be between 0 and 1")
        if self.train.lr_min_ratio and self.train.lr_scheduler not in ("cosine", "linear"):
            raise ConfigError(f"train.lr_min_ratio = {self.train.lr_min_ratio} only applies to lr_scheduler cosine "
                              f"or linear (not {self.train.lr_scheduler}); set it to 0")
        if self.train.max_grad_norm is not None and self.train.max_grad_norm <= 0:
            raise ConfigError("train.max_grad_norm must be > 0, or empty for no clipping")
        if not 0 <= self.train.min_timestep_boundary < self.train.max_timestep_boundary <= 1:
            raise ConfigError(f"timestep boundaries must satisfy 0 <= min ({self.train.min_timestep_boundary}) "
                              f"< max ({self.train.max_timestep_boundary}) <= 1")
        if not 0 <= self.train.ema_decay < 1:
            raise ConfigError(f"train.ema_decay = {self.train.ema_decay}: must be in [0, 1) (0: no EMA)")
        if self.train.loraplus_lr_ratio is not None and not self.train.loraplus_lr_ratio > 0:
            raise ConfigError(f"train.loraplus_lr_ratio = {self.train.loraplus_lr_ratio}: must be > 0, or empty for off")
        if self.train.loraplus_lr_ratio is not None and self.train.optimizer == "prodigy":
            raise ConfigError("train.loraplus_lr_ratio cannot be used with train.optimizer prodigy (Prodigy adapts "
                              "one step size and refuses different lrs per group): leave loraplus_lr_ratio empty")
        if self.train.dop_weight:
            self._check_dop()
        for key in ("timestep_logit_std", "timestep_sigmoid_scale", "timestep_shift"):
            if not getattr(self.train, key) > 0:
                raise ConfigError(f"train.{key} = {getattr(self.train, key)}: must be > 0")
        if bool(self.lora.preset_lora_path) != bool(self.lora.preset_lora_model):
            raise ConfigError("lora.preset_lora_path and lora.preset_lora_model go together: set both or neither")
        if self.lora.lora_rank < 1:
            raise ConfigError(f"lora.lora_rank = {self.lora.lora_rank}: must be >= 1")
        if self.lora.adapter != "lora":
            if self.output.align_to_opensource_format:
                raise ConfigError(f"output.align_to_opensource_format writes kohya LoRA pairs, not a {self.lora.adapter}"
                                  ": turn it off (export.formats kohya/comfyui carries the adapter instead)")
            if self.lora.adapter != "dora" and self.train.loraplus_lr_ratio is not None:
                raise ConfigError(f"train.loraplus_lr_ratio scales LoRA B matrices; lora.adapter {self.lora.adapter} "
                                  "has none: leave loraplus_lr_ratio empty, or use lora/dora")
            if "diffsynth" in self.export.formats:
                raise ConfigError(f"export.formats diffsynth cannot carry a {self.lora.adapter}: DiffSynth-Studio's "
                                  "LoRA loader reads only lora_A/lora_B pairs; export diffusers, comfyui or kohya")
        if self.output.align_to_opensource_format and not self.lora.lora_base_model:
            raise ConfigError("output.align_to_opensource_format converts LoRA checkpoints: set lora.lora_base_model, "
                              "or turn the flag off for full fine-tuning")
        if not self.lora.lora_base_model and not self.train.trainable_models:
            raise ConfigError("Nothing to train: set lora.lora_base_model (e.g. dit) or train.trainable_models")
        if self.train.task in TASK_EXTRA_INPUTS:
            missing = [k for k in ("num_inference_steps",) if k not in str(self.model.extra_inputs or "").split(",")]
            if missing:
                raise ConfigError(f"train.task {self.train.task} reads each row's {missing[0]}: add it to "
                                  "model.extra_inputs (DiffSynth: --extra_inputs seed,rand_device,num_inference_steps,"
                                  "cfg_scale) with a metadata column of that name")
            if self.cache.enabled:
                raise ConfigError(f"train.task {self.train.task} encodes online (the encoder cache does not keep the "
                                  "rows' seeds and step counts): set cache.enabled: false")
        if self.train.task == "trajectory_imitation":
            self._check_trajectory_imitation()
        from .data.recipe import check_recipe
        check_recipe(self)
        from .families import check_extra_inputs  # the family decides which extra inputs exist
        check_extra_inputs(self)
        from .sampling import check_samples
        check_samples(self)
        return self


    def _check_trajectory_imitation(self) -> None:
        """train.task trajectory_imitation (training/trajectory.py): a family that implements it, online encoding
        (the teacher's CFG needs the empty negative prompt encoded), and an LPIPS weights entry."""
        from .families import spec_for
        spec = spec_for(self)
        if not spec.trajectory_imitation:
            raise ConfigError(f"train.task trajectory_imitation: DiffSynth defines trajectory imitation for "
                              f"Z-Image-Turbo only (examples/z_image/.../special/trajectory_imitation); the {spec.name} "
                              "family does not implement it (no teacher trajectory or pixel decoding for the LPIPS "
                              "term). Use model.family z_image, or train.task sft / direct_distill")
        if self.cache.enabled:
            raise ConfigError("train.task trajectory_imitation encodes online (the teacher's CFG needs the empty "
                              "negative prompt, which the encoder cache does not hold): set cache.enabled: false")
        value = self.model.lpips_path
        if not value or not (os.path.exists(value) or (":" in value and not value.endswith((":", "/")))):
            raise ConfigError(f"model.lpips_path {value!r} is neither an existing file nor model_id:file (default "
                              "DiffSynth-Studio/ImageMetrics:LPIPS/alexnet.safetensors, the AlexNet LPIPS DiffSynth's "
                              "image metrics use)")

    def _check_dop(self) -> None:
        """train.dop_weight needs a class word, a trigger word to replace, adapters to switch off, and online
        encoding (the class prompts are not in the encoder cache)."""
        if self.train.dop_weight < 0:
            raise ConfigError(f"train.dop_weight = {self.train.dop_weight}: must be >= 0 (0: off)")
        if not self.train.dop_class.strip():
            raise ConfigError("train.dop_weight needs train.dop_class: the class word that replaces the trigger word")
        triggers = [self.dataset.trigger_word] + [d.get("trigger_word", "") for d in self.dataset.datasets
                                                  if isinstance(d, dict)]
        if not any(triggers):
            raise ConfigError("train.dop_weight replaces the trigger word by train.dop_class: set "
                              "dataset.trigger_word (or a dataset's trigger_word in dataset.datasets)")
        if not self.lora.lora_base_model:
            raise ConfigError("train.dop_weight compares the model with and without its adapter: it needs "
                              "lora.lora_base_model (it cannot be used for full fine-tuning)")
        if self.cache.enabled or self.train.task == "sft:train":
            raise ConfigError("train.dop_weight encodes each class prompt online; the encoder cache does not hold "
                              "them: set cache.enabled false (and train.task sft)")


def _coerce(value, annotation, where: str):
    """Convert a YAML/CLI value to the field's type, with an error naming the key."""
    origin = get_origin(annotation)
    optional = origin is Optional or (origin is not None and type(None) in get_args(annotation))
    base = next((a for a in get_args(annotation) if a is not type(None)), annotation) if optional else annotation
    if value is None or (optional and value == ""):
        if optional:
            return None
        if base is str:
            return ""
        raise ConfigError(f"{where} must be set (a {base.__name__}), got an empty value")
    try:
        if base is bool:
            if isinstance(value, str):
                if value.lower() in ("true", "1", "yes"):
                    return True
                if value.lower() in ("false", "0", "no"):
                    return False
                raise ValueError(value)
            return bool(value)
        if base is int:
            if isinstance(value, float) and not value.is_integer():
                raise ValueError(value)
            return int(value)
        if base is float:
            return float(value)
        if base is list:
            return list(value) if isinstance(value, (list, tuple)) else [value]
        return str(value)
    except (TypeError, ValueError):
        raise ConfigError(f"{where} = {value!r} is not a valid {base.__name__}") from None


def _section_from_dict(name: str, cls: type, data: dict) -> Any:
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"params section {name!r} must be a mapping, got {type(data).__name__}")
    hints = get_type_hints(cls)
    known = {f.name for f in fields(cls)}
    kwargs = {}
    for key, value in data.items():
        if key not in known:
            hint = difflib.get_close_matches(key, known, n=1)
            extra = f"; did you mean {hint[0]!r}?" if hint else f"; known keys: {sorted(known)}"
            raise ConfigError(f"Unknown key {name}.{key}{extra}")
        kwargs[key] = _coerce(value, hints[key], f"{name}.{key}")
    return cls(**kwargs)


def config_from_dict(data: dict, check: bool = True) -> Config:
    """Typed config from a params dict; ``check=False`` skips the whole-run checks (for data-only tools)."""
    data = dict(data or {})
    unknown = set(data) - set(SECTIONS) - PASSTHROUGH_SECTIONS
    if unknown:
        raise ConfigError(f"Unknown params section(s) {sorted(unknown)}; known: {sorted(SECTIONS)}")
    sections = {name: _section_from_dict(name, cls, data.get(name)) for name, cls in SECTIONS.items()}
    extra = {name: data[name] for name in PASSTHROUGH_SECTIONS if name in data}
    config = Config(**sections, extra=extra)
    return config.validate() if check else config


# ------------------------------------------------------------------ params files and preset overlays
# A recipe is an overlay listing only the keys it sets: the schema's defaults, then each overlay of its `extends`
# chain (presets.py lists, renders and writes them).
PRESETS_DIR = Path("presets")  # relative to the project root (the working directory of `diffsynth` and DVC)
EXTENDS = "extends"


def resolve(name: str | Path, presets_dir: Path = PRESETS_DIR) -> Path:
    """A preset file: an existing path, or a name under ``presets/`` (``flux.1-dev-lora``, ``tiny/flux.1-dev-lora``)."""
    path = Path(name)
    for candidate in (path, presets_dir / path, presets_dir / f"{name}.yaml"):
        if candidate.is_file():
            return candidate
    known = sorted(p.relative_to(presets_dir).with_suffix("").as_posix() for p in presets_dir.rglob("*.yaml")
                   if p.name not in ("base.yaml", "cpu.yaml")) if presets_dir.is_dir() else []
    raise ConfigError(f"No preset {str(name)!r}: give a file or one of {', '.join(known) or '(no presets/ folder here)'}")


def _read(path: Path) -> dict:
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as e:
        raise ConfigError(f"{path} is not valid YAML: {e}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: a preset is a mapping of params sections, got {type(data).__name__}")
    return data


def layers(path: Path, _seen: tuple[Path, ...] = ()) -> list[tuple[Path, dict]]:
    """The overlays that make up ``path``, first to last: its ``extends`` chain (paths relative to the file), then
    the file itself (without its ``extends`` key)."""
    path = path.resolve()
    if path in _seen:
        raise ConfigError(f"{path}: `extends` loops back to itself ({' -> '.join(p.name for p in (*_seen, path))})")
    data = _read(path)
    parents = data.pop(EXTENDS, None) or []
    out = []
    for parent in [parents] if isinstance(parents, str) else list(parents):
        target = path.parent / parent
        if not target.is_file():
            raise ConfigError(f"{path}: extends {parent!r}, which does not exist ({target})")
        out += layers(target, (*_seen, path))
    return out + [(path, data)]


def merge(base: dict, overlay: dict, where: str = "") -> dict:
    """``overlay`` over ``base``: sections merge key by key, values (lists too) replace."""
    out = {k: dict(v) if isinstance(v, dict) else v for k, v in base.items()}
    for section, values in overlay.items():
        if not isinstance(values, dict):
            raise ConfigError(f"{where}: params section {section!r} must be a mapping, got {type(values).__name__}")
        out.setdefault(section, {}).update(values)
    return out


def preset_params(name: str | Path, presets_dir: Path = PRESETS_DIR) -> dict:
    """The full params dict of a preset: the schema's defaults, then every overlay of its chain."""
    data = Config().to_dict()
    for path, overlay in layers(resolve(name, presets_dir)):
        data = merge(data, overlay, str(path))
    return data


def load_preset(name: str | Path, presets_dir: Path = PRESETS_DIR) -> Config:
    """The checked config a preset means (unknown keys and bad values fail here, naming the key)."""
    return config_from_dict(preset_params(name, presets_dir))


def read_params_file(path: str | Path) -> dict:
    """A params file as a dict; a preset overlay (``extends: ...``) is merged over what it extends."""
    path = Path(path)
    if not path.exists():
        raise ConfigError(f"{path} not found: run from the project root or pass --params")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as e:
        raise ConfigError(f"{path} is not valid YAML: {e}") from None
    if isinstance(data, dict) and EXTENDS in data:
        return preset_params(path)
    return data


def load_params(path: str | Path = "params.yaml") -> Config:
    path = Path(path)
    data = read_params_file(path)
    try:
        return config_from_dict(data)
    except ConfigError as e:  # name the file: it may be params.yaml, a preset or a --params file
        raise ConfigError(f"{path}: {e}") from None


def flatten(data: dict, prefix: str = "") -> dict[str, Any]:
    """``{"train": {"lr": 1}}`` -> ``{"train.lr": 1}`` (lists kept as JSON strings), for MLflow params."""
    out = {}
    for key, value in data.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            out.update(flatten(value, name + "."))
        else:
            out[name] = json.dumps(value) if isinstance(value, (list, tuple)) else value
    return out
