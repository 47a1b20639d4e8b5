"""Rendering of the synthetic pushing data (cvae.synth): the textured tray on its floor, the
objects with their shadows and the gripper (arm, head, fingers, shadow) from signed distances,
anti-aliased (the camera's blur and noise: cvae.synth.sequence). Vectorized over frames:
every array below is (T, 64, 64) or (T, 64, 64, 3), float32.
"""
from __future__ import annotations

import numpy as np

from cvae.synth.physics import ARM_BASE_PX, SIZE, SceneObject, head_halfsize, shadow_offset

TRAY_RED = (0.8, 0.9)  # red level of the tray
TRAY_BLUE_DROP = (0.08, 0.15)  # how much lower its blue is
FLOOR_MARGIN = (2.0, 9.0)  # px of dark floor beside and below the tray
FLOOR_LEVEL = (0.18, 0.32)  # grey level of the floor

_ROWS, _COLS = np.mgrid[0:SIZE, 0:SIZE].astype(np.float32)  # rendering runs in float32


def coverage(sd: np.ndarray, soft: float = 1.0) -> np.ndarray:
    """Anti-aliased coverage in [0, 1] from a signed distance in px (negative inside)."""
    return np.clip(0.5 - sd / soft, 0.0, 1.0)


def _smooth_noise(rng: np.random.Generator, cells: int) -> np.ndarray:
    """(64, 64) smooth noise: a random cells x cells grid, bilinearly upsampled."""
    grid = rng.normal(0.0, 1.0, (cells, cells))
    x = np.linspace(0, cells - 1, SIZE)
    i0 = np.minimum(x.astype(int), cells - 2)
    w = x - i0
    interp = np.zeros((SIZE, cells))
    interp[np.arange(SIZE), i0] = 1 - w
    interp[np.arange(SIZE), i0 + 1] = w
    return interp @ grid @ interp.T


def draw_tray(rng: np.random.Generator) -> np.ndarray:
    """(64, 64, 3) light textured tray (warm, low in blue, as BAIR's) on a dark floor: smooth
    blotches, a fine weave, a shaded rim and dark floor margins of random width."""
    r = rng.uniform(*TRAY_RED)
    base = np.array([r, r - rng.uniform(0.0, 0.04), r - rng.uniform(*TRAY_BLUE_DROP)])
    blotch = 0.035 * _smooth_noise(rng, 5)
    period = rng.uniform(3.0, 5.0)
    theta = rng.uniform(0, np.pi)
    u = _COLS * np.cos(theta) + _ROWS * np.sin(theta)
    v = -_COLS * np.sin(theta) + _ROWS * np.cos(theta)
    weave = np.sin(2 * np.pi * u / period) * np.sin(2 * np.pi * v / period)
    weave *= rng.uniform(0.01, 0.03)
    grain = rng.normal(0.0, 0.006, (SIZE, SIZE))
    left, right, bottom = rng.uniform(*FLOOR_MARGIN, 3)
    edge = np.minimum(np.minimum(_COLS - left, SIZE - 1 - right - _COLS), SIZE - 1 - bottom - _ROWS)
    rim = 0.12 * coverage(edge - rng.uniform(1.0, 3.5))
    shade = blotch + weave + grain - rim
    tray = np.clip(base[None, None, :] + shade[..., None], 0.0, 1.0)
    floor = rng.uniform(*FLOOR_LEVEL) + rng.uniform(-0.03, 0.03, 3)
    floor = np.clip(floor + 0.03 * _smooth_noise(rng, 4)[..., None], 0.17, 1.0)  # above the head
    inside = coverage(-edge, soft=1.5)[..., None]
    return (inside * tray + (1 - inside) * floor).astype(np.float32)


