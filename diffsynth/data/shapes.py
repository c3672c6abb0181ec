"""Coloured shapes on plain backgrounds: what the built-in sample datasets (images and videos) draw."""
from __future__ import annotations

from PIL import Image, ImageDraw

COLOURS = {"red": (220, 40, 40), "green": (40, 170, 60), "blue": (40, 70, 220), "yellow": (235, 200, 30)}
SHAPES = ("circle", "square", "triangle", "cross")
BACKGROUNDS = {"white": (245, 245, 245), "black": (15, 15, 15)}


def draw_shape(shape: str, colour: tuple, background: tuple, size: int) -> Image.Image:
    image = Image.new("RGB", (size, size), background)
    d = ImageDraw.Draw(image)
    m = size // 5
    box = (m, m, size - m, size - m)
    if shape == "circle":
        d.ellipse(box, fill=colour)
    elif shape == "square":
        d.rectangle(box, fill=colour)
    elif shape == "triangle":
        d.polygon([(size // 2, m), (size - m, size - m), (m, size - m)], fill=colour)
    elif shape == "cross":
        t = size // 8
        d.rectangle((size // 2 - t, m, size // 2 + t, size - m), fill=colour)
        d.rectangle((m, size // 2 - t, size - m, size // 2 + t), fill=colour)
    else:
        raise ValueError(f"unknown shape {shape!r}")
    return image
