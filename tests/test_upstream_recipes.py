"""DiffSynth-Studio's own example recipes, as the table in diffsynth/families/upstream_recipes.yaml records them:
the family comes from the model ids, a recipe is never read as another family, and the coverage report adds up."""
from __future__ import annotations

import importlib.util
import re
import subprocess
from pathlib import Path

import pytest
import yaml

from diffsynth.cli import main as cli_main
from diffsynth.command_line import config_from_args
from diffsynth.config import config_from_dict
from diffsynth.errors import ConfigError
from diffsynth import coverage as recipe_coverage
from diffsynth.families import all_specs, upstream
from diffsynth.presets import preset_params

REPO = Path(__file__).resolve().parents[1]
TABLE = upstream.table()
OURS = sorted(s.name for s in all_specs())

# One model id per DiffSynth family (its recipes' main model), and the family of ours that trains it (None: refused).
ID_PER_FAMILY = {
    "qwen_image": ("Qwen/Qwen-Image", "qwen_image"),
    "flux": ("black-forest-labs/FLUX.1-dev", "flux"),
    "wanvideo": ("Wan-AI/Wan2.1-T2V-1.3B", "wan"),
    "z_image": ("Tongyi-MAI/Z-Image-Turbo", "z_image"),
    "flux2": ("black-forest-labs/FLUX.2-dev", "flux2"),
    "ltx2": ("DiffSynth-Studio/LTX-2-Repackage", None),
    "minimax_h3": ("MiniMax/MiniMax-H3", None),
    "lingbot_video": ("Robbyant/lingbot-video-dense-1.3b", None),
    "krea2": ("krea/Krea-2-Raw", None),
    "boogu_image": ("Boogu/Boogu-Image-0.1-Base", None),
    "ernie_image": ("PaddlePaddle/ERNIE-Image", None),
    "ideogram4": ("ideogram-ai/ideogram-4-fp8", None),
    "stable_diffusion": ("AI-ModelScope/stable-diffusion-v1-5", None),
    "stable_diffusion_xl": ("stabilityai/stable-diffusion-xl-base-1.0", None),
    "ace_step": ("ACE-Step/Ace-Step1.5", None),
    "anima": ("circlestone-labs/Anima", None),
    "hidream_o1_image": ("HiDream-ai/HiDream-O1-Image", None),
    "joyai_image": ("jd-opensource/JoyAI-Image-Edit", None),
    "mova": ("openmoss/MOVA-360p", None),
}


def test_the_table_names_its_upstream_commit_and_every_family():
    assert len(TABLE["commit"]) == 40 and int(TABLE["commit"], 16) >= 0
    assert set(ID_PER_FAMILY) == set(TABLE["families"])  # a refreshed table with a new family needs a row here
    for family, (model_id, _) in ID_PER_FAMILY.items():
        assert model_id in TABLE["families"][family]["model_ids"]
    assert sum(f["recipes"] for f in TABLE["families"].values()) == len(TABLE["recipes"])


@pytest.mark.parametrize("family", sorted(ID_PER_FAMILY))
def test_a_model_id_of_each_diffsynth_family_is_recognised_or_refused_by_name(family, capsys):
    model_id, ours = ID_PER_FAMILY[family]
    argv = ["params", "--from-args", "--model_id_with_origin_paths", f"{model_id}:model.safetensors",
            "--lora_base_model", "dit"]
    code = cli_main(argv)
    out, err = capsys.readouterr()
    if ours:
        assert code == 0 and yaml.safe_load(out)["model"]["family"] == ours
        assert upstream.diffsynth_family(ours) == family
    else:
        line = err.strip()
        assert code == 2 and "\n" not in line, err
        # the id, its DiffSynth family and the families we support, in that one line; no silent default
        assert model_id in line and f"DiffSynth's {family} family" in line
        assert all(name in line for name in OURS)


def test_the_default_family_applies_only_when_no_model_is_named():
    assert config_from_args(["--lora_base_model", "dit"]).model.family == "qwen_image"
    with pytest.raises(ConfigError, match="someone/my-own-model"):
        config_from_args(["--model_id_with_origin_paths", "someone/my-own-model:dit.safetensors",
                          "--lora_base_model", "dit"])
    with pytest.raises(ConfigError, match="--family"):
        config_from_args(["--model_paths", '["models/dit.safetensors"]', "--lora_base_model", "dit"])
    # naming the family decides, whatever the ids say
    assert config_from_args(["--family", "wan", "--model_id_with_origin_paths", "someone/my-own-model:x",
                             "--lora_base_model", "dit"]).model.family == "wan"


