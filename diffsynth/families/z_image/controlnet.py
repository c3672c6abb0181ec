"""Z-Image-Turbo Fun-ControlNet (DiffSynth's examples/z_image/model_training/{lora,full}/Z-Image-Turbo-Fun-Controlnet-
{Union-2.1,Union-2.1-8steps,Tile-2.1-8steps}.sh): the Z-Image-Turbo DiT plus PAI's ControlNet
(``PAI/Z-Image-Turbo-Fun-Controlnet-Union-2.1:<file>.safetensors``), a registered variant of ``z_image`` selected by
``controlnet_image`` in ``model.extra_inputs`` (as DiffSynth's one Z-Image train.py decides).

What a row adds, as DiffSynth's ``ZImageUnit_PAIControlNet`` and ``model_fn_z_image_turbo`` do it (training passes
one ``ControlNetInput(image=controlnet_image)``, scale 1, no inpaint image):

* the control context: the control image's VAE latents (encoded like the target), a zero inpaint mask (one channel)
  and the VAE latents of an all-zero (grey) inpaint image: 16 + 1 + 16 = 33 channels at the latents' size;
* the DiT runs its usual path with the ControlNet beside it (:func:`controlled_forward`): the control context is
  patch-embedded (the DiT's pad token on its padding), refined by the control refiner blocks against the embedded
  image tokens, and each refiner hint is added after the matching noise refiner layer; the refined control tokens
  joined with the refined prompt tokens go through the control blocks against the unified sequence, and hint ``i``
  is added after DiT layer ``control_layers_places[i]`` (0, 2, 4, ...). The control blocks reuse the DiT's RoPE,
  timestep embedding and pad token, and see no attention mask (one sample at a time, as DiffSynth runs it).

The ControlNet is the pipeline's ``controlnet`` (``--trainable_models controlnet``, ``--remove_prefix_in_ckpt
pipe.controlnet.``: its keys as in PAI's file, which are diffusers' ZImageControlNetModel names); the LoRA recipes
put LoRA on the DiT (``--lora_base_model dit``) with the ControlNet frozen. Save-point samples are conditioned on
the first row's control image (or a sample entry's ``images``), resized to the sample size, at the recipe's control
scale (DiffSynth's inference examples: 0.7). The encode step (the cache stage) builds the ControlNet on the meta
device: only the VAE and text encoder encode.
"""
from __future__ import annotations

from dataclasses import replace

import torch
import torch.utils.checkpoint

from ...errors import ConfigError
from ..images import SampleReference, as_image_list, check_image_column, first_row_images, image_to_tensor
from . import tiny
from .pipeline import ZImage

KEY = "controlnet_image"
CONTROLNET_ENTRY = "PAI/Z-Image-Turbo-Fun-Controlnet-Union-2.1:Z-Image-Turbo-Fun-Controlnet-Union-2.1.safetensors"
TRAIN_SCALE = 1.0   # DiffSynth's training: ControlNetInput's default scale
SAMPLE_SCALE = 0.7  # DiffSynth's Fun-ControlNet inference and validation examples


