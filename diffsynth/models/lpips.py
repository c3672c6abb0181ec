"""LPIPS with the AlexNet backbone (Zhang et al. 2018, "v0.1" linear heads), the perceptual distance DiffSynth's
``--task trajectory_imitation`` adds to its loss.

The state-dict layout is DiffSynth-Studio's own ``LPIPSModel(net="alex")`` (``diffsynth/models/lpips.py``), so its
weights file ``DiffSynth-Studio/ImageMetrics:LPIPS/alexnet.safetensors`` loads as it is:

* ``net.slice1.0`` ... ``net.slice5.10``: AlexNet's five convolutions (torchvision's ``features`` indices 0, 3,
  6, 8, 10), each followed by a ReLU, max-pools before the second and third; the five ReLU outputs are the features;
* ``lin0.model.1.weight`` ... ``lin4.model.1.weight``: a bias-free 1x1 convolution per feature map to one channel
  (index 0 is the dropout of the original, inactive at evaluation);
* ``scaling_layer.shift`` / ``scaling_layer.scale``: the fixed input normalisation (optional in the file).

The ``lpips`` package's layout (``lins.N.model.1.weight``) is read as well. The distance between two images in
[-1, 1] (B, 3, H, W) is, per image, the sum over the five layers of the spatial mean of ``lin(||f0 - f1||^2)``
after normalising each feature vector to unit length (eps 1e-10 on the norm). The channel widths are read from the
file, so a narrow random twin in the same layout loads too (the tiny presets write one).
"""
from __future__ import annotations

import os
import re
from pathlib import Path

import torch
from torch import nn

from ..errors import ConfigError
from .model_config import ModelConfig, fetch

# AlexNet's convolutions: (feature index in torchvision's alexnet.features, kernel, stride, padding); slice i ends at
# conv i's ReLU, and slices 2 and 3 open with a 3x3 / stride 2 max-pool
CONVS = ((0, 11, 4, 2), (3, 5, 1, 2), (6, 3, 1, 1), (8, 3, 1, 1), (10, 3, 1, 1))
POOLED = (1, 2)  # slices (0-based) that start with the max-pool
ALEX_CHANNELS = (64, 192, 384, 256, 256)
SHIFT = (-0.030, -0.088, -0.188)
SCALE = (0.458, 0.448, 0.450)
EPS = 1e-10
DEFAULT_PATH = "DiffSynth-Studio/ImageMetrics:LPIPS/alexnet.safetensors"  # model.lpips_path's default
TASK = "trajectory_imitation"  # the training task that reads model.lpips_path


def lpips_entry(value: str | None) -> ModelConfig:
    """``model.lpips_path``: a local file, or ``model_id:file`` fetched like the model entries (models stage)."""
    value = value or DEFAULT_PATH
    if os.path.exists(value):
        return ModelConfig(path=value, source_string=value)
    if ":" not in value or value.endswith(("/", ":")):
        raise ConfigError(f"model.lpips_path {value!r} is neither an existing file nor model_id:file (default "
                          f"{DEFAULT_PATH}, the AlexNet LPIPS DiffSynth's image metrics use)")
    model_id, pattern = value.rsplit(":", 1)
    return ModelConfig(model_id=model_id, origin_file_pattern=pattern, source_string=value)


def lpips_file(value: str | None) -> str:
    """The one local LPIPS file ``model.lpips_path`` names (fetched)."""
    files = fetch(lpips_entry(value)).weight_files()
    if len(files) != 1:
        raise ConfigError(f"model.lpips_path {value!r} names {len(files)} files; name the one LPIPS file")
    return files[0]


class _Scaling(nn.Module):
    def __init__(self):
        super().__init__()
        self.register_buffer("shift", torch.tensor(SHIFT).view(1, 3, 1, 1))
        self.register_buffer("scale", torch.tensor(SCALE).view(1, 3, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.shift) / self.scale


class _Lin(nn.Module):
    def __init__(self, channels: int):
        super().__init__()
        self.model = nn.Sequential(nn.Identity(), nn.Conv2d(channels, 1, 1, bias=False))  # [dropout], 1x1 conv

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)


