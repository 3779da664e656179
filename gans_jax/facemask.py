"""The face-mask remover's data and evaluation: synthetic masks on aligned FER2013 faces.

Three parts:
- The drawer, `put_mask`: a seeded surgical, cloth or N95-like mask on an aligned face, from
  the bridge of the nose to under the chin, with varied shapes, colours, prints, positions
  and small tilts. Drawn at 4x the face resolution and box-averaged down, so edges are smooth.
  Returns the masked RGB image and the boolean region the mask covers; outside the region the
  image equals the face exactly.
- The builder, `build_domains`: unpaired CycleGAN domains from the FER2013 faces. A = masked
  faces from one half of the training images (trainA), B = unmasked faces from the other half
  (trainB); the test split, halved the same way, gives testA (masked) with the ground truth
  testA_original (the same faces unmasked) and testA_mask (the regions), and testB.
- The evaluation, `evaluate_remover`: PSNR and SSIM of a translator's output against the
  original faces, whole and inside the mask, beside the same scores for the masked input and
  for classical inpainting that is given the mask (OpenCV's Telea method).

CLI: ``python -m gans_jax.facemask build [--out DIR]``,
``python -m gans_jax.facemask examples --out grid.png`` (a PNG of held-out faces) and
``python -m gans_jax.facemask evaluate --workdir RUN [--domains DIR]``.
"""

from __future__ import annotations

import argparse
import collections
import dataclasses
import hashlib
import json
import logging
import math
import os
import shutil
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
from PIL import Image, ImageDraw

from common_jax.errors import UserError

log = logging.getLogger(__name__)

FACE_SIZE = 48  # FER2013's aligned faces; geometry below is in pixels of a face this size
SCALE = 4  # drawing resolution relative to the face: box-averaging it down smooths edges
MASK_KINDS = ("surgical", "cloth", "n95")
KIND_WEIGHTS = (0.4, 0.4, 0.2)
CLOTH_PATTERNS = ("plain", "stripes", "dots", "checks", "flowers")
CLOTH_PATTERN_WEIGHTS = (0.3, 0.2, 0.2, 0.15, 0.15)

# RGB colours of real masks: mostly light blue surgical ones, dyed or printed cloth, white N95s.
SURGICAL_COLOURS = ((150, 195, 225), (120, 175, 215), (236, 238, 240), (160, 210, 190),
                    (45, 45, 50), (240, 185, 205), (190, 180, 230))
SURGICAL_WEIGHTS = (0.35, 0.15, 0.2, 0.1, 0.1, 0.05, 0.05)
CLOTH_COLOURS = ((30, 40, 85), (25, 25, 28), (125, 125, 130), (175, 35, 45), (110, 30, 45),
                 (100, 112, 60), (70, 100, 150), (225, 145, 175), (205, 185, 150),
                 (30, 125, 135), (205, 160, 50), (232, 230, 226), (90, 60, 120))
N95_COLOURS = ((238, 236, 230), (226, 228, 230), (210, 208, 200), (185, 205, 225),
               (50, 50, 55))
N95_WEIGHTS = (0.45, 0.25, 0.15, 0.1, 0.05)
STRAP_COLOURS = ((240, 240, 240), (230, 200, 60), (70, 120, 200), (60, 160, 90),
                 (200, 60, 60))


class MaskedFace(NamedTuple):
    """A face with a drawn mask: uint8 RGB image [S, S, 3], bool region [S, S], mask kind."""

    image: np.ndarray
    region: np.ndarray
    kind: str


@dataclasses.dataclass(frozen=True)
class Geometry:
    """Where a mask sits, in face pixels (of a 48-pixel face; scaled for other sizes)."""

    cx: float  # column of the mask's centre line
    top: float  # row of the top edge at the centre (the bridge of the nose)
    bottom: float  # row of the lowest point (under the chin; may pass the image's bottom)
    half_width: float
    tilt: float  # degrees, counter-clockwise in the image

    @property
    def height(self) -> float:
        return self.bottom - self.top


def sample_geometry(rng: np.random.Generator) -> Geometry:
    """A position for FER's aligned faces: eyes near row 18, nose tip 29, mouth 37, chin 46."""
    return Geometry(cx=24.0 + float(np.clip(rng.normal(0.0, 1.0), -2.5, 2.5)),
                    top=rng.uniform(21.5, 25.0), bottom=rng.uniform(46.0, 52.0),
                    half_width=rng.uniform(15.5, 19.5), tilt=rng.uniform(-7.0, 7.0))


# ----------------------------------------------------------------------------------------------
# The drawing canvas: the mask's own frame, tilted onto a padded, supersampled image


