"""`dvc repro` in a `git clone` of the committed tree, as `make run` does: every stage runs for real, MLflow
records the run, and a second `dvc repro` has nothing to do."""
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from safetensors.torch import load_file

from helpers import DEFAULT_PARAMS_TEXT

REPO = Path(__file__).resolve().parents[1]


def committed_tree(src: Path = REPO) -> str:
    """The commit a clone of ``src`` should hold: HEAD plus the uncommitted edits of tracked files (what
    `git stash create` records, without touching the working tree or the stash list), so a developer's edits
    are tested; untracked files are left out, as a user's clone never has them."""
    run = lambda *cmd: subprocess.run(["git", *cmd], cwd=src, capture_output=True, text=True, check=True,
                                      env=pipeline_env(src)).stdout.strip()
    return run("stash", "create") or run("rev-parse", "HEAD")


def copy_repo(dst: Path, src: Path = REPO, params_text: str = DEFAULT_PARAMS_TEXT) -> Path:
    """A `git clone` of ``src``'s committed tree (see :func:`committed_tree`), with the shipped params.yaml (as
    committed) on top: the workspace's is the user's, and a `dvc exp run -S` rewrites it. A tracked stage output,
    or a file the code needs but git does not hold, fails here as it would fail a user's clone."""
    env = pipeline_env(dst)
    commit = committed_tree(src)
    git = lambda *cmd, cwd=dst: subprocess.run(["git", *cmd], cwd=cwd, check=True, env=env, capture_output=True)
    git("clone", "-q", "--no-checkout", str(src), str(dst), cwd=dst.parent)
    git("fetch", "-q", str(src), commit)  # a stash commit is on no branch the clone copied
    git("reset", "-q", "--hard", commit)
    git("remote", "remove", "origin")  # nothing run in the clone may push into the developer's repository
    (dst / "params.yaml").write_text(params_text)  # the shipped params, not the workspace's edits
    git("add", "params.yaml")
    git("commit", "-qm", "tests' params", "--allow-empty")
    return dst


def pipeline_env(root: Path) -> dict:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(root)  # the clone's own package, not the checkout's (nor the venv's editable install)
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env['PATH']}"
    env.update({"GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@t", "GIT_COMMITTER_NAME": "t",
                "GIT_COMMITTER_EMAIL": "t@t", "DVC_NO_ANALYTICS": "1"})
    for var in ("DIFFSYNTH_MODEL_BASE_PATH", "MLFLOW_TRACKING_URI", "DIFFSYNTH_SKIP_DOWNLOAD"):
        env.pop(var, None)  # the pipeline's own defaults are what is tested
    return env


def dvc(root: Path, *args: str) -> str:
    proc = subprocess.run([str(Path(sys.executable).parent / "dvc"), *args], cwd=root, env=pipeline_env(root),
                          capture_output=True, text=True, timeout=1800)  # a loaded CI machine is slow
    assert proc.returncode == 0, f"dvc {' '.join(args)} failed:\n{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}"
    return proc.stdout + proc.stderr


def git_lines(root: Path, *args: str) -> list[str]:
    return subprocess.run(["git", *args], cwd=root, capture_output=True, text=True, check=True).stdout.splitlines()


def test_the_copy_is_the_committed_tree_with_uncommitted_edits_and_no_untracked_files(tmp_path):
    """What a clone gets: committed files, and (so a developer's edits are tested) edits to tracked files;
    never an untracked or ignored file, which a user's clone would not have."""
    src = tmp_path / "src"
    src.mkdir(parents=True)
    (src / ".gitignore").write_text("/outputs/\n")
    (src / "kept.py").write_text("committed\n")
    (src / "edited.py").write_text("committed\n")
    env = pipeline_env(src)
    for cmd in (["init", "-q"], ["add", "-A"], ["commit", "-qm", "c"]):
        subprocess.run(["git", *cmd], cwd=src, check=True, env=env)
    (src / "edited.py").write_text("edited, not committed\n")
    (src / "untracked.py").write_text("never added\n")
    (src / "outputs").mkdir()
    (src / "outputs" / "ignored.png").write_text("a stage output\n")

    dst = copy_repo(tmp_path / "clone", src, params_text="train: {seed: 0}\n")
    assert (dst / "kept.py").read_text() == "committed\n"
    assert (dst / "edited.py").read_text() == "edited, not committed\n"
    assert not (dst / "untracked.py").exists() and not (dst / "outputs").exists()
    assert (dst / "params.yaml").read_text() == "train: {seed: 0}\n"
    assert git_lines(dst, "status", "--porcelain") == [] and git_lines(dst, "remote") == []
    assert (src / "edited.py").read_text() == "edited, not committed\n"  # the developer's tree is untouched
    assert git_lines(src, "stash", "list") == []