def _object_sdf(obj: SceneObject, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Signed distance (px) of a shape in its own frame (u, v), centred at the origin."""
    r = obj.radius
    if obj.shape == "disk":
        return np.hypot(u, v) - r
    if obj.shape == "square":
        return np.maximum(np.abs(u), np.abs(v)) - 0.85 * r
    if obj.shape == "bar":
        return np.maximum(np.abs(u) - r, np.abs(v) - 0.55 * r)
    sides = [np.cos(a) * u + np.sin(a) * v for a in np.deg2rad([90.0, 210.0, 330.0])]
    return np.maximum(np.maximum(sides[0], sides[1]), sides[2]) - 0.6 * r  # triangle


def _object_color(obj: SceneObject, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """(..., 3) texture in the object frame, lit from the top left."""
    f = obj.freq
    if obj.texture == "stripes":
        mix = 0.5 + 0.5 * np.sin(f * u)
    elif obj.texture == "checker":
        mix = (np.sin(f * u) * np.sin(f * v) > 0).astype(np.float32)
    elif obj.texture == "dots":
        mix = coverage(np.hypot(np.sin(f * u), np.sin(f * v)) * 2.0 / f - 0.8)
    else:
        mix = np.zeros_like(u)
    color = obj.color + mix[..., None] * (obj.color2 - obj.color)
    light = 1.0 + 0.12 * np.clip(-(u + v) / (1.5 * obj.radius), -1.0, 1.0)
    return np.clip(color * light[..., None], 0.0, 1.0)


def render_objects(img: np.ndarray, objects: list[SceneObject], centres: np.ndarray,
                   angles: np.ndarray) -> None:
    """Composite objects (and their small fixed shadows) onto img (T, 64, 64, 3) in place.

    Each object is rendered once per distinct state and gathered to the frames, so an object
    that is not pushed yields bit-identical pixels in every frame.
    """
    for j, obj in enumerate(objects):
        changed = np.ones(len(centres), dtype=bool)
        changed[1:] = (np.any(centres[1:, j] != centres[:-1, j], axis=-1)
                       | (angles[1:, j] != angles[:-1, j]))
        keys = np.flatnonzero(changed)
        frame_to_key = np.cumsum(changed) - 1
        c, a = centres[keys, j].astype(np.float32), angles[keys, j].astype(np.float32)
        # work on the box that the object and its shadow can cover in any of its states
        reach = 1.25 * obj.radius + 4.0
        c0, r0 = np.maximum(np.floor(c.min(0) - reach).astype(int), 0)
        c1, r1 = np.minimum(np.ceil(c.max(0) + reach).astype(int) + 1, SIZE)
        du = _COLS[None, r0:r1, c0:c1] - c[:, 0, None, None]
        dv = _ROWS[None, r0:r1, c0:c1] - c[:, 1, None, None]
        cos, sin = np.cos(a)[:, None, None], np.sin(a)[:, None, None]
        u, v = cos * du + sin * dv, -sin * du + cos * dv
        su, sv = cos * (du - 1.0) + sin * (dv - 1.3), -sin * (du - 1.0) + cos * (dv - 1.3)
        shadow = 0.28 * coverage(_object_sdf(obj, su, sv), soft=1.6)
        alpha = coverage(_object_sdf(obj, u, v))
        color = _object_color(obj, u, v)
        shadow, alpha, color = shadow[frame_to_key], alpha[frame_to_key], color[frame_to_key]
        box = img[:, r0:r1, c0:c1]
        box *= 1.0 - shadow[..., None]
        box += alpha[..., None] * (color - box)


def _arm_halfwidth(half: np.ndarray) -> np.ndarray:
    """Half width (px) of the arm band for a head half size (both grow with z)."""
    return 0.45 * half + 0.7


def _gripper_sdf(col: np.ndarray, row: np.ndarray, head: np.ndarray, half: np.ndarray,
                 spread: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Signed distances (T, 64, 64) of the arm, the head and the two fingers.

    col/row are pixel grids broadcastable to (T, 64, 64) (shifted for the shadow); head (T, 2),
    half (T,) and spread (T,), the finger offset from the arm axis. The head is a rounded
    square aligned with the arm; the fingers stick out forward (away from the base).
    """
    bc, br = ARM_BASE_PX
    head, half, spread = head.astype(np.float32), half.astype(np.float32), spread.astype(np.float32)
    axis = head - np.array([bc, br], dtype=np.float32)  # (T, 2)
    length = np.linalg.norm(axis, axis=-1)
    fwd = axis / length[:, None]
    pc, pr = col - bc, row - br
    h = np.clip((pc * axis[:, 0, None, None] + pr * axis[:, 1, None, None])
                / (length ** 2)[:, None, None], 0.0, 1.0)
    arm_width = _arm_halfwidth(half)[:, None, None]
    arm = np.hypot(pc - h * axis[:, 0, None, None], pr - h * axis[:, 1, None, None]) - arm_width
    dc, dr = col - head[:, 0, None, None], row - head[:, 1, None, None]
    u = dc * fwd[:, 0, None, None] + dr * fwd[:, 1, None, None]  # along the arm
    v = -dc * fwd[:, 1, None, None] + dr * fwd[:, 0, None, None]  # across
    hs = half[:, None, None]
    u2, v2 = u * u, v * v
    head_sd = np.sqrt(np.sqrt(u2 * u2 + v2 * v2)) - hs  # rounded square: L4 norm
    reach = hs + 2.5
    along = np.abs(u - reach / 2) - reach / 2
    sp = spread[:, None, None]
    fingers = np.maximum(along, np.minimum(np.abs(v - sp), np.abs(v + sp)) - 1.1)
    return arm, head_sd, fingers


def render_gripper(img: np.ndarray, gpx: np.ndarray, z: np.ndarray, grip: np.ndarray) -> None:
    """Composite the gripper's shadow, the dark arm band and the darker head onto img in place."""
    half = head_halfsize(z).astype(np.float32)
    spread = np.where(grip > 0, 0.35, 0.8) * half  # grip > 0: closed fingers
    off = shadow_offset(z).astype(np.float32)
    # work on the box that the gripper and its shadow can cover in any frame: the head with its
    # fingers lies within 1.4 * half + 3.5 px of its centre, the arm between it and the base
    reach = 1.4 * half + 5.0
    lo = np.minimum(gpx, ARM_BASE_PX) - reach[:, None]
    hi = np.maximum(gpx, ARM_BASE_PX) + reach[:, None] + off
    c0, r0 = np.maximum(np.floor(lo.min(0)).astype(int), 0)
    c1, r1 = np.minimum(np.ceil(hi.max(0)).astype(int) + 1, SIZE)
    cols, rows = _COLS[None, r0:r1, c0:c1], _ROWS[None, r0:r1, c0:c1]
    box = img[:, r0:r1, c0:c1]
    # the shadow of the whole gripper, shifted by the height-dependent offset
    arm, head, fingers = _gripper_sdf(cols - off[:, 0, None, None], rows - off[:, 1, None, None],
                                      gpx, half, spread)
    shadow = 0.45 * coverage(np.minimum(np.minimum(arm, head), fingers), soft=1.8)
    box *= 1.0 - shadow[..., None]
    arm, head, fingers = _gripper_sdf(cols, rows, gpx, half, spread)
    arm_width = _arm_halfwidth(half)[:, None, None]
    tube = np.clip((arm + arm_width) / arm_width, 0.0, 1.0)  # 0 on the axis, 1 at the edge
    arm_color = np.array([0.30, 0.31, 0.33], dtype=np.float32) * (1.0 - 0.3 * tube[..., None] ** 2)
    box += coverage(arm)[..., None] * (arm_color - box)
    head_color = (np.array([0.09, 0.09, 0.11], dtype=np.float32)
                  + 0.03 * coverage(head + 1.5, soft=2.0)[..., None])  # faint rim highlight
    box += coverage(np.minimum(head, fingers))[..., None] * (head_color - box)