class Canvas:
    """A supersampled canvas around the face, addressed in the mask's frame.

    Frame coordinates (u, v) are face pixels: u across from the centre line, v down from the
    top edge, before the tilt. The canvas pads the face by a quarter of its size on every side
    so nothing is cut before it is placed.
    """

    def __init__(self, size: int, geometry: Geometry):
        self.size, self.geo = size, geometry
        self.unit = size / FACE_SIZE  # geometry is given for a 48-pixel face
        self.pad = size // 4
        self.n = (size + 2 * self.pad) * SCALE
        self.pivot = (geometry.cx, geometry.top + geometry.height / 2)
        angle = math.radians(geometry.tilt)
        self.cos, self.sin = math.cos(angle), math.sin(angle)

    def to_pixels(self, u, v) -> tuple[np.ndarray, np.ndarray]:
        """Frame (u, v) -> canvas pixel coordinates (x, y)."""
        u, v = np.asarray(u, np.float64), np.asarray(v, np.float64)
        du, dv = u, v + self.geo.top - self.pivot[1]
        # Image rows grow downwards: a counter-clockwise tilt turns +u towards -y.
        x = self.pivot[0] + self.cos * du + self.sin * dv
        y = self.pivot[1] - self.sin * du + self.cos * dv
        return ((x * self.unit + self.pad) * SCALE, (y * self.unit + self.pad) * SCALE)

    def frame_grid(self) -> tuple[np.ndarray, np.ndarray]:
        """(u, v) of every canvas pixel's centre, [n, n] each."""
        pix = (np.arange(self.n) + 0.5) / SCALE - self.pad
        y, x = np.meshgrid(pix / self.unit, pix / self.unit, indexing="ij")
        dx, dy = x - self.pivot[0], y - self.pivot[1]
        u = self.cos * dx - self.sin * dy
        v = self.sin * dx + self.cos * dy + self.pivot[1] - self.geo.top
        return u, v

    def fill(self, outline: np.ndarray) -> np.ndarray:
        """Coverage [n, n] in [0, 1] of a closed outline given as frame points [K, 2]."""
        image = Image.new("L", (self.n, self.n), 0)
        ImageDraw.Draw(image).polygon(self._points(outline), fill=255)
        return np.asarray(image, np.float32) / 255.0

    def stroke(self, points: np.ndarray, width: float, *, closed: bool = False) -> np.ndarray:
        """Coverage [n, n] of a polyline through frame points [K, 2], `width` face pixels."""
        image = Image.new("L", (self.n, self.n), 0)
        pts = self._points(points)
        if closed:
            pts = pts + pts[:1]
        pixels = max(1, round(width * self.unit * SCALE))
        ImageDraw.Draw(image).line(pts, fill=255, width=pixels, joint="curve")
        return np.asarray(image, np.float32) / 255.0

    def discs(self, centres: np.ndarray, radius: float) -> np.ndarray:
        """Coverage [n, n] of discs of `radius` face pixels at frame points [K, 2]."""
        image = Image.new("L", (self.n, self.n), 0)
        draw = ImageDraw.Draw(image)
        r = radius * self.unit * SCALE
        for x, y in self._points(centres):
            draw.ellipse((x - r, y - r, x + r, y + r), fill=255)
        return np.asarray(image, np.float32) / 255.0

    def _points(self, points: np.ndarray) -> list[tuple[float, float]]:
        x, y = self.to_pixels(points[:, 0], points[:, 1])
        return list(zip(x.tolist(), y.tolist(), strict=True))

    def downsample(self, layer: np.ndarray) -> np.ndarray:
        """The face's part of a canvas layer [n, n, ...], box-averaged to [S, S, ...]."""
        start, stop = self.pad * SCALE, (self.pad + self.size) * SCALE
        crop = layer[start:stop, start:stop]
        blocks = crop.reshape(self.size, SCALE, self.size, SCALE, *crop.shape[2:])
        return blocks.mean(axis=(1, 3))


# ----------------------------------------------------------------------------------------------
# Outlines, in frame coordinates


def _curve(u: np.ndarray, v: np.ndarray) -> np.ndarray:
    return np.stack([u, v], axis=1)


def surgical_outline(geo: Geometry, rng: np.random.Generator) -> tuple[np.ndarray, dict]:
    """A pleated rectangle: the top bent over the nose, the bottom under the chin."""
    w, h = geo.half_width, geo.height
    drop, rise, inset = rng.uniform(1.5, 3.0), rng.uniform(3.0, 6.0), rng.uniform(0.05, 0.1)
    t = np.linspace(-1.0, 1.0, 33)
    top = _curve(t * w, drop * t**2)
    right = _curve(w * (1 - inset * np.linspace(0, 1, 9)), np.linspace(drop, h - rise, 9))
    bottom_w = w * (1 - inset)
    bottom = _curve(-t * bottom_w, h - rise * t**2)
    left = right[::-1] * np.array([-1.0, 1.0])
    corners = {"top": (w, drop), "bottom": (bottom_w, h - rise)}
    return np.concatenate([top, right[1:], bottom[1:], left[1:-1]]), corners


def cloth_outline(geo: Geometry, rng: np.random.Generator) -> tuple[np.ndarray, dict]:
    """A contoured mask: peaked over the nose, rounded under the chin."""
    w, h = geo.half_width, geo.height
    drop, rise = rng.uniform(4.0, 7.0), rng.uniform(6.0, 10.0)
    sharp = rng.uniform(0.8, 1.1)  # < 1: a pointier nose peak
    t = np.linspace(-1.0, 1.0, 41)
    top = _curve(t * w, drop * np.abs(t) ** sharp)
    right = _curve(w * (1 - 0.05 * np.linspace(0, 1, 9)), np.linspace(drop, h - rise, 9))
    bottom_w = 0.95 * w
    bottom = _curve(-t * bottom_w, h - rise * np.abs(t) ** 1.6)
    left = right[::-1] * np.array([-1.0, 1.0])
    corners = {"top": (w, drop), "bottom": (bottom_w, h - rise)}
    return np.concatenate([top, right[1:], bottom[1:], left[1:-1]]), corners


def n95_outline(geo: Geometry, rng: np.random.Generator) -> tuple[np.ndarray, dict]:
    """A moulded cup: a rounded superellipse, narrower than the other masks."""
    a = geo.half_width * rng.uniform(0.75, 0.88)
    b = geo.height / 2 * rng.uniform(0.96, 1.0)
    p = rng.uniform(2.0, 2.6)
    angle = np.linspace(0.0, 2 * np.pi, 72, endpoint=False)
    c, s = np.cos(angle), np.sin(angle)
    u = a * np.sign(c) * np.abs(c) ** (2 / p)
    v = geo.height / 2 + b * np.sign(s) * np.abs(s) ** (2 / p)
    corners = {"top": (a * 0.9, geo.height * 0.3), "bottom": (a * 0.9, geo.height * 0.72)}
    return _curve(u, v), corners


# ----------------------------------------------------------------------------------------------
# Colours and textures: canvas-sized colour [n, n, 3] (0-255) and shading [n, n] layers


def _pick(rng: np.random.Generator, colours, weights=None, *, jitter: float = 6.0) -> np.ndarray:
    """One palette colour, varied a little so no two masks are dyed exactly alike."""
    p = None if weights is None else np.asarray(weights) / np.sum(weights)
    colour = np.asarray(colours[rng.choice(len(colours), p=p)], np.float32)
    return np.clip(colour + rng.normal(0.0, jitter, 3), 0, 255).astype(np.float32)


def _accent(rng: np.random.Generator, base: np.ndarray) -> np.ndarray:
    """A print colour that stands out from `base` (white prints are common)."""
    if rng.random() < 0.35:
        return _pick(rng, ((245, 245, 240),))
    for _ in range(8):
        colour = _pick(rng, CLOTH_COLOURS)
        if np.abs(colour - base).sum() > 150:
            return colour
    return 255.0 - base


def _mix(layer: np.ndarray, colour: np.ndarray, weight: np.ndarray) -> np.ndarray:
    """`layer` [n, n, 3] blended towards `colour` by `weight` [n, n] in [0, 1]."""
    w = weight[..., None]
    return layer * (1.0 - w) + colour * w


