"""Save-point samples, family-neutral: the ``sample.prompts`` entries and classifier-free guidance.

An entry is a prompt string (rendered with the section's settings, exactly as before entries existed) or a mapping
that sets its own ``negative_prompt``, ``cfg_scale`` (alias ``guidance_scale``), ``num_inference_steps``, ``seeds``
(or ``seed``), ``embedded_guidance`` and ``sigma_shift`` (families that declare them) and ``images``: the file(s)
standing for the family's sample image input (``Family.sample_image_input``: Qwen-Image-Edit's edit image,
FLUX.1-Kontext's reference images, Wan's first frame), one path or a list, as a dataset cell of that column would be.

A family takes the entry through its hooks: ``sample_inputs(prompt, height, width, num_frames, images=...)`` (only
given when the entry has images) and ``render(..., cfg_scale=, negative_inputs=)`` (only given when the entry is
guided, cfg_scale != 1) plus its declared ``sample_options``; ``guided_velocity`` is the combination DiffSynth's
``cfg_guided_model_fn`` computes.
"""
from __future__ import annotations

import difflib
import hashlib
import inspect
from dataclasses import dataclass
from pathlib import Path

from .errors import ConfigError

# numeric render() keywords a family declares in ``sample_options``: set for all entries in the section or per entry
SAMPLE_OPTIONS = {
    "embedded_guidance": "has no embedded (distilled) guidance; remove it (cfg_scale is classifier-free guidance)",
    "sigma_shift": "samples on its own sigma grid (no sigma_shift); remove it",
}
ENTRY_KEYS = ("prompt", "negative_prompt", "cfg_scale", "guidance_scale", "num_inference_steps", "images", "seeds",
              "seed", *SAMPLE_OPTIONS)


@dataclass(frozen=True)
class SampleEntry:
    index: int
    prompt: str
    negative_prompt: str
    cfg_scale: float
    num_inference_steps: int
    seeds: tuple[int, ...]
    images: str | tuple[str, ...] | None = None  # a path (one image) or paths (a list), as a dataset cell
    embedded_guidance: float | None = None
    sigma_shift: float | None = None

    @property
    def guided(self) -> bool:
        """Two predictions per step (DiffSynth: cfg_scale != 1, also below 1)."""
        return self.cfg_scale != 1

    @property
    def key(self) -> str:  # the prompt cache's names of the entry's conditioning
        return f"prompt{self.index}"

    @property
    def negative_key(self) -> str:
        return f"negative{self.index}"

    @property
    def image_paths(self) -> list[str]:
        return [] if self.images is None else [self.images] if isinstance(self.images, str) else list(self.images)

    def settings(self) -> dict:
        """The entry's settings as columns of the samples table."""
        return {"negative_prompt": self.negative_prompt, "cfg_scale": self.cfg_scale,
                "num_inference_steps": self.num_inference_steps, "images": ",".join(self.image_paths),
                **{key: getattr(self, key) for key in SAMPLE_OPTIONS}}


def _where(i: int) -> str:
    return f"sample.prompts[{i}]"


def _number(value, kind, where: str):
    if isinstance(value, bool) or not isinstance(value, (int, float)) or (kind is int and value != int(value)):
        raise ConfigError(f"{where} = {value!r}: must be {'an integer' if kind is int else 'a number'}")
    return kind(value)


