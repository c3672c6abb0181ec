"""Training on the tiny Qwen-Image preset: it learns, and it saves what DiffSynth saves."""
import os

import pytest
from safetensors.torch import load_file

from diffsynth.training.loop import run_training
from helpers import tiny_config



@pytest.mark.slow
def test_fixed_noise_validation_loss_falls(tmp_path, shapes_dataset, tiny_env):
    config = tiny_config(tmp_path, shapes_dataset, train__num_epochs=3)
    result = run_training(config)
    before = result.val_history[0][1]["val_loss"]
    after = result.val_history[-1][1]["val_loss"]
    print(f"\nfixed-noise validation loss: {before:.4f} -> {after:.4f} ({after / before:.1%} of start) "
          f"after {result.steps} steps")
    assert result.steps == 96
    assert after < 0.85 * before, "the tiny model should learn the shapes dataset"
    # every fixed sigma is logged, and the mean is their average
    last = result.val_history[-1][1]
    per_sigma = [v for k, v in last.items() if k.startswith("val_loss/sigma_")]
    assert len(per_sigma) == 5 and last["val_loss"] == pytest.approx(sum(per_sigma) / 5)


@pytest.mark.slow
def test_checkpoints_are_diffsynth_lora_files(tmp_path, shapes_dataset, tiny_env):
    config = tiny_config(tmp_path, shapes_dataset, train__num_epochs=2, train__max_steps=None,
                         dataset__dataset_repeat=1)
    run_training(config)
    out = tmp_path / "out"
    assert sorted(os.listdir(out)) == ["buckets.json", "epoch-0.safetensors", "epoch-1.safetensors", "loss.csv", "state",
                                       "training_args.json"]
    state = load_file(str(out / "epoch-1.safetensors"))
    targets = config.lora.lora_target_modules.split(",")
    # 2 blocks x 9 target modules x (A, B), less the last block's txt_mlp.net.2 whose output the loss never
    # uses; prefix pipe.dit. removed; DiffSynth's `.default.` adapter segment
    assert len(state) == (2 * len(targets) - 1) * 2
    assert "transformer_blocks.1.txt_mlp.net.2.lora_A.default.weight" not in state
    assert "transformer_blocks.0.txt_mlp.net.2.lora_A.default.weight" in state
    for key, tensor in state.items():
        assert key.startswith("transformer_blocks.") and not key.startswith("pipe.")
        assert key.endswith((".lora_A.default.weight", ".lora_B.default.weight"))
        rank_dim = 0 if ".lora_A." in key else 1
        assert tensor.shape[rank_dim] == config.lora.lora_rank
    assert state["transformer_blocks.0.attn.to_q.lora_A.default.weight"].shape == (8, 64)
    assert state["transformer_blocks.0.attn.to_q.lora_B.default.weight"].shape == (64, 8)
    # B starts at zero; after training it is not
    assert state["transformer_blocks.0.attn.to_q.lora_B.default.weight"].abs().sum() > 0


@pytest.mark.slow
def test_save_steps_names_and_trailing_checkpoint(tmp_path, shapes_dataset, tiny_env):
    config = tiny_config(tmp_path, shapes_dataset, train__num_epochs=1, output__save_steps=10)
    result = run_training(config)
    names = sorted(p.name for p in (tmp_path / "out").glob("*.safetensors"))
    assert result.steps == 32
    assert names == sorted(["step-10.safetensors", "step-20.safetensors", "step-30.safetensors", "step-32.safetensors"])


@pytest.mark.slow
def test_same_seed_gives_identical_checkpoint_bytes(tmp_path, shapes_dataset, tiny_env):
    files = []
    for run in ("a", "b"):
        config = tiny_config(tmp_path / run, shapes_dataset, train__max_steps=12, train__num_epochs=1)
        run_training(config)
        files.append((tmp_path / run / "out" / "epoch-0.safetensors").read_bytes())
    assert files[0] == files[1]


@pytest.mark.slow
def test_skip_mode_trains_on_the_valid_rows(tmp_path, shapes_dataset, tiny_env):
    """dataset.on_invalid: skip -> the validated metadata holds only good rows, and a whole epoch trains on them."""
    import shutil

    from diffsynth.data.validate import check_dataset
    from diffsynth.families import get_spec

    data = tmp_path / "data"
    shutil.copytree(shapes_dataset.parent, data)
    (data / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not an image")
    with open(data / "metadata.csv", "a") as f:
        f.write('broken.png,"a broken file"\nmissing.png,"a missing file"\nred_circle_on_white.png,""\n')
    config = tiny_config(tmp_path, data / "metadata.csv", dataset__on_invalid="skip", train__num_epochs=1,
                         validation__num_samples=1, sample__prompts=[])
    report = check_dataset(config, metadata_out=tmp_path / "valid.jsonl", report_out=tmp_path / "report.json",
                           plot_out=tmp_path / "plot.csv", **get_spec("qwen_image").data_rules().as_kwargs())
    assert report.invalid_rows == 3 and report.valid_rows == 32
    result = run_training(config, metadata_path=str(tmp_path / "valid.jsonl"))
    assert result.steps == 32
