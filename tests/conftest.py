"""Shared fixtures: tiny models and datasets are generated once per session, never downloaded."""
from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "stages"))  # the stages' own modules (e.g. _state_store), as the stage scripts see them

# Tests never reach a hub: a forgotten fake must fail fast, not after 22 s of retries.
os.environ.setdefault("DIFFSYNTH_SKIP_DOWNLOAD", "true")
os.environ.setdefault("DVC_NO_ANALYTICS", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import diffsynth.families  # noqa: E402,F401  (registers every family's checkpoint kinds, real models and tiny twins)


@pytest.fixture(scope="session")
def model_base(tmp_path_factory) -> Path:
    """A model base folder holding the tiny Qwen-Image preset at diffsynth-tiny/Qwen-Image."""
    from diffsynth.models.tiny import write_tiny_model

    base = tmp_path_factory.mktemp("models")
    write_tiny_model("qwen-image", base / "diffsynth-tiny" / "Qwen-Image")
    return base


@pytest.fixture(scope="session")
def edit_model_base(model_base) -> Path:
    """The session's model base with the tiny Qwen-Image-Edit preset added at diffsynth-tiny/Qwen-Image-Edit."""
    from diffsynth.models.tiny import write_tiny_model

    write_tiny_model("qwen-image-edit", model_base / "diffsynth-tiny" / "Qwen-Image-Edit")
    return model_base


@pytest.fixture(scope="session")
def shapes_dataset(tmp_path_factory) -> Path:
    """The built-in shapes dataset; returns its metadata.csv."""
    from diffsynth.data.sample_dataset import build_shapes_dataset

    return build_shapes_dataset(tmp_path_factory.mktemp("data") / "shapes")


@pytest.fixture(scope="session")
def reproduced(tmp_path_factory) -> tuple[Path, str]:
    """A clone of the committed tree after `dvc repro` (test_pipeline_dvc.reproduce_clone): (root, log)."""
    from test_pipeline_dvc import reproduce_clone

    return reproduce_clone(tmp_path_factory.mktemp("reproduced"))


TINY_QWEN_MODELS = ("diffsynth-tiny/Qwen-Image:transformer/diffusion_pytorch_model*.safetensors,"
                    "diffsynth-tiny/Qwen-Image:text_encoder/model*.safetensors,"
                    "diffsynth-tiny/Qwen-Image:vae/diffusion_pytorch_model.safetensors")
TINY_QWEN_TOKENIZER = "diffsynth-tiny/Qwen-Image:tokenizer/"


@pytest.fixture()
def tiny_env(model_base, monkeypatch):
    """Model flags resolve against the session's tiny presets, never a hub."""
    monkeypatch.setenv("DIFFSYNTH_MODEL_BASE_PATH", str(model_base))
    monkeypatch.setenv("DIFFSYNTH_SKIP_DOWNLOAD", "true")


# `make test` runs two pytest-xdist workers with --dist loadscope and the scheduler below: each module's tests stay on
# one worker, so its module fixtures (a trained run, a reproduced DVC workspace) run once. The three modules that
# copy the session's `reproduced` workspace (a `dvc repro` of a clone, ~1.5 min) form one unit, so it is built once,
# and it runs first, being the longest; the per-case runs of SPREAD_MODULES are units of one test each and run last,
# so the two workers finish together. (pytest-xdist's loadgroup marks do not work with pytest 9: its worker writes
# the group into item._nodeid, which pytest 9 no longer reads.)
REPRODUCED_MODULES = {"test_pipeline_dvc", "test_resume_dvc", "test_tracking_mlflow"}
SPREAD_MODULES = {"test_every_preset"}


def _module(nodeid: str) -> str:
    return Path(nodeid.split("::")[0]).stem


def work_unit(nodeid: str) -> str:
    module = _module(nodeid)
    return "reproduced" if module in REPRODUCED_MODULES else nodeid if module in SPREAD_MODULES else module


def pytest_collection_modifyitems(items):
    items.sort(key=lambda item: (work_unit(item.nodeid) != "reproduced", _module(item.nodeid) in SPREAD_MODULES))


@pytest.hookimpl(optionalhook=True)
def pytest_xdist_make_scheduler(config, log):
    if config.getvalue("dist") != "loadscope":
        return None
    from xdist.scheduler import LoadScopeScheduling

    class ModuleScheduling(LoadScopeScheduling):
        def _split_scope(self, nodeid: str) -> str:
            return work_unit(nodeid)
    return ModuleScheduling(config, log)