def _solid(canvas: Canvas, colour: np.ndarray) -> np.ndarray:
    return np.broadcast_to(colour, (canvas.n, canvas.n, 3)).astype(np.float32)


def _frac(x: np.ndarray) -> np.ndarray:
    return x - np.floor(x)


def stripes(canvas, u, v, rng, base, accent) -> np.ndarray:
    angle = math.radians(rng.choice((0.0, 90.0, 45.0, -45.0)))
    period, duty = rng.uniform(2.5, 4.5), rng.uniform(0.3, 0.5)
    along = (u * math.sin(angle) + v * math.cos(angle)) / period
    return _mix(_solid(canvas, base), accent, (_frac(along) < duty).astype(np.float32))


def dots(canvas, u, v, rng, base, accent) -> np.ndarray:
    period, radius = rng.uniform(2.8, 4.2), rng.uniform(0.55, 0.9)
    row = np.round(v / period)
    shift = (row % 2) * period / 2  # alternate rows offset: a hexagonal polka-dot grid
    du = u - shift - np.round((u - shift) / period) * period
    dv = v - row * period
    return _mix(_solid(canvas, base), accent, (du**2 + dv**2 < radius**2).astype(np.float32))


def checks(canvas, u, v, rng, base, accent) -> np.ndarray:
    period = rng.uniform(2.5, 4.0)
    across = (_frac(u / period) < 0.5).astype(np.float32)
    down = (_frac(v / period) < 0.5).astype(np.float32)
    return _mix(_solid(canvas, base), accent, 0.45 * (across + down))  # gingham: 2 tints


def flowers(canvas, u, v, rng, base, accent) -> np.ndarray:
    """Small five-petal flowers scattered over the cloth, with centres of another colour."""
    geo = canvas.geo
    count = int(geo.half_width * geo.height / rng.uniform(12.0, 22.0))
    centres = np.stack([rng.uniform(-geo.half_width, geo.half_width, count),
                        rng.uniform(-1.0, geo.height, count)], axis=1)
    angles = rng.uniform(0, 2 * np.pi, count)[:, None] + np.arange(5) * 2 * np.pi / 5
    petals = centres[:, None, :] + 0.75 * np.stack([np.cos(angles), np.sin(angles)], axis=2)
    layer = _mix(_solid(canvas, base), accent, canvas.discs(petals.reshape(-1, 2), 0.55))
    middle = _pick(rng, ((240, 200, 60), (250, 250, 245), (90, 40, 30)))
    return _mix(layer, middle, canvas.discs(centres, 0.35))


PATTERNS = {"plain": lambda canvas, u, v, rng, base, accent: _solid(canvas, base),
            "stripes": stripes, "dots": dots, "checks": checks, "flowers": flowers}


# ----------------------------------------------------------------------------------------------
# The three kinds: each returns premultiplied colour [n, n, 3] and coverage [n, n]


def _pleat_shading(canvas: Canvas, u, v, rng: np.random.Generator) -> np.ndarray:
    """Three pleats, lit just below each fold and shadowed above the next, on a mask whose
    sides turn away round the cheeks."""
    w, h = canvas.geo.half_width, canvas.geo.height
    first, spacing = h * rng.uniform(0.22, 0.3), h * rng.uniform(0.17, 0.22)
    phase = (v - first) / spacing
    shade = 1.0 + ((phase >= 0) & (phase < 3)) * (0.07 - 0.17 * _frac(phase))
    shade *= 1.0 - 0.2 * (u / w) ** 4
    t = np.linspace(-1.0, 1.0, 17)
    for k in range(3):
        fold = _curve(t * w * 0.95, np.full_like(t, first + k * spacing))
        shade *= 1.0 - 0.3 * canvas.stroke(fold, 0.35)
    return shade