def _entry(i: int, raw, s, spec) -> SampleEntry:
    defaults = dict(negative_prompt=s.negative_prompt, cfg_scale=float(s.cfg_scale),
                    num_inference_steps=int(s.num_inference_steps), seeds=tuple(int(x) for x in s.seeds))
    options = getattr(spec, "sample_options", ()) if spec is not None else ()
    declared = {key: None if key not in options or getattr(s, key) is None else float(getattr(s, key))
                for key in SAMPLE_OPTIONS}
    if isinstance(raw, str):
        return SampleEntry(i, raw, **declared, **defaults)
    where = _where(i)
    if not isinstance(raw, dict):
        raise ConfigError(f"{where} is a {type(raw).__name__}: an entry is a prompt string or a mapping "
                          "{prompt, negative_prompt, cfg_scale, num_inference_steps, images, seeds}")
    for key in raw:
        if key not in ENTRY_KEYS:
            hint = difflib.get_close_matches(str(key), ENTRY_KEYS, n=1)
            raise ConfigError(f"{where}.{key}: unknown entry key" + (f"; did you mean {hint[0]!r}?" if hint else
                              f"; known: {', '.join(ENTRY_KEYS)}"))
    for a, b in (("cfg_scale", "guidance_scale"), ("seeds", "seed")):
        if a in raw and b in raw:
            raise ConfigError(f"{where} sets both {a} and {b} (the same setting): keep one")
    prompt = raw.get("prompt")
    if not isinstance(prompt, str):
        raise ConfigError(f"{where} has no prompt string (prompt: {prompt!r}): add `prompt: <text>`")
    out = dict(defaults)
    if "negative_prompt" in raw:
        if not isinstance(raw["negative_prompt"], str):
            raise ConfigError(f"{where}.negative_prompt = {raw['negative_prompt']!r}: must be a string")
        out["negative_prompt"] = raw["negative_prompt"]
    cfg = raw.get("cfg_scale", raw.get("guidance_scale"))
    if cfg is not None:
        out["cfg_scale"] = _number(cfg, float, f"{where}.cfg_scale")
    if raw.get("num_inference_steps") is not None:
        out["num_inference_steps"] = _number(raw["num_inference_steps"], int, f"{where}.num_inference_steps")
        if out["num_inference_steps"] < 1:
            raise ConfigError(f"{where}.num_inference_steps = {out['num_inference_steps']}: must be >= 1")
    seeds = raw.get("seeds", raw.get("seed"))
    if seeds is not None:
        seeds = seeds if isinstance(seeds, (list, tuple)) else [seeds]
        if not seeds:
            raise ConfigError(f"{where}.seeds is empty: give at least one seed, or leave it out for sample.seeds")
        out["seeds"] = tuple(_number(x, int, f"{where}.seeds") for x in seeds)
    for key, why_not in SAMPLE_OPTIONS.items():
        if raw.get(key) is not None:
            if key not in options:
                raise ConfigError(f"{where}.{key}: the {spec.name} family {why_not}")
            declared[key] = _number(raw[key], float, f"{where}.{key}")
    if declared["sigma_shift"] is not None and declared["sigma_shift"] <= 0:
        raise ConfigError(f"{where}.sigma_shift = {declared['sigma_shift']}: must be > 0")
    images = raw.get("images")
    if images is not None:
        if isinstance(images, (list, tuple)):
            if not images or not all(isinstance(p, str) and p for p in images):
                raise ConfigError(f"{where}.images = {images!r}: give a path or a non-empty list of paths")
            images = tuple(images)
        elif not isinstance(images, str) or not images:
            raise ConfigError(f"{where}.images = {images!r}: give a path or a non-empty list of paths")
    return SampleEntry(i, prompt, images=images, **declared, **out)


def sample_entries(config, spec=None) -> list[SampleEntry]:
    """Every ``sample.prompts`` entry with its settings resolved (the section's values where it sets none)."""
    if spec is None:
        from .families import spec_for
        spec = spec_for(config)
    return _entries(config, spec)


def _entries(config, spec) -> list[SampleEntry]:  # spec None: no family-specific key is used
    return [_entry(i, raw, config.sample, spec) for i, raw in enumerate(config.sample.prompts)]


def check_samples(config) -> None:
    """At config check time: the section's values, every entry's keys and types, and every listed image: its
    family must take sample images, and the file must exist."""
    s = config.sample
    if s.num_inference_steps < 1:
        raise ConfigError(f"sample.num_inference_steps = {s.num_inference_steps}: must be >= 1")
    if any(isinstance(p, dict) for p in s.prompts) or s.cfg_scale != 1 or s.sigma_shift is not None:
        from .families import spec_for
        spec = spec_for(config)
    else:
        spec = None  # plain strings at cfg 1: today's samples, nothing family-specific
    if s.sigma_shift is not None:  # embedded_guidance has a default every family without one ignores; this has not
        if "sigma_shift" not in spec.sample_options:
            raise ConfigError(f"sample.sigma_shift: the {spec.name} family {SAMPLE_OPTIONS['sigma_shift']}")
        if s.sigma_shift <= 0:
            raise ConfigError(f"sample.sigma_shift = {s.sigma_shift}: must be > 0")
    for e in _entries(config, spec):
        if e.guided and not accepts(spec.render, "negative_inputs"):
            raise ConfigError(f"{_where(e.index)}: cfg_scale {e.cfg_scale}, but the {spec.name} family's samples have "
                              "no classifier-free guidance yet; set cfg_scale: 1 (sample.cfg_scale or the entry's)")
        if not e.images:
            continue
        take = getattr(spec, "sample_image_input", "") if accepts(spec.sample_inputs, "images") else ""
        wanted = [k.strip() for k in (config.model.extra_inputs or "").split(",") if k.strip()]
        if not take or take not in wanted:
            needs = (f"; they stand for its {take!r} input, so set model.extra_inputs: {take}" if take else
                     " (only image-conditioned families do: edit, Kontext, image-to-video)")
            raise ConfigError(f"{_where(e.index)}.images: the {spec.name} family's samples take no images{needs}; "
                              "or remove images")
        for path in e.image_paths:
            if not Path(path).is_file():
                raise ConfigError(f"{_where(e.index)}.images: {path} does not exist (paths are relative to the "
                                  "project root, where params.yaml is): fix the path or add the file")


