"""Every preset on disk, the way a user runs it: `diffsynth preset tiny/NAME` in a project folder, then each stage
of dvc.yaml in its order (the stage scripts' own main(), in-process: DVC adds nothing here but the order, the
params file and the dep/out bookkeeping, which is checked below), so no preset can break unseen.

Speed: only counts are lowered (micro-steps, validation rows and noise levels, sampler steps), through an overlay
that extends the twin, as a user would write one; nothing the recipe lacks is added. One thread, because the CI
machine's 2 cores are shared (measured: 2 threads under load cost ~7x the CPU of 1), and one empty MLflow
database copied into each workspace (building its tables costs seconds per preset)."""
from __future__ import annotations

import importlib.util
import json
import math
import re
import shlex
import shutil
import sys
from pathlib import Path

import pytest
import torch
import yaml
from helpers import REPO

from diffsynth.cli import main as cli
from diffsynth.config import Config, load_params
from diffsynth.models.tiny import tiny_preset
from diffsynth.presets import layers, load_preset, preset_params

PRESETS = REPO / "presets"


def is_recipe(path: Path) -> bool:
    """A preset that names its models (shared overlays such as base.yaml and tiny/cpu.yaml name none)."""
    model = preset_params(path, PRESETS)["model"]
    return bool(model.get("model_id_with_origin_paths") or model.get("model_paths"))


REAL = sorted(p for p in PRESETS.glob("*.yaml") if is_recipe(p))
TINY = sorted(p for p in (PRESETS / "tiny").glob("*.yaml") if is_recipe(p))

# Keys whose value changes numbers or names but no stage's code path on a tiny twin (one CPU process, built-in data),
# and switches inside the training step that have their own tests (checkpointing and its offload: test_memory_modes,
# test_block_swap; zero_cond_t: test_presets_qwen): two twins equal in every other key run the same stages the same
# way, so one of them stands for both below (the suite's time stays what the distinct paths cost). quant_options
# too: test_memory_modes trains nf4 and int8 LoRA on every family's twin, and its stage run costs ~2 min on a CPU.
SAME_PATH_KEYS = {
    "gradient": {"use_gradient_checkpointing", "use_gradient_checkpointing_offload"},
    "dataset": {"dataset_repeat", "dataset_num_workers", "dataset_base_path", "dataset_metadata_path"},
    "model": {"model_id_with_origin_paths", "tokenizer_path", "tokenizer_1_path", "tokenizer_2_path",
              "processor_path", "initialize_model_on_cpu", "zero_cond_t", "quant_options", "enable_npu_patch"},
    "train": {"learning_rate", "num_epochs", "max_steps", "min_timestep_boundary", "max_timestep_boundary"},
    "lora": {"lora_rank"}, "output": {"output_path"}, "tracking": {"experiment"},
    "sample": {"prompts", "height", "width", "num_frames"}, "accelerate": {"config", "num_processes"},
}


def code_path(twin: Path) -> str:
    """The twin's params without the SAME_PATH_KEYS, its tiny model id written as <tiny> (fp8_models and
    quant_options name it)."""
    params = preset_params(twin, PRESETS)
    if not params["lora"]["lora_base_model"]:
        # a full fine-tune: its LoRA targets and formats are unused, and its tiny model's layout is the LoRA run's
        # of that twin; what full fine-tuning adds (the trained model's export) is the family's, run once per family
        params["lora"].pop("lora_target_modules")
        params["export"].pop("formats")
        params["model"]["tiny_preset"] = tiny_preset(params["model"]["tiny_preset"])[0]
    tiny_id = params["model"]["model_id_with_origin_paths"].split(":", 1)[0]
    kept = {s: {k: v for k, v in values.items() if k not in SAME_PATH_KEYS.get(s, ())} for s, values in params.items()}
    return json.dumps(kept, sort_keys=True, default=str).replace(tiny_id + ":", "<tiny>:")


def stage_runs() -> dict[Path, list[Path]]:
    """{twin run through every stage: the twins of the same code path it stands for}, first by name."""
    runs: dict[str, list[Path]] = {}
    for twin in TINY:
        runs.setdefault(code_path(twin), []).append(twin)
    return {group[0]: group for group in runs.values()}


RUNS = stage_runs()


# --- every real recipe: loads, is a Config, and has its tiny twin -----------------------------------------------

