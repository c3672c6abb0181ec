"""Evaluation at a save point: the fixed-noise validation loss and the sample images (MLflow and a DVC plot folder)."""
from __future__ import annotations

from pathlib import Path

from ..config import Config
from ..families import Family
from ..progress import progress
from ..sampling import SampleEntry, entry_inputs, render_options, sample_entries
from .module import to_device
from .schedule import FlowMatchSchedule
from .validation import FixedNoiseValidator


def render_samples(pipe: Family, config: Config, prompt_inputs: dict | None) -> list[tuple[SampleEntry, int, object]]:
    """(entry, seed, image or list of frames) for every ``sample.prompts`` entry × its seeds; conditioned on the
    prompt cache when training from the encoder cache. A plain prompt string renders as it always has: its
    conditioning, then ``render`` with the section's steps and no other argument."""
    s, out = config.sample, []
    entries = sample_entries(config, type(pipe))
    pairs = [(entry, int(seed)) for entry in entries for seed in entry.seeds]
    conditioning: dict[int, tuple] = {}
    for entry, seed in progress(pairs, desc="samples", unit="image"):
        if entry.index not in conditioning:  # once per entry, for all its seeds
            if prompt_inputs is not None:
                negative = prompt_inputs.get(entry.negative_key)
                conditioning[entry.index] = (to_device(prompt_inputs[entry.key], pipe.device),
                                             None if negative is None else to_device(negative, pipe.device))
            else:
                conditioning[entry.index] = entry_inputs(pipe, config, entry)
        inputs, negative = conditioning[entry.index]
        image = pipe.render(inputs, seed, s.height, s.width, entry.num_inference_steps, num_frames=s.num_frames,
                            **render_options(pipe, entry, negative))
        out.append((entry, seed, image))
    return out


class Evaluator:
    """Runs at every save point: the validation loss (logged) and one sample per prompt and seed.

    Under FSDP every rank runs it (the wrapped blocks gather their weights in collectives); only the main process
    logs. ``prompt_inputs`` are the encoded sample prompts when training from the encoder cache."""

    def __init__(self, pipe: Family, schedule: FlowMatchSchedule, config: Config, validator: FixedNoiseValidator,
                 prompt_inputs: dict | None, tracker, log, main: bool):
        self.pipe, self.schedule, self.config, self.validator = pipe, schedule, config, validator
        self.prompt_inputs, self.tracker, self.log, self.main = prompt_inputs, tracker, log, main
        # --task sft:train has no text encoder and no prompt cache, so no samples (as in DiffSynth); without a VAE
        # (DiffSynth's split recipe names only the DiT) no sample can be decoded: the validation loss still runs
        self.renders = not (pipe.role == "train_cached" and (prompt_inputs is None or pipe.vae is None))
        if main and not self.renders and config.sample.prompts:
            why = "no VAE is loaded" if pipe.vae is None else "no prompt cache (the text encoder is not loaded)"
            print(f"[train] training from the encoder cache with {why}: no sample images; the validation loss "
                  "is still logged at every save point", flush=True)

    def evaluate(self, at: int) -> dict | None:
        """The validation metrics (main process; None on the others), after logging them and the samples."""
        metrics = self.validator.evaluate(self.pipe, self.schedule)
        renders = self.renders
        if not self.main:
            if renders:
                render_samples(self.pipe, self.config, self.prompt_inputs)
            return None
        self.log(metrics, at)
        print(f"[train] step {at}: val_loss {metrics['val_loss']:.5f}", flush=True)
        out_dir = self.config.sample.out_dir
        if out_dir:  # a DVC output even when no sample is rendered
            Path(out_dir).mkdir(parents=True, exist_ok=True)
        if renders:
            self._log_samples(at)
        return metrics

    def _log_samples(self, at: int) -> None:
        table = {"prompt": [], "seed": [], "step": [], "image": [], "image_key": [], "negative_prompt": [],
                 "cfg_scale": [], "num_inference_steps": [], "images": [], "embedded_guidance": [], "sigma_shift": []}
        for entry, seed, image in render_samples(self.pipe, self.config, self.prompt_inputs):
            i, prompt = entry.index, entry.prompt
            key = f"sample/p{i}_s{seed}"  # one image key per prompt × seed; the step slider walks the save points
            shown = self.tracker.log_sample(image, key=key, step=at)
            if self.config.sample.out_dir:  # also on disk: a DVC image plot, and kept when MLflow is down
                folder = Path(self.config.sample.out_dir)
                folder.mkdir(parents=True, exist_ok=True)
                shown.save(folder / f"step{at:06d}_p{i}_s{seed}.png")
            for column, value in (("prompt", prompt), ("seed", seed), ("step", at), ("image", shown),
                                  ("image_key", key), *entry.settings().items()):
                table[column].append(value)
        self.tracker.log_table(table, "samples.json")