def accepts(hook, name: str) -> bool:
    """Whether a family hook takes the keyword ``name`` (a family, or a variant overriding a hook, may not yet)."""
    try:
        return name in inspect.signature(hook).parameters
    except (TypeError, ValueError):
        return False


def image_digests(config) -> dict[str, str]:
    """``{path: sha256}`` of every sample image (the prompt cache's fingerprint: a replaced file is noticed)."""
    out = {}
    for raw in config.sample.prompts:
        if isinstance(raw, dict) and raw.get("images"):
            images = raw["images"]
            for path in [images] if isinstance(images, str) else images:
                p = Path(path)
                out[path] = hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else "missing"
    return out


def load_images(config, entry: SampleEntry, spec=None):
    """The entry's image(s) loaded and sized as a dataset cell of the family's sample image column would be (one
    image for a path, a list for a list); None without images."""
    if entry.images is None:
        return None
    from .data.dataset import ImageRules
    from .data.operators import load_image_cell

    if spec is None:
        from .families import spec_for
        spec = spec_for(config)
    rules, r = spec.data_rules(config), config.resolution
    sizing = ImageRules(r.max_pixels, r.height, r.width, rules.size_factor, rules.width_factor)
    value = entry.images if isinstance(entry.images, str) else list(entry.images)
    try:
        return load_image_cell(".", value, sizing)
    except (OSError, ValueError) as e:
        raise ConfigError(f"{_where(entry.index)}.images: cannot load {value!r} ({e}); give image files") from None


def entry_inputs(pipe, config, entry: SampleEntry, images=None) -> tuple[dict, dict | None]:
    """(conditioning, negative conditioning or None) of an entry: the family's ``sample_inputs`` for the prompt and,
    when guided, for the negative prompt with the same images. ``images``: already loaded (else loaded here)."""
    s = config.sample
    if images is None and entry.images is not None:
        images = load_images(config, entry, type(pipe))
    extra = {} if images is None else {"images": images}
    cond = pipe.sample_inputs(entry.prompt, s.height, s.width, s.num_frames, **extra)
    negative = (pipe.sample_inputs(entry.negative_prompt, s.height, s.width, s.num_frames, **extra)
                if entry.guided else None)
    return cond, negative


def render_options(pipe, entry: SampleEntry, negative: dict | None) -> dict:
    """The keyword arguments ``render`` gets for the entry beyond today's: none for an unguided entry of a family
    without sample options (so a family implementing only the plain hooks keeps working)."""
    out = {}
    if entry.guided:
        if negative is None:
            raise ConfigError(f"{_where(entry.index)} is guided (cfg_scale {entry.cfg_scale}) but the prompt cache "
                              "holds no negative prompt for it: rebuild it (`dvc repro` re-runs cache_prompts)")
        out.update(cfg_scale=entry.cfg_scale, negative_inputs=negative)
    for key in SAMPLE_OPTIONS:
        if key in getattr(pipe, "sample_options", ()) and getattr(entry, key) is not None:
            out[key] = getattr(entry, key)
    return out


def guided_velocity(predict, latents, timestep, inputs: dict, cfg_scale: float = 1.0,
                    negative_inputs: dict | None = None):
    """DiffSynth's classifier-free guidance: ``uncond + cfg_scale * (cond - uncond)``, the unconditional prediction
    under the negative prompt; one prediction when ``cfg_scale`` is 1 (or no negative is given)."""
    cond = predict(latents, timestep, inputs)
    if cfg_scale == 1 or negative_inputs is None:
        return cond
    uncond = predict(latents, timestep, negative_inputs)
    return uncond + cfg_scale * (cond - uncond)


def euler_sample(predict, latents, sigmas, inputs: dict, cfg_scale: float = 1.0,
                 negative_inputs: dict | None = None, pin=None):
    """DiffSynth's flow-matching Euler steps down ``sigmas`` (the family's grid, ending at 0), each velocity guided
    as :func:`guided_velocity`; ``pin(latents)`` re-imposes known latents (a video's first frame) before each step
    and after the last."""
    for i in range(len(sigmas) - 1):
        if pin is not None:
            latents = pin(latents)
        velocity = guided_velocity(predict, latents, (sigmas[i] * 1000).reshape(1), inputs, cfg_scale,
                                   negative_inputs)
        latents = latents + (sigmas[i + 1] - sigmas[i]) * velocity
    return latents if pin is None else pin(latents)