class _Backbone(nn.Module):
    def __init__(self, channels: tuple[int, ...]):
        super().__init__()
        previous = 3
        for i, ((index, kernel, stride, padding), width) in enumerate(zip(CONVS, channels)):
            part = nn.Sequential()
            if i in POOLED:
                part.add_module(str(index - 1), nn.MaxPool2d(kernel_size=3, stride=2))
            part.add_module(str(index), nn.Conv2d(previous, width, kernel, stride=stride, padding=padding))
            part.add_module(str(index + 1), nn.ReLU())
            setattr(self, f"slice{i + 1}", part)
            previous = width

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        out = []
        for i in range(len(CONVS)):
            x = getattr(self, f"slice{i + 1}")(x)
            out.append(x)
        return out


def _unit(x: torch.Tensor) -> torch.Tensor:
    return x / (x.pow(2).sum(dim=1, keepdim=True).sqrt() + EPS)


class LPIPS(nn.Module):
    """The AlexNet LPIPS distance; frozen, evaluation only. ``forward(a, b)`` -> (B,) distances."""

    def __init__(self, channels: tuple[int, ...] = ALEX_CHANNELS):
        super().__init__()
        if len(channels) != len(CONVS):
            raise ValueError(f"LPIPS AlexNet has {len(CONVS)} feature layers, got channels {channels}")
        self.channels = tuple(int(c) for c in channels)
        self.scaling_layer = _Scaling()
        self.net = _Backbone(self.channels)
        for i, width in enumerate(self.channels):
            setattr(self, f"lin{i}", _Lin(width))
        self.requires_grad_(False).eval()

    def forward(self, image0: torch.Tensor, image1: torch.Tensor) -> torch.Tensor:
        f0 = self.net(self.scaling_layer(image0))
        f1 = self.net(self.scaling_layer(image1))
        total = 0
        for i, (a, b) in enumerate(zip(f0, f1)):
            total = total + getattr(self, f"lin{i}")((_unit(a) - _unit(b)) ** 2).mean(dim=(2, 3), keepdim=True)
        return total.reshape(-1)

    @classmethod
    def from_state_dict(cls, state: dict, source: str = "LPIPS weights") -> "LPIPS":
        state = {re.sub(r"^lins\.(\d+)\.", r"lin\1.", k): v for k, v in state.items()}  # the lpips package's names
        try:
            channels = tuple(state[f"lin{i}.model.1.weight"].shape[1] for i in range(len(CONVS)))
        except KeyError as e:
            raise ConfigError(f"{source} is not an AlexNet LPIPS file: no {e.args[0]} (DiffSynth-Studio's "
                              "LPIPS/alexnet.safetensors layout: net.sliceN.* and linN.model.1.weight); set "
                              "model.lpips_path to such a file") from None
        model = cls(channels)
        own = model.state_dict()
        unknown = [k for k in state if k not in own]
        missing = [k for k in own if k not in state and not k.startswith("scaling_layer.")]
        wrong = [k for k in state if k in own and tuple(state[k].shape) != tuple(own[k].shape)]
        if unknown or missing or wrong:
            raise ConfigError(f"{source} does not fit the AlexNet LPIPS: unknown keys {unknown[:3]}, missing "
                              f"{missing[:3]}, wrong shapes {wrong[:3]}; set model.lpips_path to DiffSynth-Studio's "
                              "LPIPS/alexnet.safetensors (or a file in its layout)")
        model.load_state_dict({**own, **{k: v.float() for k, v in state.items()}})
        return model

    @classmethod
    def load(cls, path: str | Path) -> "LPIPS":
        from .safetensors_io import read_tensors
        return cls.from_state_dict(read_tensors(str(path), "model.lpips_path"), source=f"model.lpips_path {path}")


def write_tiny_lpips(path: str | Path, seed: int = 0, channels: tuple[int, ...] = (8, 16, 16, 16, 16)) -> Path:
    """A random narrow AlexNet LPIPS in DiffSynth's file layout (the tiny presets' stand-in for its weights):
    positive linear heads, as trained LPIPS heads are, so the distance is non-negative."""
    from safetensors.torch import save_file
    gen = torch.Generator().manual_seed(seed)
    model = LPIPS(channels)
    state = {}
    for name, tensor in model.state_dict().items():
        if name.startswith("scaling_layer."):
            continue
        if name.startswith("lin"):
            state[name] = torch.rand(tensor.shape, generator=gen) / tensor.shape[1]
        elif name.endswith(".weight"):
            state[name] = torch.randn(tensor.shape, generator=gen) / tensor[0].numel() ** 0.5
        else:
            state[name] = 0.05 * torch.randn(tensor.shape, generator=gen)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in state.items()}, str(path))
    return path
