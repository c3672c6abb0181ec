"""The one interface training uses to talk to a family."""
from __future__ import annotations

import torch
from PIL import Image

from ..errors import ConfigError
from ..models.components import load_component
from ..models.model_config import ModelConfig, fetch


# What each kind of process holds. "full": everything (online training); "train_cached": training from the
# encoder cache (no text/image encoders, only the VAE decoder, for samples); "encode": the cache stage (encoders
# and the VAE encoder; the DiT only as an architecture on the meta device, for its config).
ROLES = ("full", "train_cached", "encode")


def _how(role: str, encoders: tuple[str, ...]):
    def how(component: str) -> str:
        if role == "train_cached":
            return "skip" if component in encoders else "vae:decoder" if component == "vae" else "load"
        if role == "encode":
            return "meta" if component == "dit" else "vae:encoder" if component == "vae" else "load"
        return "load"
    return how


def load_components(model_configs: list[ModelConfig], family: str, dtype: torch.dtype,
                    required: tuple[str, ...], role: str = "full",
                    encoders: tuple[str, ...] = ()) -> tuple[dict[str, torch.nn.Module], dict[str, str]]:
    """Fetch, detect and load every model entry: ({component: module}, {component: the entry as written}).

    ``family`` is the model tables' family (``FamilySpec.model_family``); ``role`` says which parts this process
    holds (see ``ROLES``; ``encoders`` are the components only encoding needs). Skipped components are None."""
    if role not in ROLES:
        raise ValueError(f"role {role!r}: one of {ROLES}")
    modules, sources = {}, {}
    for config in model_configs:
        component, module = load_component(fetch(config), family, dtype, _how(role, encoders))
        if component in modules:
            raise ConfigError(f"Two model entries are both the {family} {component} ({sources[component]!r} and "
                             f"{config.source_string!r}); give each model once")
        modules[component], sources[component] = module, config.source_string
    for component in encoders if role == "train_cached" else ():
        modules.setdefault(component, None)
    missing = [c for c in required if c not in modules]
    if missing:
        raise ConfigError(f"{family} training needs {', '.join(required)}; missing: {missing}. Add them to "
                         "model.model_id_with_origin_paths or model.model_paths.")
    return modules, sources


