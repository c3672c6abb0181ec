"""LoRA export: DiffSynth-native keys -> diffusers keys, checked against the base model."""
import pytest
import torch
from safetensors.torch import save_file

from diffsynth.export import ExportError, check_against_model, export_lora, to_diffusers


class Tiny(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.blocks = torch.nn.ModuleList([torch.nn.ModuleDict({"to_q": torch.nn.Linear(6, 4)})])


def native(rank=2, module="blocks.0.to_q", in_f=6, out_f=4):
    return {f"{module}.lora_A.default.weight": torch.randn(rank, in_f),
            f"{module}.lora_B.default.weight": torch.randn(out_f, rank)}


def test_diffusers_names():
    out = to_diffusers(native())
    assert set(out) == {"transformer.blocks.0.to_q.lora_A.weight", "transformer.blocks.0.to_q.lora_B.weight"}


def test_check_finds_missing_modules_and_wrong_shapes():
    ok = check_against_model(to_diffusers(native()), Tiny())
    assert ok["matched_modules"] == 1 and ok["unmatched_modules"] == 0
    missing = check_against_model(to_diffusers(native(module="blocks.0.to_k")), Tiny())
    assert sorted(missing["unmatched"]) == ["transformer.blocks.0.to_k.lora_A.weight",
                                            "transformer.blocks.0.to_k.lora_B.weight"]
    wrong = check_against_model(to_diffusers(native(in_f=7)), Tiny())
    assert list(wrong["unmatched"]) == ["transformer.blocks.0.to_q.lora_A.weight"] and wrong["unmatched_modules"] == 1


def test_export_rejects_non_lora_files(tmp_path):
    save_file({"blocks.0.to_q.weight": torch.zeros(4, 6)}, str(tmp_path / "full.safetensors"))
    with pytest.raises(ExportError, match="not a LoRA tensor name"):
        export_lora(tmp_path / "full.safetensors", tmp_path / "out.safetensors")
    assert not (tmp_path / "out.safetensors").exists()
