"""Wan-Fun Control-Camera's camera input: a direction string and a speed -> per-frame Plücker rays -> the
(B, 24, T', H, W) tensor the DiT's camera adapter takes. The same arithmetic as DiffSynth's
``WanVideoUnit_FunCameraControl`` (a CameraCtrl-style pose trajectory at 1280x720 intrinsics), so equal inputs
give equal tensors.

A trajectory starts at ``ORIGIN`` (frame index, fx, fy, cx, cy, 2 unused, a 3x4 world-to-camera matrix) and each
frame moves the camera by ``speed`` along the named axes: Left/Right the x translation, Up/Down the y translation,
In/Out the z translation; combined directions ("LeftUp") move along both.
"""
from __future__ import annotations

import numpy as np
import torch

DIRECTIONS = ("Left", "Right", "Up", "Down", "LeftUp", "LeftDown", "RightUp", "RightDown", "In", "Out")
DEFAULT_SPEED = 1 / 54
ORIGIN = (0, 0.532139961, 0.946026558, 0.5, 0.5, 0, 0, 1, 0, 0, 0, 0, 1, 0, 0, 0, 0, 1, 0)
POSE_SIZE = (1280, 720)  # the intrinsics above are for this frame size
# entry index moved by each direction word, and the sign
MOVES = {"Left": (9, 1), "Right": (9, -1), "Up": (13, 1), "Down": (13, -1), "In": (18, -1), "Out": (18, 1)}


def check_direction(direction) -> str:
    if not isinstance(direction, str) or direction not in DIRECTIONS:
        raise ValueError(f"camera_control_direction {direction!r}: one of {', '.join(DIRECTIONS)}")
    return direction


def trajectory(direction: str, length: int, speed: float, origin=ORIGIN) -> list[list[float]]:
    entries = [list(origin)]
    while len(entries) < length:
        entry = entries[-1].copy()
        for word, (index, sign) in MOVES.items():
            if word in direction:
                entry[index] += sign * speed
        entries.append(entry)
    return entries


def plucker_rays(entries: list[list[float]], width: int, height: int) -> torch.Tensor:
    """(F, H, W, 6): per pixel the ray's moment (origin x direction) and direction, poses relative to frame 0."""
    fx = np.array([e[1] for e in entries], dtype=np.float64)
    fy = np.array([e[2] for e in entries], dtype=np.float64)
    cx = np.array([e[3] for e in entries], dtype=np.float64)
    cy = np.array([e[4] for e in entries], dtype=np.float64)
    # rescale the focal length of the longer side for the sample's aspect ratio
    ratio = POSE_SIZE[0] / POSE_SIZE[1]
    if ratio > width / height:
        fx = (height * ratio) * fx / width
    else:
        fy = (width / ratio) * fy / height
    k = torch.from_numpy(np.stack([fx * width, fy * height, cx * width, cy * height], 1).astype(np.float32))
    w2c = []
    for e in entries:
        m = np.eye(4)
        m[:3, :] = np.array(e[7:]).reshape(3, 4)
        w2c.append(m)
    first = w2c[0]
    poses = [np.eye(4)] + [first @ np.linalg.inv(m) for m in w2c[1:]]
    c2w = torch.from_numpy(np.array(poses, dtype=np.float32))  # F, 4, 4
    rows, cols = torch.meshgrid(torch.linspace(0, height - 1, height), torch.linspace(0, width - 1, width),
                                indexing="ij")
    u = cols.reshape(1, -1) + 0.5
    v = rows.reshape(1, -1) + 0.5
    xs = (u - k[:, 2:3]) / k[:, 0:1]
    ys = (v - k[:, 3:4]) / k[:, 1:2]
    dirs = torch.stack([xs, ys, torch.ones_like(xs)], dim=-1)
    dirs = dirs / dirs.norm(dim=-1, keepdim=True)                     # F, HW, 3
    rays_d = dirs @ c2w[:, :3, :3].transpose(-1, -2)
    rays_o = c2w[:, None, :3, 3].expand_as(rays_d)
    plucker = torch.cat([torch.linalg.cross(rays_o, rays_d), rays_d], dim=-1)
    return plucker.reshape(len(entries), height, width, 6)


def camera_latents(direction: str, speed: float, num_frames: int, height: int, width: int,
                   temporal: int = 4) -> torch.Tensor:
    """(1, 6·temporal, T', H, W): the first frame's rays repeated ``temporal`` times, then every ``temporal`` frames'
    rays stacked on the channel axis (frame-major inside a group, as the adapter was trained)."""
    rays = plucker_rays(trajectory(check_direction(direction), num_frames, float(speed)), width, height)
    video = rays[:num_frames].permute(3, 0, 1, 2).unsqueeze(0)       # 1, 6, F, H, W
    video = torch.cat([video[:, :, :1].repeat_interleave(temporal, dim=2), video[:, :, 1:]], dim=2)
    b, c, f, h, w = video.shape
    grouped = video.transpose(1, 2).reshape(b, f // temporal, temporal, c, h, w).transpose(2, 3)
    return grouped.reshape(b, f // temporal, c * temporal, h, w).transpose(1, 2).contiguous()