@pytest.mark.parametrize("preset", REAL, ids=lambda p: p.stem)
def test_real_preset_loads_and_names_its_tiny_twin(preset):
    config = load_preset(preset, PRESETS)
    assert isinstance(config, Config) and config.model.tiny_preset == ""
    twin = PRESETS / "tiny" / preset.name
    assert twin.is_file(), f"{preset.name} has no tiny twin: add presets/tiny/{preset.name}"
    assert preset.resolve() in [p for p, _ in layers(twin)], f"tiny/{preset.name} does not extend {preset.name}"


def test_every_tiny_twin_extends_a_real_recipe():
    real = {p.resolve() for p in REAL}
    for twin in TINY:
        assert real & {p for p, _ in layers(twin)}, f"tiny/{twin.name} extends no real recipe"
    assert len(TINY) == len(REAL) >= 11


def test_every_twin_is_run_or_shares_a_code_path_with_one_that_is():
    """The stage runs below cover each distinct code path once: a twin that differs from every run twin in a key
    outside SAME_PATH_KEYS (a memory mode, a task, an extra input, another tiny model) is a run of its own."""
    assert sorted(t for group in RUNS.values() for t in group) == TINY
    for run, group in RUNS.items():
        assert {code_path(t) for t in group} == {code_path(run)}
    # the families, their variants and the kinds of training are each run
    configs = [load_preset(t, PRESETS) for t in RUNS]
    assert {c.model.tiny_preset for c in configs} == {load_preset(t, PRESETS).model.tiny_preset for t in TINY}
    assert {c.train.task for c in configs} == {load_preset(t, PRESETS).train.task for t in TINY}
    lora_runs = {c.model.tiny_preset for c in configs if c.lora.lora_base_model}
    assert {load_preset(t, PRESETS).model.tiny_preset for t in TINY} == lora_runs  # every twin's layout: a LoRA run


# --- every tiny twin: the whole pipeline ---------------------------------------------------------------------------