def test_no_stage_output_is_tracked_by_git_and_all_are_ignored(tmp_path):
    """`dvc repro` refuses an output that git tracks ("already tracked by SCM"); the fast form of the check the
    pipeline run below makes, over every stage's outs, metrics and plots as DVC resolves them."""
    from dvc.repo import Repo

    root = copy_repo(tmp_path / "repo")
    with Repo(str(root)) as repo:
        outs = sorted({os.path.relpath(out.fs_path, root) for stage in repo.index.stages for out in stage.outs})
    assert len(outs) >= 10 and all(not o.startswith("..") for o in outs), outs
    tracked = {o: files for o in outs if (files := git_lines(root, "ls-files", "--", o))}
    assert not tracked, f"stage outputs committed to git (a clone's `dvc repro` fails on them): {tracked}"
    ignored = set(git_lines(root, "check-ignore", "--no-index", *outs))
    assert ignored == set(outs), f"stage outputs git would not ignore: {sorted(set(outs) - ignored)}"


def reproduce_clone(root: Path) -> tuple[Path, str]:
    """A clone (:func:`copy_repo`) reproduced by `dvc repro` as `make run` does, with its dvc.lock committed as a
    user commits it: the baseline the DVC experiment tests copy (:func:`copy_workspace`) instead of each running
    every stage again. Returns the root and the log of the repro."""
    copy_repo(root)
    params = yaml.safe_load((root / "params.yaml").read_text())
    params["train"]["num_epochs"] = 2  # 64 steps: enough for the assertions, half the default time
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    log = dvc(root, "repro")
    git = lambda *cmd: subprocess.run(["git", *cmd], cwd=root, check=True, env=pipeline_env(root), capture_output=True)
    git("add", "params.yaml", "dvc.lock")
    git("commit", "-qm", "reproduced")
    return root, log


def copy_workspace(src: Path, dst: Path) -> Path:
    """A copy of a reproduced workspace (git history, dvc.lock, outputs, DVC cache and run-cache), so experiments
    on it re-run only the stages their params change. DVC's temporary state, and the MLflow and resume stores
    (their records hold the source's absolute paths), are left behind: the copy starts its own."""
    skip = {src / ".dvc" / "tmp", src / "mlflow.db", src / "mlruns", src / ".resume"}
    shutil.copytree(src, dst, symlinks=True, ignore=lambda d, names: [n for n in names if Path(d) / n in skip])
    return dst


@pytest.fixture(scope="module")
def repro(reproduced):
    return reproduced