def controlled_forward(dit, controlnet, x: torch.Tensor, t: torch.Tensor, cap: torch.Tensor, control: torch.Tensor,
                       scale: float = 1.0) -> torch.Tensor:
    """The DiT's output (not negated) for one sample with the ControlNet's hints: ``x`` (C, 1, H, W) noisy latents,
    ``t`` (1,) the DiT's time (0 noise .. 1 clean), ``cap`` (L, D) prompt embedding, ``control`` (33, 1, H, W) the
    control context. DiffSynth's ``model_fn_z_image_turbo`` with a ControlNet, on diffusers' modules."""
    checkpointing = torch.is_grad_enabled() and (dit.is_gradient_checkpointing or controlnet.is_gradient_checkpointing)

    def run(layer, *args):
        if checkpointing:
            return torch.utils.checkpoint.checkpoint(layer, *args, use_reentrant=False)
        return layer(*args)

    device = x.device
    adaln = dit.t_embedder(t * dit.t_scale).type_as(x)
    xs, caps, sizes, x_pos, cap_pos, x_pad, cap_pad = dit.patchify_and_embed([x], [cap], 2, 1)
    n_image = len(xs[0])
    h = dit.all_x_embedder["2-1"](xs[0])
    h, x_freqs, _, _, _ = dit._prepare_sequence([h], x_pos, x_pad, dit.x_pad_token, None, device)

    # the control tokens, refined against the embedded image tokens; one hint per noise refiner layer
    c = controlnet.control_all_x_embedder["2-1"](controlnet.patchify([control], 2, 1)[0])
    c = torch.where(x_pad[0].unsqueeze(-1), dit.x_pad_token.to(c.dtype), c).unsqueeze(0)
    for layer in controlnet.control_noise_refiner:
        c = run(layer, c, h, None, x_freqs, adaln)
    *refiner_hints, c = c.unbind(0)
    refiner_at = {place: i for i, place in enumerate(controlnet.config.control_refiner_layers_places)}
    for i, layer in enumerate(dit.noise_refiner):
        h = run(layer, h, None, x_freqs, adaln)
        if i in refiner_at:
            h = h + refiner_hints[refiner_at[i]] * scale

    cap_embedded = dit.cap_embedder(caps[0])
    cap_embedded, cap_freqs, _, _, _ = dit._prepare_sequence([cap_embedded], cap_pos, cap_pad, dit.cap_pad_token,
                                                             None, device)
    for layer in dit.context_refiner:
        cap_embedded = run(layer, cap_embedded, None, cap_freqs)

    unified = torch.cat([h, cap_embedded], dim=1)
    unified_freqs = torch.cat([x_freqs, cap_freqs], dim=1)
    c = torch.cat([c, cap_embedded], dim=1)
    for layer in controlnet.control_layers:
        c = run(layer, c, unified, None, unified_freqs, adaln)
    hints = c.unbind(0)[:-1]
    layer_at = {place: i for i, place in enumerate(controlnet.config.control_layers_places)}
    for i, layer in enumerate(dit.layers):
        unified = run(layer, unified, None, unified_freqs, adaln)
        if i in layer_at:
            unified = unified + hints[layer_at[i]] * scale
    out = dit.all_final_layer["2-1"](unified, c=adaln)
    return dit.unpatchify([out[0, :n_image]], sizes, 2, 1)[0]