def test_tiny_twins_are_their_real_models_family():
    assert upstream.recognise("diffsynth-tiny/Qwen-Image:transformer/*.safetensors") == "qwen_image"
    assert upstream.recognise("diffsynth-tiny/FLUX.1-dev:flux1-dev.safetensors") == "flux"
    assert upstream.recognise("diffsynth-tiny/Wan2.2-TI2V-5B:Wan2.2_VAE.pth") == "wan"
    assert upstream.recognise("diffsynth-tiny/Z-Image-Turbo:transformer/*.safetensors") == "z_image"
    with pytest.raises(upstream.ForeignModelError, match="ltx2"):
        upstream.recognise("diffsynth-tiny/LTX-2-Repackage:transformer/*.safetensors")


def test_models_of_two_of_our_families_are_refused():
    with pytest.raises(ConfigError, match="different families"):
        upstream.recognise("Qwen/Qwen-Image:vae/*.safetensors,Wan-AI/Wan2.1-T2V-1.3B:Wan2.1_VAE.pth")


def test_our_model_id_patterns_agree_with_the_table():
    """An id our specs claim is one DiffSynth's recipes of that family use (or of a family sharing it)."""
    claimed = 0
    for model_id, families in TABLE["model_ids"].items():
        for ours in upstream.our_families_of(model_id):
            claimed += 1
            assert upstream.diffsynth_family(ours) in families, (model_id, ours, families)
    assert claimed  # the patterns claim the ids of the families we have
    for spec in all_specs():
        assert upstream.diffsynth_family(spec.name) in TABLE["families"], spec.name


def _recipe_argv(command: dict) -> list[str]:
    # as upstream writes it; its data and output paths are never read by `params --from-args`
    return list(command["args"])


@pytest.mark.parametrize("family", sorted(TABLE["families"]))
def test_no_upstream_recipe_is_read_as_another_family(family, capsys):
    recipes = [r for r in TABLE["recipes"] if r["family"] == family]
    ours_here = [o for o in OURS if upstream.diffsynth_family(o) == family]
    others = [o for o in OURS if o not in ours_here]
    accepted = refused = 0
    for recipe in recipes:
        for command in recipe["commands"]:
            argv = _recipe_argv(command)
            # recognition first: our family of this DiffSynth family, or refused naming it
            foreign = None
            try:
                assert upstream.diffsynth_family(upstream.recognise_argv(argv)) == family, recipe["path"]
            except upstream.ForeignModelError as e:
                foreign = e
                assert e.diffsynth_family == family and family in str(e), (recipe["path"], str(e))
            code = cli_main(["params", "--from-args", *argv])
            out, err = capsys.readouterr()
            if code == 0:
                accepted += 1
                assert foreign is None
                assert upstream.diffsynth_family(yaml.safe_load(out)["model"]["family"]) == family, recipe["path"]
            else:
                refused += 1
                line = err.strip()
                assert code == 2 and "\n" not in line, (recipe["path"], err)
                if foreign is not None:
                    assert str(foreign) in line
                # a later refusal (a task, a flag, an extra input) speaks of the family recognised, no other
                assert not any(f"the {o} family" in line or line.startswith(f"error: {o} ") for o in others), line
    assert accepted + refused == sum(len(r["commands"]) for r in recipes)
    if not ours_here:
        assert accepted == 0


@pytest.fixture(scope="module")
def rows():
    return recipe_coverage.coverage(REPO / "presets")  # every recipe command through `params --from-args`: once


def test_coverage_adds_up_and_names_its_presets(rows):
    assert {r.family for r in rows} == set(TABLE["families"])
    assert sum(r.total for r in rows) == len(TABLE["recipes"])
    presets = {p.stem for p in (REPO / "presets").glob("*.yaml")}
    mapped = recipe_coverage.preset_recipes(REPO / "presets")
    recipe_paths = {r["path"] for r in TABLE["recipes"]}
    assert set(mapped) <= recipe_paths, set(mapped) - recipe_paths  # a preset names a recipe upstream has
    for row in rows:
        for path, names in row.preset.items():
            assert set(names) <= presets and path in recipe_paths
        if not row.ours:
            assert not row.preset and not row.flags, row.family
        for why in row.refused.values():
            assert why and "\n" not in why
    qwen = next(r for r in rows if r.family == "qwen_image")
    assert qwen.preset["examples/qwen_image/model_training/lora/Qwen-Image.sh"] == ["qwen-image-lora"]
    # every preset of a real recipe is one of them
    assert {n for names in mapped.values() for n in names} == presets - {"base"}
    # a recipe of ours that runs by flags is read as its family
    for row in rows:
        for path in row.flags:
            recipe = next(r for r in TABLE["recipes"] if r["path"] == path)
            for command in recipe["commands"]:
                family, why = recipe_coverage.run_by_flags(command["args"])
                assert why is None and upstream.diffsynth_family(family) == row.family