def draw_surgical(canvas: Canvas, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """A pleated surgical mask with bound side edges, a nose wire and ear loops."""
    geo = canvas.geo
    outline, corners = surgical_outline(geo, rng)
    u, v = canvas.frame_grid()
    colour = _solid(canvas, _pick(rng, SURGICAL_COLOURS, SURGICAL_WEIGHTS))
    shade = _pleat_shading(canvas, u, v, rng)
    # The side edges: the outline's points within 2.5 pixels of its widest reach.
    sides = outline[np.abs(outline[:, 0]) > np.abs(outline[:, 0]).max() - 2.5]
    for side in (-1.0, 1.0):
        shade *= 1.0 - 0.12 * canvas.stroke(sides[np.sign(sides[:, 0]) == side], 1.2)
    t = np.linspace(-1.0, 1.0, 17)
    wire = canvas.stroke(_curve(t * geo.half_width / 3, 0.9 + corners["top"][1] * (t / 3) ** 2),
                         0.5)
    colour = _mix(colour, np.float32(250.0), 0.35 * wire)
    return _with_loops(canvas, colour * shade[..., None], canvas.fill(outline), corners, rng,
                       mask_colour=colour[canvas.n // 2, canvas.n // 2])


def draw_cloth(canvas: Canvas, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """A contoured cloth mask, plain or printed, with a centre seam, a hem and ear loops."""
    geo = canvas.geo
    outline, corners = cloth_outline(geo, rng)
    u, v = canvas.frame_grid()
    base = _pick(rng, CLOTH_COLOURS)
    pattern = CLOTH_PATTERNS[rng.choice(len(CLOTH_PATTERNS), p=CLOTH_PATTERN_WEIGHTS)]
    colour = PATTERNS[pattern](canvas, u, v, rng, base, _accent(rng, base))
    shade = 1.0 - 0.22 * (u / geo.half_width) ** 2 - 0.08 * (v / geo.height - 0.5) ** 2
    seam = _curve(np.zeros(9), np.linspace(0.0, geo.height + 1.0, 9))
    shade *= 1.0 - 0.3 * canvas.stroke(seam, 0.4)  # the centre seam of a contoured mask
    shade *= 1.0 - 0.15 * canvas.stroke(outline, 0.6, closed=True)  # the hem
    return _with_loops(canvas, colour * shade[..., None], canvas.fill(outline), corners, rng,
                       mask_colour=base)


def draw_n95(canvas: Canvas, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """A moulded respirator cup with a rim, a nose clip, sometimes a valve, and head straps."""
    geo = canvas.geo
    outline, corners = n95_outline(geo, rng)
    u, v = canvas.frame_grid()
    a = np.abs(outline[:, 0]).max()
    b, mid = geo.height / 2, geo.height / 2
    colour = _solid(canvas, _pick(rng, N95_COLOURS, N95_WEIGHTS))
    radial = (u / a) ** 2 + ((v - mid) / b) ** 2
    # A dome lit from the upper left, and the moulded rim just inside the edge.
    shade = 1.06 - 0.22 * radial - 0.03 * (u / a + (v - mid) / b)
    centre = np.array([0.0, mid])
    rim = centre + (outline - centre) * 0.88
    shade *= 1.0 - 0.15 * canvas.stroke(rim, 0.45, closed=True)
    clip = _curve(np.linspace(-0.3, 0.3, 5) * a, np.full(5, mid - b + 1.3))
    colour = _mix(colour, np.float32(185.0), canvas.stroke(clip, 0.9))
    if rng.random() < 0.4:
        colour, shade = _valve(canvas, colour, shade, rng, a=a, mid=mid)
    mask_colour = colour[0, 0].copy()  # the corner: no clip or valve there
    return _with_straps(canvas, colour * shade[..., None], canvas.fill(outline), corners, rng,
                        mask_colour=mask_colour)


def _valve(canvas, colour, shade, rng, *, a: float, mid: float):
    """An exhalation valve on one cheek: a disc in a contrasting colour with slits."""
    side = rng.choice((-1.0, 1.0))
    centre = np.array([[side * a * rng.uniform(0.4, 0.5), mid + rng.uniform(0.5, 2.5)]])
    radius = rng.uniform(2.6, 3.4)
    disc = canvas.discs(centre, radius)
    tint = _pick(rng, ((150, 150, 155), (240, 240, 240), (60, 110, 180), (230, 120, 40),
                       (40, 40, 45)))
    colour = _mix(colour, tint, disc)
    shade = shade * (1.0 - 0.2 * canvas.discs(centre, radius) * (1 - disc))
    for dy in (-1.0, 0.0, 1.0):
        slit = _curve(centre[0, 0] + np.array([-0.55, 0.55]) * radius,
                      np.full(2, centre[0, 1] + dy * radius * 0.45))
        shade = shade * (1.0 - 0.35 * canvas.stroke(slit, 0.3))
    return colour, shade


def _bezier(start: np.ndarray, bend: np.ndarray, end: np.ndarray, steps: int = 12) -> np.ndarray:
    t = np.linspace(0.0, 1.0, steps)[:, None]
    return (1 - t) ** 2 * start + 2 * t * (1 - t) * bend + t**2 * end


def _with_strings(layer, coverage, strings, colour) -> tuple[np.ndarray, np.ndarray]:
    """(premultiplied colour, coverage) of the mask with loops or straps that show only where
    the mask itself does not cover."""
    behind = (strings * (1.0 - coverage))[..., None]
    premultiplied = layer * coverage[..., None] + np.asarray(colour, np.float32) * behind
    return premultiplied, np.maximum(coverage, strings)


def _with_loops(canvas, layer, coverage, corners, rng, *, mask_colour):
    """Elastic ear loops from the mask's side corners back to the ears."""
    geo = canvas.geo
    white = rng.random() < 0.5
    loop_colour = np.float32([245, 245, 245]) if white else np.asarray(mask_colour) * 0.95
    strings = np.zeros_like(coverage)
    for side in (-1.0, 1.0):
        ear = np.array([side * (geo.half_width + rng.uniform(5.0, 7.0)), rng.uniform(-2.0, 0.5)])
        for u, v in (corners["top"], corners["bottom"]):
            start = np.array([side * u, v])
            bend = (start + ear) / 2 + np.array([side * 1.0, 0.0])  # loops bow outwards
            strings = np.maximum(strings, canvas.stroke(_bezier(start, bend, ear), 0.55))
    return _with_strings(layer, coverage, strings, loop_colour)


def _with_straps(canvas, layer, coverage, corners, rng, *, mask_colour):
    """A respirator's head straps, from the cup's sides back over the cheeks: the upper one
    towards the top of the ears, the lower one below them."""
    geo = canvas.geo
    colour = mask_colour * 0.97 if rng.random() < 0.5 else _pick(rng, STRAP_COLOURS)
    ends = (rng.uniform(-1.0, 1.5), geo.height * rng.uniform(0.6, 0.75))
    strings = np.zeros_like(coverage)
    for side in (-1.0, 1.0):
        far = side * (geo.half_width + 7.0)
        for (u, v), end_v in zip((corners["top"], corners["bottom"]), ends, strict=True):
            line = _curve(np.array([side * u * 0.97, far]), np.array([v, end_v]))
            strings = np.maximum(strings, canvas.stroke(line, 0.7))
    return _with_strings(layer, coverage, strings, colour)


DRAWERS = {"surgical": draw_surgical, "cloth": draw_cloth, "n95": draw_n95}


# ----------------------------------------------------------------------------------------------
# Putting a mask on a face


def _face_rgb(face: np.ndarray) -> np.ndarray:
    """uint8 [S, S], [S, S, 1] or [S, S, 3] -> float32 RGB [S, S, 3]."""
    x = np.asarray(face)
    if x.ndim == 3 and x.shape[-1] == 1:
        x = x[..., 0]
    if x.ndim == 2:
        x = np.repeat(x[..., None], 3, axis=-1)
    if x.ndim != 3 or x.shape[-1] != 3 or x.shape[0] != x.shape[1]:
        raise ValueError(f"a face must be a square gray or RGB image; got shape {x.shape}")
    return x.astype(np.float32)


def _lighting(face: np.ndarray, unit: float) -> np.ndarray:
    """A brightness factor [S, S, 1] from the face's smoothed luminance: a mask in a dark photo
    is darker, and it picks up the face's shading."""
    import scipy.ndimage  # only the drawer needs it

    luminance = face.mean(axis=-1) / 255.0
    smooth = scipy.ndimage.gaussian_filter(luminance, sigma=4.0 * unit, mode="nearest")
    return np.clip(0.5 + 0.6 * smooth, 0.45, 1.1)[..., None]


def put_mask(face: np.ndarray, seed, *, kind: str | None = None) -> MaskedFace:
    """Draws a random mask on an aligned face (uint8, gray or RGB, square).

    `seed` is anything `np.random.default_rng` takes (an int, or a sequence such as
    (seed, split, index)): the same seed and face give the same image. `kind` is one of
    `MASK_KINDS`, or None for a random one. The region is True wherever the drawing changed
    the face; everywhere else the image equals the face.
    """
    if kind is not None and kind not in DRAWERS:
        raise ValueError(f"unknown mask kind {kind!r}; use one of {', '.join(MASK_KINDS)}")
    rng = np.random.default_rng(seed)
    rgb = _face_rgb(face)
    kind = kind or MASK_KINDS[rng.choice(len(MASK_KINDS), p=KIND_WEIGHTS)]
    canvas = Canvas(rgb.shape[0], sample_geometry(rng))
    premultiplied, coverage = DRAWERS[kind](canvas, rng)
    return _composite(rgb, canvas, premultiplied, coverage, rng, kind)


def _composite(rgb, canvas, premultiplied, coverage, rng, kind) -> MaskedFace:
    """Box-averages the drawing to the face's size and lays it over the face."""
    alpha = canvas.downsample(coverage)[..., None]
    colour = canvas.downsample(premultiplied)
    # Coverage below half a grey level cannot show after rounding: leave those pixels alone,
    # so the region is exactly where the face changed.
    region = alpha[..., 0] >= 0.5 / 255.0
    alpha, colour = alpha * region[..., None], colour * region[..., None]
    light = _lighting(rgb, canvas.unit) * rng.uniform(0.92, 1.05)
    grain = rng.normal(0.0, 2.0, alpha.shape) * alpha  # the photo's noise on the mask too
    out = rgb * (1.0 - alpha) + colour * light + grain
    image = np.clip(np.round(out), 0, 255).astype(np.uint8)
    image[~region] = rgb[~region].astype(np.uint8)
    return MaskedFace(image, region, kind)


# ----------------------------------------------------------------------------------------------
# Building the unpaired domains from FER2013

BUILD_FORMAT = 1  # bump when the drawer or the layout changes: older builds are then rebuilt
SOURCE_NAME = "fer2013-48.tar.gz"
SPLIT_CODES = {"train": 0, "test": 1}  # part of every seed: the splits draw different masks
MANIFEST = "manifest.json"


def default_source() -> Path | None:
    """The FER2013 archive of the shared data folder beside the project, when present."""
    candidates = (Path(__file__).resolve().parents[2] / "shared" / "data" / SOURCE_NAME,
                  Path("/work/shared/data") / SOURCE_NAME)
    return next((p for p in candidates if p.is_file()), None)


def default_domains_dir() -> Path:
    """$COMMON_JAX_CACHE/facemask, ~/.cache/common_jax/facemask by default."""
    root = os.environ.get("COMMON_JAX_CACHE") or "~/.cache/common_jax"
    return Path(root).expanduser() / "facemask"


class Face(NamedTuple):
    path: str
    name: str  # output file name without extension, e.g. "happy_Training_10019449"
    index: int  # position in the source split: seeds the face's mask


def source_digest(source: Path) -> str:
    """What identifies the source's content: an archive's bytes or a folder's file list."""
    from common_jax.data.sources import sha256_of_file

    if source.is_file():
        return "sha256:" + sha256_of_file(source)[:16]
    digest = hashlib.sha256()
    for path in sorted(p for p in source.rglob("*") if p.is_file()):
        digest.update(f"{path.relative_to(source).as_posix()}|{path.stat().st_size}\n".encode())
    return "files:" + digest.hexdigest()[:16]


def list_faces(source: Path, split: str) -> list[Face]:
    """The split's images, named after their class folder and file name."""
    import ml_collections

    from common_jax.data import load_source

    data = ml_collections.ConfigDict({"path": str(source), "tfds_name": ""})
    found = load_source(data, split=split)
    if found.paths is None:
        raise UserError(f"'{source}' holds no image files for split '{split}'; pass --source "
                        "the FER2013 archive (fer2013-48.tar.gz) or its extracted folder")
    names = [Path(p).stem for p in found.paths]
    if found.labels is not None:
        names = [f"{found.class_names[c]}_{n}" for c, n in zip(found.labels, names, strict=True)]
    if len(set(names)) < len(names):  # same file name in two folders: keep both
        names = [f"{i:06d}_{n}" for i, n in enumerate(names)]
    return [Face(p, n, i) for i, (p, n) in enumerate(zip(found.paths, names, strict=True))]


def halves(faces: list[Face], *, seed: int, split: str,
           limit: int | None) -> tuple[list[Face], list[Face]]:
    """Two disjoint random halves (A, B) of the faces, of at most `limit` faces together."""
    order = np.random.default_rng([seed, SPLIT_CODES[split]]).permutation(len(faces))
    if limit is not None:
        order = order[:limit]
    half = len(order) // 2
    return [faces[i] for i in order[:half]], [faces[i] for i in order[half:]]


def read_face(path: str, size: int = FACE_SIZE) -> np.ndarray:
    """uint8 gray [size, size]: centre square, resized only when the file's size differs."""
    with Image.open(path) as image:
        gray = image.convert("L")
    side = min(gray.size)
    if gray.size != (side, side):
        left, top = (gray.width - side) // 2, (gray.height - side) // 2
        gray = gray.crop((left, top, left + side, top + side))
    if side != size:
        gray = gray.resize((size, size), Image.Resampling.LANCZOS)
    return np.asarray(gray)


def _save(image: np.ndarray, path: Path) -> None:
    Image.fromarray(image).save(path)


def _gray_rgb(face: np.ndarray) -> np.ndarray:
    return np.repeat(face[..., None], 3, axis=-1)


def write_masked(faces: list[Face], folder: Path, *, seed: int, split: str,
                 truth: bool) -> collections.Counter:
    """Masked faces into `folder`; with `truth`, the originals and masks into the sibling
    `<folder>_original` and `<folder>_mask` folders. Returns the count of each mask kind."""
    extra = ("original", "mask") if truth else ()
    for sub in (folder, *(folder.with_name(f"{folder.name}_{e}") for e in extra)):
        sub.mkdir(parents=True)
    kinds = collections.Counter()
    for face in faces:
        pixels = read_face(face.path)
        masked = put_mask(pixels, (seed, SPLIT_CODES[split], face.index))
        kinds[masked.kind] += 1
        _save(masked.image, folder / f"{face.name}.png")
        if truth:
            _save(_gray_rgb(pixels), folder.with_name(f"{folder.name}_original") /
                  f"{face.name}.png")
            _save(masked.region.astype(np.uint8) * 255,
                  folder.with_name(f"{folder.name}_mask") / f"{face.name}.png")
    return kinds


def write_unmasked(faces: list[Face], folder: Path) -> None:
    folder.mkdir(parents=True)
    for face in faces:
        _save(_gray_rgb(read_face(face.path)), folder / f"{face.name}.png")


def read_manifest(folder: Path) -> dict | None:
    try:
        return json.loads((folder / MANIFEST).read_text())
    except (OSError, ValueError):
        return None


def _check_replaceable(out: Path) -> None:
    """Only an earlier build (or nothing) may be replaced: never a user's own folder."""
    if out.is_dir() and any(out.iterdir()) and read_manifest(out) is None:
        raise UserError(f"'{out}' exists and is not a face-mask build (it has no {MANIFEST}); "
                        "choose another --out or empty it")
    if out.exists() and not out.is_dir():
        raise UserError(f"'{out}' is a file; choose a folder for --out")


def _swap_in(built: Path, out: Path) -> None:
    """Replaces `out` by the finished build in two renames: never a half-built folder."""
    old = out.with_name(f".{out.name}.old-{os.getpid()}")
    if out.exists():
        os.rename(out, old)
    os.rename(built, out)
    shutil.rmtree(old, ignore_errors=True)


def build_domains(source, out_dir, *, seed: int = 0, limit: int | None = None) -> dict:
    """Builds trainA/trainB/testA(+_original, _mask)/testB from FER2013 faces; returns the
    manifest.

    `source` is the FER2013 archive or its extracted folder ({train,test}/<emotion>/*.jpg).
    `limit` caps the faces taken from each split (for quick checks). Deterministic from the
    seed; a folder already built from the same source with the same settings is kept as is.
    """
    source, out = Path(source).expanduser(), Path(out_dir).expanduser()
    if not source.exists():
        raise UserError(f"FER2013 source '{source}' not found; pass --source the "
                        f"{SOURCE_NAME} archive or its extracted folder")
    if limit is not None and limit < 2:
        raise UserError(f"--limit {limit} leaves no face for one of the domains; use 2 or more")
    settings = {"format": BUILD_FORMAT, "seed": int(seed), "limit": limit,
                "image_size": FACE_SIZE, "source": source_digest(source)}
    existing = read_manifest(out)
    if existing is not None and existing.get("settings") == settings:
        log.info("'%s' is already built from this source with seed %d; keeping it", out, seed)
        return existing
    _check_replaceable(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    building = out.with_name(f".{out.name}.partial-{os.getpid()}")
    shutil.rmtree(building, ignore_errors=True)
    try:
        manifest = _build_into(building, source, settings)
        _swap_in(building, out)
    finally:
        shutil.rmtree(building, ignore_errors=True)
    return manifest


def _build_into(folder: Path, source: Path, settings: dict) -> dict:
    seed, limit = settings["seed"], settings["limit"]
    train_a, train_b = halves(list_faces(source, "train"), seed=seed, split="train", limit=limit)
    test_a, test_b = halves(list_faces(source, "test"), seed=seed, split="test", limit=limit)
    log.info("drawing masks on %d + %d faces into '%s'", len(train_a), len(test_a), folder)
    kinds = write_masked(train_a, folder / "trainA", seed=seed, split="train", truth=False)
    kinds += write_masked(test_a, folder / "testA", seed=seed, split="test", truth=True)
    write_unmasked(train_b, folder / "trainB")
    write_unmasked(test_b, folder / "testB")
    manifest = {"settings": settings, "source_path": str(source.resolve()),
                "counts": {"trainA": len(train_a), "trainB": len(train_b),
                           "testA": len(test_a), "testB": len(test_b)},
                "mask_kinds": dict(sorted(kinds.items()))}
    (folder / MANIFEST).write_text(json.dumps(manifest, indent=2))  # last: marks it complete
    return manifest


# ----------------------------------------------------------------------------------------------
# Evaluating a remover on the held-out faces

PSNR_CAP_DB = 100.0  # identical images have an infinite PSNR; averages use this instead
INPAINT_RADIUS = 3  # pixels around each inpainted pixel that Telea's method looks at
# A translator: float32 images [N, S, S, 3] in [-1, 1] -> the same shape, in [-1, 1].
Translator = Callable[[np.ndarray], np.ndarray]


class HeldOut(NamedTuple):
    """testA with its ground truth: uint8 RGB [N, S, S, 3] images and bool regions [N, S, S]."""

    names: list[str]
    masked: np.ndarray
    original: np.ndarray
    region: np.ndarray


def _read_pngs(paths: list[Path], mode: str) -> np.ndarray:
    arrays = []
    for path in paths:
        with Image.open(path) as image:
            arrays.append(np.asarray(image.convert(mode)))
    return np.stack(arrays)


def load_heldout(domains_dir, *, limit: int | None = None) -> HeldOut:
    """The masked test faces, their originals and masks (the first `limit`, by name)."""
    root = Path(domains_dir).expanduser()
    build = "python -m gans_jax.facemask build"
    folders = [root / n for n in ("testA", "testA_original", "testA_mask")]
    missing = [f.name for f in folders if not f.is_dir()]
    if missing:
        raise UserError(f"'{root}' has no {', '.join(missing)} folder; build the face-mask "
                        f"domains there with `{build} --out {root}` or pass --domains")
    names = sorted(p.name for p in folders[0].glob("*.png"))[:limit]
    if not names:
        raise UserError(f"'{folders[0]}' holds no PNG faces; rebuild it with `{build}`")
    lost = [n for n in names if not all((f / n).is_file() for f in folders[1:])]
    if lost:
        raise UserError(f"{len(lost)} faces of '{folders[0]}' lack their original or mask "
                        f"(e.g. {lost[0]}); rebuild the domains with `{build}`")
    return HeldOut([Path(n).stem for n in names],
                   _read_pngs([folders[0] / n for n in names], "RGB"),
                   _read_pngs([folders[1] / n for n in names], "RGB"),
                   _read_pngs([folders[2] / n for n in names], "L") > 127)


def to_model_input(images: np.ndarray) -> np.ndarray:
    """uint8 -> float32 in [-1, 1], as the data pipeline feeds the networks."""
    return images.astype(np.float32) / 127.5 - 1.0


def to_pixels(images: np.ndarray) -> np.ndarray:
    """float in [-1, 1] -> uint8, rounded as PNGs of samples are saved."""
    return np.floor(np.clip((np.asarray(images, np.float32) + 1.0) * 127.5 + 0.5, 0, 255)
                    ).astype(np.uint8)


def translate_all(translate_fn: Translator, images: np.ndarray, batch_size: int) -> np.ndarray:
    """uint8 images through the translator in batches of one size (the last one padded, so a
    compiled translator compiles once) -> uint8 images."""
    if batch_size < 1:
        raise UserError(f"batch size must be at least 1, got {batch_size}; set --batch_size")
    out = []
    for start in range(0, len(images), batch_size):
        chunk = to_model_input(images[start:start + batch_size])
        rows = len(chunk)
        if rows < batch_size:
            chunk = np.concatenate([chunk, np.repeat(chunk[-1:], batch_size - rows, axis=0)])
        result = np.asarray(translate_fn(chunk))
        if result.shape != chunk.shape:
            raise ValueError(f"the translator returned shape {result.shape} for a batch of "
                             f"shape {chunk.shape}")
        out.append(to_pixels(result[:rows]))
    return np.concatenate(out)


def inpaint_telea(images: np.ndarray, regions: np.ndarray) -> np.ndarray:
    """OpenCV's Telea inpainting of each image's region (the classical baseline, which is
    told where the mask is; the generator is not)."""
    import cv2  # only the evaluation needs OpenCV

    return np.stack([cv2.inpaint(np.ascontiguousarray(image), region.astype(np.uint8),
                                 INPAINT_RADIUS, cv2.INPAINT_TELEA)
                     for image, region in zip(images, regions, strict=True)])


def _mean_capped(psnr: np.ndarray) -> float:
    return float(np.nanmean(np.minimum(psnr, PSNR_CAP_DB)))


def score_images(images: np.ndarray, held: HeldOut) -> dict[str, float]:
    """PSNR / SSIM / MSE against the originals (whole face and inside the mask), and how much
    the method changed its input, on pixels scaled to [0, 1]; means over the images."""
    from common_jax.metrics import image_quality as iq

    out = images.astype(np.float64) / 255.0
    truth = held.original.astype(np.float64) / 255.0
    change = np.abs(out - held.masked.astype(np.float64) / 255.0).mean(axis=-1)
    psnr = iq.psnr(out, truth, data_range=1.0)
    psnr_mask = iq.psnr(out, truth, data_range=1.0, region=held.region)
    outside = ~held.region
    return {
        "psnr": _mean_capped(psnr),
        "ssim": float(np.mean(iq.ssim(out, truth, data_range=1.0))),
        "psnr_mask": _mean_capped(psnr_mask),
        "ssim_mask": float(np.nanmean(iq.ssim(out, truth, data_range=1.0, region=held.region))),
        "mse": float(np.mean(iq.mse(out, truth))),
        "mse_mask": float(np.nanmean(iq.mse(out, truth, region=held.region))),
        "mean_abs_change": float(change.mean()),
        "mean_abs_change_outside_mask": float((change * outside).sum() / outside.sum()),
        "images_at_psnr_cap": int((psnr >= PSNR_CAP_DB).sum()),
    }


def evaluate_remover(translate_fn: Translator, domains_dir, *, batch_size: int = 128,
                     limit: int | None = None, fid: bool | None = None) -> dict[str, Any]:
    """Scores a mask remover (testA -> unmasked) on the whole held-out set (or its first
    `limit` faces).

    Rows: "generator" (translate_fn, which is not told where the mask is), "masked_input" (the
    input itself: the score of doing nothing) and "inpaint_telea" (OpenCV's Telea inpainting,
    given the mask). Each has PSNR (dB, per image, averaged; identical images count as
    `PSNR_CAP_DB`) and SSIM against the unmasked original, over the whole face and inside the
    mask, MSE, and the mean absolute change of the input (inside and outside the mask).
    `fid`: Inception FID/KID of the generator's faces against testB, the real unmasked faces:
    True requires the FID weights, None computes it when they are present, False skips it.
    """
    held = load_heldout(domains_dir, limit=limit)
    generated = translate_all(translate_fn, held.masked, batch_size)
    result: dict[str, Any] = {
        "num_images": len(held.names),
        "domains": str(Path(domains_dir).expanduser()),
        "pixels": "scaled to [0, 1]; PSNR in dB, per image then averaged",
        "psnr_cap_db": PSNR_CAP_DB,
        "rows": {"generator": score_images(generated, held),
                 "masked_input": score_images(held.masked, held),
                 "inpaint_telea": score_images(inpaint_telea(held.masked, held.region), held)},
    }
    if fid is not False:
        result["inception"] = inception_scores(generated, domains_dir, required=bool(fid))
    return result


def inception_scores(generated: np.ndarray, domains_dir, *, required: bool = False,
                     batch_size: int = 50) -> dict[str, Any]:
    """FID and KID of the generated faces against the real unmasked testB faces, or the reason
    they were skipped (no FID weights: `make fid-weights`)."""
    from common_jax.metrics import gan_metrics as gm
    from common_jax.metrics import inception as inception_lib

    weights = inception_lib.default_weights_path()
    if not weights.is_file():
        reason = f"FID Inception weights not found at {weights}; run `make fid-weights`"
        if required:
            raise UserError(f"{reason} to score FID/KID, or leave FID out")
        log.warning("skipping FID/KID: %s", reason)
        return {"skipped": reason}
    root = Path(domains_dir).expanduser()
    real = _read_pngs(sorted((root / "testB").glob("*.png")), "RGB")
    network = gm.load_feature_network()
    build = (read_manifest(root) or {}).get("settings", {})
    dataset = "facemask-" + hashlib.sha256(json.dumps(build, sort_keys=True).encode()
                                           ).hexdigest()[:10]
    reference = gm.reference_statistics(network, dataset, "testB", real, num_samples=len(real),
                                        batch_size=batch_size, keep_features=True)
    return gm.evaluate(network, generated, reference, num_samples=len(generated),
                       metrics=("fid", "kid"), batch_size=batch_size,
                       kid_subset_size=min(1000, len(real), len(generated)))


ROW_TITLES = {"generator": "generator G(masked)", "masked_input": "masked input (no change)",
              "inpaint_telea": "Telea inpainting (given the mask)"}


def format_table(result: dict[str, Any]) -> str:
    """The scores as a text table, one method per row."""
    lines = [f"face-mask removal on {result['num_images']} held-out faces "
             f"({result['domains']}/testA); pixels in [0, 1]",
             f"{'method':36s} {'PSNR':>7s} {'SSIM':>7s} {'PSNR in mask':>13s} "
             f"{'SSIM in mask':>13s} {'mean |out-in|':>14s}"]
    for key, row in result["rows"].items():
        lines.append(f"{ROW_TITLES.get(key, key):36s} {row['psnr']:7.2f} {row['ssim']:7.4f} "
                     f"{row['psnr_mask']:13.2f} {row['ssim_mask']:13.4f} "
                     f"{row['mean_abs_change']:14.4f}")
    inception = result.get("inception")
    if inception and "skipped" in inception:
        lines.append(f"FID/KID skipped: {inception['skipped']}")
    elif inception:
        lines.append(f"Inception FID {inception['fid']:.2f}, KID {inception['kid_mean']:.4f} ± "
                     f"{inception['kid_std']:.4f} (G(testA) against testB)")
    return "\n".join(lines)


# ----------------------------------------------------------------------------------------------
# A trained CycleGAN as the translator


def restore_translator(workdir, *, direction: str = "a2b"):
    """(config, translator) from a CycleGAN run's latest checkpoint."""
    from common_jax import checkpoint
    from gans_jax.trainers import cyclegan

    config, state, _ = checkpoint.restore_for_inference(workdir, lambda _config: cyclegan)

    def translate(images: np.ndarray) -> np.ndarray:
        return np.asarray(cyclegan.translate(state, images, config, direction=direction))

    return config, fit_to_model(translate, config.model.image_size, config.model.channels)


def fit_to_model(translate: Translator, image_size: int, channels: int) -> Translator:
    """Adapts 3-channel faces of any size to a model of another size or channel count (and
    its output back)."""
    def adapted(images: np.ndarray) -> np.ndarray:
        import jax

        n, size = images.shape[0], images.shape[1]
        x = images.mean(axis=-1, keepdims=True) if channels == 1 else images
        if size != image_size:
            x = np.asarray(jax.image.resize(x, (n, image_size, image_size, x.shape[-1]),
                                            "bilinear"))
        y = np.asarray(translate(x.astype(np.float32)))
        if size != image_size:
            y = np.asarray(jax.image.resize(y, (n, size, size, y.shape[-1]), "bilinear"))
        return np.repeat(y, 3, axis=-1) if y.shape[-1] == 1 else y

    return adapted


def domains_for(config, given: str | None) -> Path:
    """The domains to evaluate on: `given`, else the run's domain A folder when it is a
    face-mask build, else the default build folder."""
    if given:
        return Path(given).expanduser()
    path = str(config.get("data", {}).get("a", {}).get("path", "") or "")
    if path and read_manifest(Path(path).expanduser()) is not None:
        return Path(path).expanduser()
    return default_domains_dir()


def example_grid(domains_dir, *, num: int = 10, scale: int = 2) -> np.ndarray:
    """uint8 RGB grid of `num` held-out faces spread over the set (its names start with the
    emotion): rows original, masked, mask region, Telea inpainting; enlarged `scale` times
    (nearest) so the pixels stay visible."""
    held = load_heldout(domains_dir)
    pick = np.linspace(0, len(held.names) - 1, min(num, len(held.names))).round().astype(int)
    held = HeldOut([held.names[i] for i in pick], *(a[pick] for a in held[1:]))
    regions = np.repeat(held.region[..., None], 3, axis=-1).astype(np.uint8) * 255
    rows = [held.original, held.masked, regions, inpaint_telea(held.masked, held.region)]
    grid = np.concatenate([np.concatenate(list(row), axis=1) for row in rows], axis=0)
    return np.repeat(np.repeat(grid, scale, axis=0), scale, axis=1)


# ----------------------------------------------------------------------------------------------
# CLI


def run_build(args: argparse.Namespace) -> None:
    source = Path(args.source) if args.source else default_source()
    if source is None:
        raise UserError(f"no FER2013 source found (looked for ../shared/data/{SOURCE_NAME} "
                        "beside the project); pass --source the archive or its folder")
    manifest = build_domains(source, args.out, seed=args.seed, limit=args.limit)
    counts = ", ".join(f"{k} {v}" for k, v in manifest["counts"].items())
    print(f"face-mask domains in {Path(args.out).expanduser()}: {counts}; "
          f"masks {manifest['mask_kinds']}")


def run_examples(args: argparse.Namespace) -> None:
    Image.fromarray(example_grid(args.domains, num=args.num)).save(args.out)
    print(f"wrote {args.out}")


def run_evaluate(args: argparse.Namespace) -> None:
    from gans_jax.evaluation import merge_summary

    config, translate = restore_translator(args.workdir)
    domains = domains_for(config, args.domains)
    result = evaluate_remover(translate, domains, batch_size=args.batch_size, limit=args.limit,
                              fid=False if args.no_fid else None)
    merge_summary(Path(args.workdir) / "summary.json", "facemask", result)
    print(format_table(result))


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m gans_jax.facemask",
                                     description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    build = commands.add_parser("build", help="draw the masked/unmasked domains")
    build.add_argument("--out", default=str(default_domains_dir()))
    build.add_argument("--source", default=None,
                       help=f"FER2013 archive or folder (default: ../shared/data/{SOURCE_NAME})")
    build.add_argument("--seed", type=int, default=0)
    build.add_argument("--limit", type=int, default=None, help="faces per split (quick checks)")
    examples = commands.add_parser("examples", help="a PNG grid of held-out faces: original, "
                                   "masked, mask, Telea inpainting")
    examples.add_argument("--domains", default=str(default_domains_dir()))
    examples.add_argument("--out", default="facemask_examples.png")
    examples.add_argument("--num", type=int, default=10)
    evaluate = commands.add_parser("evaluate", help="score a CycleGAN run as a mask remover")
    evaluate.add_argument("--workdir", required=True)
    evaluate.add_argument("--domains", default=None,
                          help="the built domains (default: the run's data.a.path or --out's)")
    evaluate.add_argument("--batch_size", type=int, default=128)
    evaluate.add_argument("--limit", type=int, default=None, help="first N held-out faces")
    evaluate.add_argument("--no_fid", action="store_true", help="skip Inception FID/KID")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    try:
        {"build": run_build, "examples": run_examples,
         "evaluate": run_evaluate}[args.command](args)
    except UserError as error:
        print(f"error: {error}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main()