def fast_overlay(params: dict) -> dict:
    """Lower counts only (never raise one): what a user would put in an overlay for a quick smoke run."""
    t, v, s = params["train"], params["validation"], params["sample"]
    sigmas = v["sigmas"]
    return {
        "train": {"max_steps": min(t["max_steps"] or 2, 2)},
        "validation": {"num_samples": min(v["num_samples"], 1), "sigmas": [sigmas[len(sigmas) // 2]]},
        "sample": {"num_inference_steps": min(s["num_inference_steps"], 2)},
    }


def stage_commands() -> list[tuple[str, dict, list[str]]]:
    """(name, dvc.yaml entry, stage-script argv) in dvc.yaml's order; the script is the `stages/*.py` in cmd."""
    out = []
    for name, stage in yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"].items():
        words = shlex.split(stage["cmd"])
        script = next(i for i, w in enumerate(words) if re.fullmatch(r"stages/\w+\.py", w))
        out.append((name, stage, words[script:]))
    return out


def expand(text: str, params: dict) -> str:
    """dvc.yaml's ${section.key} templating."""
    def value(m):
        section, key = m[1].split(".", 1)
        return str(params[section][key])
    return re.sub(r"\$\{([\w.]+)\}", value, text)


def paths(entries, params: dict) -> list[str]:
    return [expand(next(iter(e)) if isinstance(e, dict) else e, params) for e in entries or []]


def run_stage(argv: list[str], monkeypatch) -> int:
    script = REPO / argv[0]
    spec = importlib.util.spec_from_file_location(f"stage_{script.stem}", script)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    monkeypatch.setattr(sys, "argv", [str(script), *argv[1:]])
    return module.main()


@pytest.fixture(scope="module")
def empty_mlflow_db(tmp_path_factory) -> Path:
    from mlflow.tracking import MlflowClient
    path = tmp_path_factory.mktemp("mlflow") / "mlflow.db"
    MlflowClient(f"sqlite:///{path}").search_experiments()  # creates the tables
    return path


@pytest.fixture()
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.mark.slow
@pytest.mark.parametrize("twin", sorted(RUNS), ids=lambda p: p.stem)
def test_tiny_twin_runs_every_stage(twin, tmp_path, monkeypatch, empty_mlflow_db, one_thread):
    # a project folder as a clone has it: presets/, configs/; the stage scripts are the repository's
    for folder in ("presets", "configs"):
        (tmp_path / folder).symlink_to(REPO / folder)
    shutil.copyfile(empty_mlflow_db, tmp_path / "mlflow.db")
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(REPO / "stages"))  # the scripts' `from _layout import ...`
    for var in ("DIFFSYNTH_SKIP_DOWNLOAD", "MLFLOW_TRACKING_URI", "DIFFSYNTH_RESUME_DIR"):
        monkeypatch.delenv(var, raising=False)  # the pipeline's own defaults are what is tested
    monkeypatch.setenv("DIFFSYNTH_MODEL_BASE_PATH", str(tmp_path / "models"))

    name = f"tiny/{twin.stem}"
    assert cli(["preset", name]) == 0
    as_written = yaml.safe_load(Path("params.yaml").read_text())
    assert load_params() == load_preset(twin, PRESETS)
    overlay = fast_overlay(as_written)
    Path("quick.yaml").write_text(yaml.safe_dump({"extends": f"presets/{name}.yaml", **overlay}))
    assert cli(["preset", "quick.yaml"]) == 0
    params = yaml.safe_load(Path("params.yaml").read_text())
    changed = {f"{s}.{k}" for s in params for k in params[s] if params[s][k] != as_written[s][k]}
    assert changed <= {f"{s}.{k}" for s in overlay for k in overlay[s]}, "the overlay changed more than counts"

    for stage, entry, argv in stage_commands():
        missing = [p for p in paths(entry.get("deps"), params) if not Path(p).exists() and not (REPO / p).exists()]
        assert not missing, f"{name}: stage {stage} would find no dep {missing} (dvc repro fails)"
        for key in entry.get("params", []):
            section, _, field = (next(iter(key)) if isinstance(key, dict) else key).partition(".")
            assert section in params and (not field or field in params[section]), f"{stage}: params key {key}"
        assert run_stage(argv, monkeypatch) == 0, f"{name}: stage {stage} failed"
        outs = paths(entry.get("outs"), params) + paths(entry.get("metrics"), params) + paths(entry.get("plots"), params)
        lacking = [p for p in outs if not Path(p).exists()]
        assert not lacking, f"{name}: stage {stage} did not write {lacking}"

    config = load_params()
    # data: every built-in row valid
    report = json.loads(Path("reports/data.json").read_text())
    rows = Path("outputs/data/metadata.jsonl").read_text().splitlines()
    assert report["invalid_rows"] == 0 and len(rows) == report["valid_rows"] > 0, report
    # models: every entry pinned, the tiny model written where its ids say
    manifest = json.loads(Path("outputs/models/manifest.json").read_text())
    assert manifest["tiny_preset"] == config.model.tiny_preset
    entries = [e.strip() for e in config.model.model_id_with_origin_paths.split(",")]
    assert set(entries) <= set(manifest["models"]) and all(manifest["models"][e] for e in entries)
    # cache: every valid row encoded, and the sample prompts
    if config.cache.enabled:
        index = json.loads(Path(config.cache.data_dir, "index.json").read_text())
        assert index["rows"] == len(rows)
    # train: the steps asked for, a finite loss, a checkpoint, a sample per prompt and seed, an MLflow run
    metrics = json.loads(Path("outputs/train/metrics.json").read_text())
    assert metrics["steps"] == config.train.max_steps and math.isfinite(metrics["final_loss"])
    assert math.isfinite(metrics["val_loss"]) and Path(metrics["last_checkpoint"]).is_file()
    samples = list(Path(config.sample.out_dir).glob("*.png"))
    # a VAE named in --offload_models is not loaded when training from the cache (DiffSynth's split and low-VRAM
    # recipes): no sample can be decoded, and the train stage says so
    vae_offloaded = config.cache.enabled and "vae" in (config.model.offload_models or "").lower()
    if vae_offloaded:
        assert samples == [], samples
    else:
        assert len(samples) >= len(config.sample.prompts) * len(config.sample.seeds), samples
    run = json.loads(Path("outputs/train/mlflow_run.json").read_text())
    from mlflow.tracking import MlflowClient
    client = MlflowClient(run["tracking_uri"])
    recorded = client.get_run(run["run_id"])
    assert recorded.data.metrics and recorded.info.status == "FINISHED"
    # export: every format written and every key matched on the base model, logged beside the run
    compat = json.loads(Path("reports/lora_compat.json").read_text())
    assert compat["tensors"] > 0 and compat["unmatched_keys"] == 0
    if config.lora.lora_base_model:  # a LoRA: every format
        assert set(compat["formats"]) == set(config.export.formats)
        for fmt, record in compat["formats"].items():
            assert record["unmatched_keys"] == 0 and Path(record["file"]).is_file(), (fmt, record)
    if config.train.trainable_models:  # a full fine-tune: the trained weights in a model folder
        assert compat["model"]["full_tensors"] > 0 and list(Path(compat["model"]["folder"]).rglob("*.safetensors"))
    assert any(a.path == "export" for a in client.list_artifacts(run["run_id"]))