def test_diffsynth_families_prints_the_coverage_per_family(rows, monkeypatch, capsys):
    monkeypatch.setattr(recipe_coverage, "coverage", lambda presets_dir=None: rows)
    assert cli_main(["families"]) == 0
    printed = capsys.readouterr().out
    for row in rows:
        counts = f"{row.total:>8}{len(row.preset):>8}{len(row.flags):>7}{len(row.refused):>9}"
        assert f"{row.family:<22}{', '.join(row.ours) or '-':<34}{counts}" in printed
        for path in row.preset:
            assert path.split("/model_training/")[1] in printed
    assert f"{sum(r.total for r in rows):>8}" in printed.split("total", 1)[1].splitlines()[0]


def test_the_recipe_reader_reads_a_diffsynth_checkout(tmp_path):
    """tests/upstream/read_recipes.py on a two-recipe repository shaped like DiffSynth-Studio's."""
    spec = importlib.util.spec_from_file_location("read_recipes", REPO / "tests" / "upstream" / "read_recipes.py")
    reader = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(reader)
    repo = tmp_path / "ds"
    (repo / "diffsynth" / "diffusion").mkdir(parents=True)
    (repo / "diffsynth" / "diffusion" / "parsers.py").write_text(
        "def add_size_config(parser):\n    parser.add_argument('--height')\n    return parser\n"
        "def add_image_size_config(parser):\n    parser.add_argument('--max_pixels')\n    return parser\n"
        "def add_general_config(parser):\n    parser.add_argument('--model_id_with_origin_paths')\n"
        "    parser = add_size_config(parser)\n    return parser\n")
    train = repo / "examples" / "fam" / "model_training"
    (train / "lora").mkdir(parents=True)
    (train / "train.py").write_text(
        "p = add_general_config(p)\np = add_image_size_config(p)\np.add_argument('--own_flag')\n"
        "launcher_map = {'sft': 1, 'sft:train': 2}\n")
    (train / "lora" / "Model-A.sh").write_text(
        "modelscope download --dataset x --local_dir ./data\n\n"
        "# accelerate launch examples/fam/model_training/train.py \\\n#   --model_id_with_origin_paths \"old/id:x\"\n"
        "accelerate launch --config_file c.yaml examples/fam/model_training/train.py \\\n"
        "  --model_id_with_origin_paths \"org/Model-A:dit/*.safetensors,org/Enc:te.safetensors\" \\\n"
        "  --num_frames 121\\\n  --extra_inputs \"input_image\" \\\n  --task \"sft:train\"\n")
    (train / "lora" / "Model-B.sh").write_text("# inference only\n")
    git = ["git", "-C", str(repo), "-c", "user.name=t", "-c", "user.email=t@t"]
    subprocess.run(["git", "init", "-q", str(repo)], check=True)
    subprocess.run([*git, "add", "."], check=True)
    subprocess.run([*git, "commit", "-q", "-m", "x"], check=True)
    out = tmp_path / "table.yaml"
    assert reader.main([str(repo), "--out", str(out)]) == 0
    table = yaml.safe_load(out.read_text())
    assert table["commit"] == subprocess.run([*git, "rev-parse", "HEAD"], check=True, capture_output=True, text=True).stdout.strip()
    assert table["general_flags"] == ["model_id_with_origin_paths", "height"]
    fam = table["families"]["fam"]
    assert fam["own_flags"] == ["own_flag"] and fam["tasks"] == ["sft", "sft:train"] and fam["recipes"] == 2
    a, b = table["recipes"]
    assert a["path"] == "examples/fam/model_training/lora/Model-A.sh" and a["kind"] == "lora"
    assert a["model_ids"] == ["org/Model-A", "org/Enc"] and a["tasks"] == ["sft:train"]
    assert a["extra_inputs"] == ["input_image"] and len(a["commands"]) == 1  # the commented command is skipped
    assert a["commands"][0]["accelerate_config"] == "c.yaml"
    assert a["commands"][0]["args"][:2] == ["--model_id_with_origin_paths",
                                             "org/Model-A:dit/*.safetensors,org/Enc:te.safetensors"]
    assert "121" in a["commands"][0]["args"] and b["commands"] == [] and b["note"] == "inference only"
    assert table["model_ids"] == {"org/Enc": ["fam"], "org/Model-A": ["fam"]}


