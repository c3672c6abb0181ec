"""The family class: everything one model family is, as ONE object (see families/README.md for every hook).

A family is a subclass of :class:`Family` in its own folder. Its class attributes declare what the rest of the
system asks of it (names, data rules, LoRA targets, name converters, checkpoint kinds, real architectures, tiny
twins); an instance is the loaded pipeline training calls (``encode``, ``predict``, ``render``...). Training,
export, data validation and the command-line layer ask the class or the instance and never name a family.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from PIL import Image

from ..errors import ConfigError
from ..models.components import load_component
from ..models.model_config import ModelConfig, fetch, parse_model_configs


@dataclass(frozen=True)
class DataRules:
    """How a dataset row becomes a training sample: size multiples, the 4k+1 frame rule, which columns are
    videos, and which extra inputs the family derives from other columns (no metadata column needed)."""

    size_factor: int = 16
    width_factor: int = 16
    time_division_factor: int = 4
    time_division_remainder: int = 1
    video_keys: tuple[str, ...] = ()
    derived_inputs: tuple[str, ...] = ()
    # extra inputs that are plain values, and what they must be: ("name", "number") or ("name", (choices...))
    value_inputs: tuple = ()
    # control videos whose frames condition the target's frame for frame (Wan VACE's vace_video): the data check
    # warns about a row where one keeps fewer frames than ``video``
    frame_matched_keys: tuple[str, ...] = ()
    # ((column, n), ...): clips the pipeline cuts to the video's frames minus n (Wan2.2-Animate's pose and face
    # clips, n = 4); the data check names a row whose clip keeps fewer frames than that
    shorter_clip_keys: tuple = ()
    # ((column, width, height), ...): video/image columns loaded at this fixed size whatever resolution.* says
    # (DiffSynth's loader: Wan2.2-Animate's face clip at 512x512)
    fixed_size_keys: tuple = ()
    # control images that condition the target token for token (Z-Image's controlnet_image): the data check
    # refuses a row where one is trained at another size than ``image``
    size_matched_keys: tuple[str, ...] = ()

    def as_kwargs(self) -> dict:
        """Keyword arguments of ``diffsynth.data.validate.check_dataset``."""
        return {"size_factor": self.size_factor, "width_factor": self.width_factor,
                "time_division_factor": self.time_division_factor,
                "time_division_remainder": self.time_division_remainder,
                "video_keys": self.video_keys, "derived_inputs": self.derived_inputs,
                **({"value_inputs": self.value_inputs} if self.value_inputs else {}),
                **({"frame_matched_keys": self.frame_matched_keys} if self.frame_matched_keys else {}),
                **({"shorter_clip_keys": self.shorter_clip_keys} if self.shorter_clip_keys else {}),
                **({"fixed_size_keys": self.fixed_size_keys} if self.fixed_size_keys else {}),
                **({"size_matched_keys": self.size_matched_keys} if self.size_matched_keys else {})}


# What each kind of process holds. "full": everything (online training); "train_cached": training from the
# encoder cache (no text/image encoders, only the VAE decoder, for samples); "encode": the cache stage (encoders
# and the VAE encoder; the DiT only as an architecture on the meta device, for its config).
ROLES = ("full", "train_cached", "encode")


def _how(role: str, encoders: tuple[str, ...], denoisers: tuple[str, ...] = ("dit",)):
    def how(component: str) -> str:
        if role == "train_cached":
            return "skip" if component in encoders else "vae:decoder" if component == "vae" else "load"
        if role == "encode":
            return "meta" if component in denoisers else "vae:encoder" if component == "vae" else "load"
        return "load"
    return how


def load_components(model_configs: list[ModelConfig], family: str, dtype: torch.dtype,
                    required: tuple[str, ...], role: str = "full",
                    encoders: tuple[str, ...] = (), offload: str | None = None,
                    encode_needs_dit: bool = False,
                    denoisers: tuple[str, ...] = ("dit",)) -> tuple[dict[str, torch.nn.Module], dict[str, str]]:
    """Fetch, detect and load every model entry: ({component: module}, {component: the entry as written}).

    ``family`` is the checkpoint kinds' family (``Family.model_family``); ``role`` says which parts this process
    holds (see ``ROLES``; ``encoders`` are the components only encoding needs). Skipped components are None.

    ``required`` is what online training needs; a split step needs less, as DiffSynth's split recipes name only
    what each step uses: the encode step needs no DiT (unless ``encode_needs_dit``: the family reads the DiT's
    config to encode, as Wan's image-to-video inputs do; it is built on the meta device, no weights read), and
    training from the cache needs no VAE (it only decodes the save-point samples, which are then skipped).

    ``offload`` (``model.offload_models``, DiffSynth's ``--offload_models``): entries this role never holds the
    weights of (the DiT of the encode step, the encoders of cached training) need no offload; a VAE named for
    cached training is not loaded (it serves only the samples). Offloading a model the role holds is refused.
    ``denoisers``: the models the encode step builds on the meta device like the DiT (a ControlNet beside it)."""
    if role not in ROLES:
        raise ValueError(f"role {role!r}: one of {ROLES}")
    offloaded = split_offload_entries(offload)
    how = _how(role, encoders, denoisers)
    modules, sources = {}, {}
    for config in model_configs:
        source = config.source_string
        # an offloaded VAE in cached training serves only the samples: not loaded
        skip_vae = source in offloaded and role == "train_cached"
        component, module = load_component(fetch(config), family, dtype,
                                           lambda c: "skip" if skip_vae and c == "vae" else how(c))
        if source in offloaded:
            _check_offload(family, component, source, how(component), role)
        if component in modules:
            raise ConfigError(f"Two model entries are both the {family} {component} ({sources[component]!r} and "
                             f"{config.source_string!r}); give each model once")
        modules[component], sources[component] = module, config.source_string
    unknown = offloaded - set(sources.values())
    if unknown:
        raise ConfigError(f"model.offload_models (--offload_models) entries {sorted(unknown)} are not model entries; "
                          f"write them exactly as in the model flags: {sorted(sources.values())}")
    optional = {"encode": () if encode_needs_dit else ("dit",), "train_cached": ("vae", *encoders)}.get(role, ())
    for component in optional:
        modules.setdefault(component, None)
    missing = [c for c in required if c not in modules]
    if missing:
        step = {"encode": "The encoding step (--task sft:data_process, the cache stage)",
                "train_cached": "Training from the encoder cache"}.get(role, f"{family} training")
        needed = [c for c in required if c not in optional]
        why = (" (the DiT's config decides the encoded inputs; only its file header is read, no weights)"
               if role == "encode" and "dit" in missing else "")
        raise ConfigError(f"{step} needs {', '.join(needed)}; missing: {missing}{why}. Add them to "
                         "model.model_id_with_origin_paths or model.model_paths.")
    return modules, sources


def split_offload_entries(value: str | None) -> set[str]:
    """``--offload_models``: comma-separated model entries, as written in the model flags."""
    return {e.strip() for e in (value or "").split(",") if e.strip()}


def _check_offload(family: str, component: str, source: str, how: str, role: str) -> None:
    """One line for an offload that is a no-op in this step; a model the train stage holds is offloaded there."""
    if how in ("skip", "meta"):
        what = "built on the meta device for its config only" if how == "meta" else "not loaded"
        print(f"[models] --offload_models {source}: the {component} is {what} in this step; nothing to offload")
    elif role == "train_cached" and component == "vae":
        print(f"[models] --offload_models {source}: the VAE only decodes save-point samples when training from "
              "the cache, so it is not loaded (no sample images)")
    elif role == "encode":
        print(f"[models] --offload_models {source}: the encoding step keeps the {component} resident (it encodes "
              "with every encoder in turn); offloading applies in the train stage")
    # otherwise the train stage holds it and offloads it between uses (training/memory.py)


class Family(torch.nn.Module):
    """A family's models as child modules (``dit``, ``vae``, ``text_encoder``, ...) plus what training needs.

    Child names match DiffSynth's pipeline attributes, so state-dict keys read ``pipe.dit.<...>`` in the
    training module and ``--remove_prefix_in_ckpt pipe.dit.`` works as in DiffSynth.

    The class attributes below are the family's declarations, read from the class (``spec_for(config)``) before
    anything is loaded. A variant (Qwen-Image-Edit, FLUX.1-Kontext) subclasses its base family.
    """

    # ---- identity (families/registry.py registers name, aliases and tiny twins)
    name: str = ""                      # canonical name, as params.yaml's model.family writes it
    summary: str = ""                   # one line for help texts and errors
    aliases: tuple[str, ...] = ()       # other accepted spellings (a variant declares its own)
    model_id_patterns: tuple[str, ...] = ()  # substrings of model ids/files that name the family (flag-only runs)
    default: bool = False               # the family of a run that names no model (one family declares it)
    variant_of: str | None = None       # a variant is chosen over its base when ...
    selected_by: str | None = None      # ... this extra input is given (DiffSynth's one script per base)
    # ---- what the engines below need (registered with the family)
    model_family: str = ""              # the checkpoint kinds' family (a variant keeps its base's)
    component_kinds: tuple = ()         # models/components.ComponentKind: how its checkpoint files are recognised
    real_models: dict = {}              # real architectures by name (models/real_configs.py schema)
    weight_files: dict = {}             # real architecture name -> where its weights live ("repo:file", ...)
    redirected_files: tuple = ()        # (file, converted repository): pickled files fetched as safetensors
    tiny_twins: dict = {}               # twin name -> (real repository it mirrors, writer(out_dir, seed)); 1st = default
    block_inputs: dict = {}             # DiT block class name -> builder of its call's tensors (memory plan)
    text_tokens: dict = {}              # DiT class name -> text tokens it attends to (memory plan)
    reference_image_inputs: tuple = ()  # extra inputs whose images join the image tokens (memory plan)
    unchecked_blocks: tuple = ()        # block classes the forward runs outside gradient checkpoints (memory plan)
    # ---- save-point samples (diffsynth/sampling.py)
    sample_image_input: str = ""        # the extra input a sample entry's `images` stand for ("": samples take none)
    sample_options: tuple[str, ...] = ()  # render() keywords beyond cfg_scale/negative_inputs (embedded_guidance)
    # ---- data and inputs
    data: DataRules = DataRules()
    encoders: tuple[str, ...] = ("text_encoder",)  # components only encoding needs (not held when training cached)
    denoisers: tuple[str, ...] = ("dit",)  # models only the denoiser needs (meta device in the encode step)
    extra_inputs: tuple[str, ...] = ()  # model.extra_inputs values the family implements
    noise_in_model_dtype: bool = False  # DiffSynth draws seeded noise in the model dtype (else float32), then casts
    required_extra_inputs: tuple[str, ...] = ()
    refused_inputs: dict = {}           # extra input -> why it is refused (what is missing): named in the error
    # ---- LoRA and checkpoint names
    lora_targets: str = ""              # DiffSynth's default --lora_target_modules of the recipe
    opensource_lora_format: str | None = None  # output.align_to_opensource_format writes this export format
    # name converters ({module: (A, B)} or state dicts); None where the loaded (diffusers) names are those names
    lora_to_original = None             # ({module: (A, B)}, shapes) -> same in original checkpoint names
    original_state_dict = None          # diffusers DiT state dict -> original checkpoint names
    lora_to_diffsynth = None            # ({module: (A, B)}, shapes) -> same in DiffSynth-Studio's DiT names
    diffsynth_state_dict = None         # diffusers DiT state dict -> DiffSynth's DiT names
    lora_names_without_model = None     # LoRA modules in foreign names -> loaded names, no model
    lora_to_diffusers = None            # ({module: (A, B)}, shapes) -> diffusers' names, where the loaded are not
    diffusers_state_dict = None         # loaded DiT state dict -> diffusers' names, where they differ
    # model-id substrings of DiffSynth recipes of this family that we refuse -> what the model is and why (one line)
    refused_models: dict = {}
    # DiffSynth flags in command_line.UNSUPPORTED_FLAGS that belong to a model of this family we do not train -> why
    refused_flags: dict = {}
    # ---- DiffSynth's command line
    command_line_defaults: dict = {}    # {section: {key: value}} DiffSynth's script forces
    # DiffSynth's sft:data_process file keys -> our input names (its `.pth` cache read by --task sft:train)
    diffsynth_cache_keys: dict = {"input_latents": "latents"}
    # DiffSynth recipes of this family we refuse by name: {regex on the recipe path: one line saying what it is}
    # (`diffsynth families` reports them; their flags are refused on the command line as well)
    refused_recipes: dict = {}
    # ---- training tasks beyond sft / direct_distill
    # DiffSynth's --task trajectory_imitation (training/trajectory.py): needs decode_pixels; others refuse it by name
    trajectory_imitation: bool = False

    role = "full"  # which parts an instance holds (base.ROLES)

    # ---------------------------------------------------------------- class-level hooks
    @classmethod
    def load_pipeline(cls, config, dtype: torch.dtype, device: torch.device | str = "cpu",
                      role: str = "full") -> "Family":
        """Fetch and detect every model entry of ``config.model`` and load the parts ``role`` holds."""
        raise NotImplementedError

    @classmethod
    def load_models(cls, config, dtype: torch.dtype, role: str, required: tuple[str, ...],
                    encode_needs_dit: bool = False) -> tuple[dict[str, torch.nn.Module], dict[str, str]]:
        """``load_components`` over the model flags of ``config`` for this family (what ``load_pipeline`` calls)."""
        m = config.model
        return load_components(parse_model_configs(m.model_paths, m.model_id_with_origin_paths), cls.model_family,
                               dtype, required=required, role=role, encoders=cls.encoders, offload=m.offload_models,
                               encode_needs_dit=encode_needs_dit, denoisers=cls.denoisers)

    @staticmethod
    def train_sigmas(n: int) -> torch.Tensor:
        """The n-point training grid (float64, 1 -> small)."""
        raise NotImplementedError

    @classmethod
    def auxiliary_entries(cls, config) -> dict[str, str]:
        """{name: tokenizer/processor folder entry} the models stage fetches and pins beside the weights."""
        return {}

    @classmethod
    def data_rules(cls, config=None) -> DataRules:
        """The data rules; a family whose model entries change them (Wan2.2's VAE) overrides this."""
        return cls.data

    @classmethod
    def map_lora_targets(cls, model: torch.nn.Module, targets: list[str]) -> list[str]:
        """DiffSynth's ``lora_target_modules`` for the DiT ``model`` as its loaded module names (identity here)."""
        return list(targets)

    @classmethod
    def modules_without_gradient(cls, model_name: str, model: torch.nn.Module) -> list[str]:
        """Modules of ``model`` (the pipeline's ``model_name``) whose output the loss never uses: they get no
        gradient and make DDP fail without ``find_unused_parameters``, so LoRA is not put on them."""
        return []

    @classmethod
    def split_module(cls, component: str, module: torch.nn.Module) -> dict[str, torch.nn.Module]:
        """The pipeline models one loaded model entry holds (the memory plan asks, on the meta device): itself,
        except where one file holds two of DiffSynth's models (Wan VACE: ``dit`` and ``vace``)."""
        return {component: module}

    @classmethod
    def component_of(cls, model_name: str) -> str:
        """The model entry (detected component) a pipeline model is loaded from: exports check against it."""
        return model_name

    @classmethod
    def lora_targets_for(cls, model_name: str, model: torch.nn.Module, targets) -> "str | list[str]":
        """``lora.lora_target_modules`` (parsed) of ``model_name`` as module names of the loaded model: the DiT's
        DiffSynth names are mapped (a single target stays one string: DiffSynth's regex full-match); other models
        keep the names as given."""
        if model_name != "dit":
            return targets
        mapped = cls.map_lora_targets(model, [targets] if isinstance(targets, str) else targets)
        return mapped[0] if isinstance(targets, str) else mapped

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

    def place(self, device) -> "Family":
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

    def decode_pixels(self, latents: torch.Tensor) -> torch.Tensor:
        """Latents (B, C, h, w) -> the VAE decoder's raw output (B, 3, H, W), about [-1, 1], not clamped, in the
        decoder's dtype: DiffSynth's ``pipe.vae_decoder(latents)`` (the trajectory_imitation task's LPIPS term)."""
        raise NotImplementedError(f"{self.name} does not decode to pixels for a loss")

    @torch.no_grad()
    def sample_inputs(self, prompt: str, height: int, width: int, num_frames: int = 1) -> dict:
        """The conditioning of a save-point sample (the encoders' part: the cache stage computes it ahead). A family
        with a ``sample_image_input`` also takes ``images=`` (a sample entry's image(s), loaded as a dataset cell);
        it is passed only when the entry has images."""
        raise NotImplementedError

    @torch.no_grad()
    def render(self, inputs: dict, seed: int, height: int, width: int, num_inference_steps: int,
               num_frames: int = 1) -> Image.Image | list[Image.Image]:
        """Denoise from seeded noise under ``inputs`` and decode (the DiT and the VAE decoder's part). Guided
        entries (cfg_scale != 1) also pass ``cfg_scale=`` and ``negative_inputs=`` (the negative prompt's
        ``sample_inputs``): predict with ``sampling.guided_velocity``; ``sample_options`` are passed by name."""
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