class ZImageControlNet(ZImage):
    name = "z_image_controlnet"
    aliases = ("z_image_turbo_fun_controlnet", "z_image_fun_controlnet")
    summary = "Z-Image-Turbo Fun-ControlNet (Union / Tile 2.1): the DiT plus PAI's ControlNet fed controlnet_image"
    variant_of = "z_image"
    selected_by = KEY
    extra_inputs = (KEY,)
    required_extra_inputs = (KEY,)
    tiny_twins = {"z-image-turbo-fun-controlnet": ("PAI/Z-Image-Turbo-Fun-Controlnet-Union-2.1",
                                                   tiny.write_tiny_controlnet)}
    sample_image_input = KEY
    denoisers = ("dit", "controlnet")
    extra_components = ("controlnet",)
    refused_models = {}
    data = replace(ZImage.data, size_matched_keys=(KEY,))

    def __init__(self, *args, controlnet=None, **kwargs):
        super().__init__(*args, **kwargs)
        if controlnet is not None and not hasattr(controlnet, "gradient_checkpointing"):
            # diffusers' ZImageControlNetModel declares checkpointing support but lacks the flag its
            # enable_gradient_checkpointing() sets (--use_gradient_checkpointing of the full recipes)
            controlnet.gradient_checkpointing = False
        self.controlnet = controlnet
        self.control_scale = TRAIN_SCALE
        self.sample_reference = SampleReference(KEY)  # load_pipeline points it at the dataset's first row
        self._zero_latents: dict[tuple, torch.Tensor] = {}

    # ---------------------------------------------------------------- encoders (no gradient)
    @torch.no_grad()
    def encode_pixels(self, pixels: torch.Tensor) -> torch.Tensor:
        latents = self.vae.encode(pixels.to(self.device, self.torch_dtype)).latent_dist.mode()
        c = self.vae.config
        return ((latents - c.shift_factor) * c.scaling_factor).to(self.torch_dtype)

    @torch.no_grad()
    def encode_control(self, image) -> torch.Tensor:
        """DiffSynth's control context for a control image: (1, 33, H/8, W/8)."""
        images = as_image_list(image, KEY)
        if len(images) != 1:
            raise ValueError(f"{KEY} holds {len(images)} images; the Z-Image ControlNet takes one control image per "
                             "row (DiffSynth uses only the first)")
        control = self.encode_image(images[0])
        size = tuple(image_to_tensor(images[0]).shape)
        if size not in self._zero_latents:  # the latents of the all-zero inpaint image: one per size
            self._zero_latents[size] = self.encode_pixels(torch.zeros(size))
        mask = torch.zeros_like(control[:, :1])
        return torch.cat([control, mask, self._zero_latents[size].to(control.device)], dim=1)

    def encode(self, item: dict) -> dict:
        if item.get(KEY) is None:
            raise ValueError(f"a dataset row has no {KEY}: every row of a Fun-ControlNet dataset needs one (or remove "
                             f"{KEY} from model.extra_inputs to train text-to-image)")
        inputs = super().encode(item)
        control = self.encode_control(item[KEY])
        if control.shape[-2:] != inputs["latents"].shape[-2:]:
            f = self.vae_factor
            raise ValueError(
                f"the row's {KEY} comes out {control.shape[-1] * f}x{control.shape[-2] * f} but its image "
                f"{inputs['latents'].shape[-1] * f}x{inputs['latents'].shape[-2] * f}: the control image conditions "
                "the target token for token; give it the image's size (`diffsynth data validate` names such rows)")
        return {**inputs, "control_context": control}

    # ---------------------------------------------------------------- denoiser
    def predict(self, noisy_latents: torch.Tensor, timestep: torch.Tensor, inputs: dict) -> torch.Tensor:
        b = noisy_latents.shape[0]
        emb, mask = inputs["prompt_emb"], inputs.get("prompt_emb_mask")
        caps = [emb[i] if mask is None else emb[i][mask[i].bool()] for i in range(b)]
        t = (1000 - timestep.reshape(-1).float().to(self.device)) / 1000
        t = t.expand(b) if t.numel() == 1 else t
        control = inputs["control_context"].to(self.device, self.torch_dtype)
        out = [controlled_forward(self.dit, self.controlnet, noisy_latents[i].unsqueeze(1).to(self.device, self.torch_dtype),
                                  t[i:i + 1], caps[i].to(self.device, self.torch_dtype), control[i].unsqueeze(1),
                                  self.control_scale)
               for i in range(b)]
        return -torch.stack([o[:, 0] for o in out])

    # ---------------------------------------------------------------- samples
    def sample_size(self, height: int, width: int) -> tuple[int, int]:
        step = 2 * self.vae_factor
        return max(step, height // step * step), max(step, width // step * step)

    def sample_inputs(self, prompt: str, height: int = 0, width: int = 0, num_frames: int = 1, images=None) -> dict:
        """The prompt, and the control context of a sample entry's image (else the dataset's first row's) resized
        to the sample size, as DiffSynth's examples resize the control image to the output size."""
        inputs = super().sample_inputs(prompt)
        image = self.sample_reference.get() if images is None else images
        if image is None:
            raise ValueError(f"samples of a Fun-ControlNet run need a control image: the dataset's first row has no "
                             f"{KEY}; give the sample entry `images:`")
        image = as_image_list(image, KEY)[0]
        h, w = self.sample_size(height or image.height, width or image.width)
        return {**inputs, "control_context": self.encode_control(image.convert("RGB").resize((w, h)))}

    @torch.no_grad()
    def render(self, inputs: dict, seed: int, height: int, width: int, num_inference_steps: int,
               num_frames: int = 1, cfg_scale: float = 1.0, negative_inputs: dict | None = None):
        """Z-Image's sampler at the control context's size, the ControlNet at DiffSynth's inference scale."""
        f = self.vae_factor
        height, width = inputs["control_context"].shape[-2] * f, inputs["control_context"].shape[-1] * f
        self.control_scale = SAMPLE_SCALE
        try:
            return super().render(inputs, seed, height, width, num_inference_steps, num_frames, cfg_scale,
                                  negative_inputs)
        finally:
            self.control_scale = TRAIN_SCALE

    # ---------------------------------------------------------------- loading
    @classmethod
    def load_pipeline(cls, config, dtype: torch.dtype, device: torch.device | str = "cpu",
                      role: str = "full") -> "ZImageControlNet":
        check_image_column(config, KEY)
        pipe = super().load_pipeline(config, dtype, device, role)
        if pipe.controlnet is None and role != "encode":
            raise ConfigError(f"{KEY} needs the Z-Image ControlNet: add {CONTROLNET_ENTRY} (or the Union-2.1-8steps / "
                              "Tile-2.1-8steps file) to model.model_id_with_origin_paths")
        if pipe.omni:
            raise ConfigError("the Fun-ControlNet goes with Z-Image-Turbo's DiT (DiffSynth runs it only on the Turbo "
                              "path); this DiT is Z-Image-Omni-Base's")
        rules = cls.data_rules(config)
        pipe.sample_reference = SampleReference(
            KEY, lambda: first_row_images(config, KEY, rules.size_factor, rules.width_factor))
        return pipe