def test_every_upstream_recipe_has_a_preset_or_is_refused_by_name(rows):
    """DiffSynth's recipe names, walked from the table: each one a preset reproduces, or a one-line refusal that
    names what it is (its model id, input, flag or task); none left that runs by flags without a preset."""
    for row in rows:
        missing = sorted(row.flags)
        assert not missing, f"{row.family}: recipes that run as written but have no preset: {missing}"
        for path, why in row.refused.items():
            recipe = next(r for r in TABLE["recipes"] if r["path"] == path)
            args = [a for c in recipe["commands"] for a in c["args"]]
            named = [*recipe["model_ids"], *recipe["extra_inputs"], *recipe["tasks"],
                     *(a for a in args if a.startswith("--")), "no training command", "Nothing to train"]
            assert any(n and n.lstrip("-") in why for n in named), (path, why)
    assert sum(len(r.preset) for r in rows) >= 47


# DiffSynth's accelerate yamls (examples/*/model_training/full/, special/low_vram_training/) -> configs/accelerate/
ACCELERATE_CONFIGS = {"accelerate_config_14B.yaml": "deepspeed_zero2_offload",  # ZeRO-2, optimizer + params on CPU
                      "accelerate_config_zero2offload.yaml": "deepspeed_zero2_offload",
                      "accelerate_config.yaml": "deepspeed_zero2", "accelerate_config_zero3.yaml": "deepspeed_zero3",
                      "deepspeed_zero3_cpuoffload.yaml": "deepspeed_zero3_offload"}
COMMAND = re.compile(r"\(command (\d+) of \d+\)")
PLACES = {"dataset_base_path", "dataset_metadata_path", "output_path"}
TRAINING = ("dataset", "resolution", "model", "train", "lora", "gradient", "output")


@pytest.mark.parametrize("preset", sorted(p.stem for p in (REPO / "presets").glob("*.yaml") if p.stem != "base"))
def test_each_preset_is_its_recipe_as_written(preset, capsys):
    """`diffsynth params --from-args <the recipe's flags>` gives the preset's training sections (the command its
    header names; a split recipe's two commands as our cache and train stages run them)."""
    path = REPO / "presets" / f"{preset}.yaml"
    (recipe_path,) = [p for p, names in recipe_coverage.preset_recipes(REPO / "presets").items() if preset in names]
    recipe = next(r for r in TABLE["recipes"] if r["path"] == recipe_path)
    header = " ".join(line for line in path.read_text().splitlines() if line.startswith("#"))
    found = COMMAND.search(header)
    argv = recipe_coverage.recipe_argv(recipe, int(found.group(1)) - 1 if found else 0)
    assert cli_main(["params", "--from-args", *argv]) == 0
    printed = yaml.safe_load(capsys.readouterr().out)
    ours = config_from_dict(preset_params(path)).to_dict()
    if not ours["lora"]["lora_base_model"]:  # a full fine-tune: LoRA targets unused
        ours["lora"]["lora_target_modules"] = printed["lora"]["lora_target_modules"]
    # where the data and the checkpoints live is the user's; the presets written before the table name DiffSynth's
    # older example folders (data/example_image_dataset)
    differ = [f"{s}.{k}: {ours[s][k]!r} != {printed[s][k]!r}" for s in TRAINING for k in printed[s]
              if ours[s][k] != printed[s][k] and k not in PLACES]
    assert not differ, differ
    # the accelerate yaml the command launches with, as our configs/accelerate/ file of the same DeepSpeed setup
    command = int(found.group(1)) - 1 if found else (1 if recipe_coverage.is_split(recipe) else 0)  # split: train's
    launched = recipe["commands"][command].get("accelerate_config")
    expected = ACCELERATE_CONFIGS[Path(launched).name] if launched else "single"
    assert ours["accelerate"]["config"] == expected, (launched, ours["accelerate"]["config"])