@pytest.mark.slow
def test_make_run_on_a_clone_ends_with_the_summary(repro):
    """`make run` is `dvc repro` (the fixture, on a clone of the committed tree) then the summary."""
    root, _ = repro
    proc = subprocess.run([sys.executable, "-m", "diffsynth.cli", "summary"], cwd=root, env=pipeline_env(root),
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "training:   64 steps" in proc.stdout and "pytorch_lora_weights.safetensors" in proc.stdout, proc.stdout


@pytest.mark.slow
def test_every_stage_runs_and_writes_its_outputs(repro):
    root, log = repro
    stages = ("fetch_data", "data", "models", "cache", "cache_prompts", "train", "export")
    for stage in stages:
        assert f"Running stage '{stage}'" in log
    assert (root / "dvc.lock").exists()
    lock = yaml.safe_load((root / "dvc.lock").read_text())
    assert set(lock["stages"]) == set(stages)
    index = json.loads((root / "outputs/cache/data/index.json").read_text())
    assert index["rows"] == 32 and index["fingerprint"]["max_pixels"] == 4096
    report = json.loads((root / "reports/data.json").read_text())
    assert report["total_rows"] == report["valid_rows"] == 32
    manifest = json.loads((root / "outputs/models/manifest.json").read_text())
    paths = [f["path"] for files in manifest["models"].values() for f in files]
    assert "models/diffsynth-tiny/Qwen-Image/transformer/diffusion_pytorch_model-00001-of-00003.safetensors" in paths
    assert all(len(f["sha256"]) == 64 for files in manifest["models"].values() for f in files if f["sha256"])
    samples = sorted(p.name for p in (root / "outputs/train/samples").iterdir())
    assert samples == [f"step{s:06d}_p{p}_s0.png" for s in (0, 32, 64) for p in (0, 1)]
    compat = json.loads((root / "reports/lora_compat.json").read_text())  # beside the exported folder
    assert compat["unmatched_modules"] == 0 and compat["matched_modules"] == 17
    plan = json.loads((root / "reports/memory_plan.json").read_text())  # the train stage's memory plan metric
    assert plan["lora"]["modules"] == 17 and "text_encoder" not in plan["modes"]["cached"]["train"]["models"]


@pytest.mark.slow
def test_exported_lora_keys_shapes_and_diffusers_load(repro):
    root, _ = repro
    lora = load_file(str(root / "outputs/export/pytorch_lora_weights.safetensors"))
    assert len(lora) == 34
    assert all(k.startswith("transformer.transformer_blocks.") and ".default." not in k for k in lora)
    assert lora["transformer.transformer_blocks.0.attn.to_q.lora_A.weight"].shape == (8, 64)
    assert lora["transformer.transformer_blocks.1.img_mlp.net.2.lora_B.weight"].shape == (64, 8)

    from diffusers import QwenImageTransformer2DModel
    dit = QwenImageTransformer2DModel.from_pretrained(str(root / "models/diffsynth-tiny/Qwen-Image/transformer"))
    dit.load_lora_adapter(str(root / "outputs/export/pytorch_lora_weights.safetensors"), prefix="transformer",
                          adapter_name="trained")
    loaded = {n: p for n, p in dit.named_parameters() if "lora_B.trained" in n}
    assert len(loaded) == 17
    key = "transformer_blocks.0.attn.to_q.lora_B.trained.weight"
    assert (loaded[key] == lora["transformer.transformer_blocks.0.attn.to_q.lora_B.weight"]).all()


@pytest.mark.slow
def test_mlflow_run_has_params_losses_validation_images_and_checkpoint(repro):
    root, _ = repro
    import mlflow
    client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{root / 'mlflow.db'}")
    run_id = json.loads((root / "outputs/train/mlflow_run.json").read_text())["run_id"]
    run = client.get_run(run_id)
    assert run.info.status == "FINISHED"
    assert run.data.params["train.learning_rate"] == "0.002"
    assert run.data.params["lora.lora_rank"] == "8"
    assert run.data.params["model.family"] == "qwen_image"
    assert run.data.tags["preset"] == "qwen-image"
    losses = client.get_metric_history(run_id, "loss")
    assert len(losses) == 64 and [m.step for m in losses] == list(range(1, 65))
    val = client.get_metric_history(run_id, "val_loss")
    assert [m.step for m in val] == [0, 32, 64]
    images = [a.path for a in client.list_artifacts(run_id, "images")]
    assert len(images) >= 1
    checkpoints = [a.path for a in client.list_artifacts(run_id, "checkpoints")]
    assert checkpoints == ["checkpoints/epoch-0.safetensors", "checkpoints/epoch-1.safetensors"]
    exported = [a.path for a in client.list_artifacts(run_id, "export")]
    assert "export/pytorch_lora_weights.safetensors" in exported
    # the artifact store lives beside the database at the project root, not in a stage's working folder
    assert run.info.artifact_uri.startswith((root / "mlruns").as_uri())


@pytest.mark.slow
def test_second_repro_runs_no_stage(repro):
    root, _ = repro
    log = dvc(root, "repro")
    assert "Running stage" not in log
    assert "Data and pipelines are up to date" in log


@pytest.mark.slow
def test_experiments_reuse_the_encoder_cache_until_the_encoding_changes(repro, tmp_path):
    root = copy_workspace(repro[0], tmp_path / "repo")
    short = ("-S", "train.num_epochs=1", "-S", "train.max_steps=2")  # which stages run is the point, not training
    log = dvc(root, "exp", "run", "-S", "train.learning_rate=0.001", *short)
    assert "Running stage 'train'" in log and "Running stage 'export'" in log
    assert "Running stage 'cache'" not in log and "Running stage 'cache_prompts'" not in log
    log = dvc(root, "exp", "run", "-S", "resolution.max_pixels=2304", *short)
    assert "Running stage 'cache'" in log and "Running stage 'train'" in log
    assert json.loads((root / "outputs/cache/data/index.json").read_text())["fingerprint"]["max_pixels"] == 2304