class Pipeline(torch.nn.Module):
    """A family's models as child modules (``dit``, ``vae``, ``text_encoder``, ...) plus what training needs.

    Child names match DiffSynth's pipeline attributes, so state-dict keys read ``pipe.dit.<...>`` in the
    training module and ``--remove_prefix_in_ckpt pipe.dit.`` works as in DiffSynth.
    """

    spec = None  # the FamilySpec this pipeline belongs to (set by each family's class)
    role = "full"  # which parts it holds (base.ROLES)

    # {pipeline attribute: the model entry it was loaded from}; fp8_models matches on these strings
    component_sources: dict[str, str] = {}

    def __init__(self, dtype: torch.dtype = torch.float32, **parts):
        """``parts``: the models and tokenizers, by pipeline attribute (a model not held in this role is None)."""
        super().__init__()
        for name, part in parts.items():
            setattr(self, name, part)
        self.torch_dtype = dtype

    @property
    def device(self) -> torch.device:
        """Where the loaded models are (the first parameter not on the meta device)."""
        return next((p.device for p in self.parameters() if p.device.type != "meta"), torch.device("cpu"))

    def place(self, device) -> "Pipeline":
        """``.to(device)`` for every loaded weight; parts held on the meta device (the DiT in the cache stage, the
        unused half of the VAE) stay there, since they have no data to move."""
        for module in self.modules():
            for p in module._parameters.values():
                if p is not None and not p.is_meta:
                    p.data = p.data.to(device)
            for name, buffer in module._buffers.items():
                if buffer is not None and not buffer.is_meta:
                    module._buffers[name] = buffer.to(device)
        return self

    def modules_without_gradient(self, model_name: str) -> list[str]:
        """Modules of ``model_name`` whose output the loss never uses (so they get no gradient and make DDP
        fail without ``find_unused_parameters``). LoRA is not put on them; names are relative to the model."""
        return []

    def map_lora_targets(self, model_name: str, targets: list[str]) -> list[str]:
        """``lora_target_modules`` of ``model_name`` as module names of the loaded model: the spec maps
        DiffSynth's names for the DiT (Wan's original ``self_attn.q`` -> diffusers' ``attn1.to_q``), so a pasted
        DiffSynth command line still works; other models keep the names as given."""
        return self.spec.map_lora_targets(self.dit, targets) if model_name == "dit" else list(targets)

    @staticmethod
    def image_and_prompt(item: dict) -> tuple[Image.Image, str]:
        """The target image of an image-family row (the first one if the cell holds a list) and its prompt."""
        image = item["image"]
        if isinstance(image, list):
            image = image[0]
        prompt = item.get("prompt")
        if not isinstance(prompt, str):
            raise ValueError(f"row has no prompt string: {prompt!r}")
        return image, prompt

    def encode(self, item: dict) -> dict:
        """A dataset item -> model inputs without gradient: ``latents`` (x0) and conditioning tensors.

        ``first_frame_latents`` in the result marks a clean conditioning frame (Wan2.2 TI2V): the loss keeps
        latent frame 0 clean and leaves it out of the MSE, as DiffSynth does."""
        raise NotImplementedError

    # {input: its mask key}: inputs of shape (1, L, ...) whose length L may differ between samples; a batch pads
    # them with zeros along L to the longest and adds the mask (B, L), 1 on real tokens (Qwen-Image's prompt)
    padded_inputs: dict[str, str] = {}

    def collate(self, samples: list[dict]) -> dict:
        """Encoded samples (each :meth:`encode`'s output, batch 1) -> one batch :meth:`predict` takes.

        Tensors are concatenated along the batch axis and must have equal shapes (the bucket sampler sees
        to it), except the ``padded_inputs``; a list (several edit images) is collated element by element;
        other values must be equal in every sample."""
        if not samples:
            raise ValueError("collate needs at least one sample")
        keys = set(samples[0])
        for sample in samples[1:]:
            if set(sample) != keys:
                raise ValueError(f"samples of one batch have different inputs: {sorted(keys)} vs {sorted(sample)}")
        batch = {}
        for key in samples[0]:
            values = [sample[key] for sample in samples]
            if key in self.padded_inputs:
                batch[key], batch[self.padded_inputs[key]] = pad_with_mask(values, key)
            else:
                batch[key] = collate_values(values, key)
        return batch

    def predict(self, noisy_latents: torch.Tensor, timestep: torch.Tensor, inputs: dict) -> torch.Tensor:
        """The denoiser's velocity prediction at ``timestep`` (0..1000 scale, one per sample), same shape as the
        latents; ``inputs`` is one sample's :meth:`encode` output or a :meth:`collate` batch."""
        raise NotImplementedError

    @torch.no_grad()
    def sample_inputs(self, prompt: str, height: int, width: int, num_frames: int = 1) -> dict:
        """The conditioning of a save-point sample (the encoders' part: the cache stage computes it ahead)."""
        raise NotImplementedError

    @torch.no_grad()
    def render(self, inputs: dict, seed: int, height: int, width: int, num_inference_steps: int,
               num_frames: int = 1) -> Image.Image | list[Image.Image]:
        """Denoise from seeded noise under ``inputs`` and decode (the DiT and the VAE decoder's part)."""
        raise NotImplementedError

    @torch.no_grad()
    def sample(self, prompt: str, seed: int, height: int, width: int, num_inference_steps: int,
               num_frames: int = 1) -> Image.Image | list[Image.Image]:
        """One sample for a save point: an image, or a list of frames for video families."""
        return self.render(self.sample_inputs(prompt, height, width, num_frames), seed, height, width,
                           num_inference_steps, num_frames)


def collate_values(values: list, key: str):
    """Tensors of one shape -> concatenated on dim 0; lists -> collated element-wise; others must agree."""
    first = values[0]
    if isinstance(first, torch.Tensor):
        shapes = {tuple(v.shape) for v in values}
        if len(shapes) > 1:
            raise ValueError(f"input {key!r} has different shapes in one batch ({sorted(shapes)}): batches must "
                             "come from one shape bucket (training/sampler.py BucketBatchSampler)")
        return torch.cat(values, dim=0)
    if isinstance(first, (list, tuple)):
        if len({len(v) for v in values}) > 1:
            raise ValueError(f"input {key!r} holds lists of different lengths in one batch")
        return [collate_values(list(parts), f"{key}[{i}]") for i, parts in enumerate(zip(*values))]
    if any(v != first for v in values[1:]):
        raise ValueError(f"input {key!r} differs between the samples of a batch: {values}")
    return first


def pad_with_mask(values: list[torch.Tensor], key: str) -> tuple[torch.Tensor, torch.Tensor]:
    """(1, L_i, ...) tensors -> (B, max L, ...) zero-padded after each sample's tokens, and the mask (B, max L)."""
    length = max(v.shape[1] for v in values)
    padded, masks = [], []
    for v in values:
        if v.shape[0] != 1 or v.shape[2:] != values[0].shape[2:]:
            raise ValueError(f"input {key!r}: cannot pad {tuple(v.shape)} to {tuple(values[0].shape)}")
        extra = length - v.shape[1]
        padded.append(torch.cat([v, v.new_zeros(1, extra, *v.shape[2:])], dim=1) if extra else v)
        mask = torch.ones(1, length, dtype=torch.long, device=v.device)
        mask[:, v.shape[1]:] = 0
        masks.append(mask)
    return torch.cat(padded), torch.cat(masks)
