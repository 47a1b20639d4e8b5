"""The simulated world of the synthetic pushing data (cvae.synth): the camera's world -> pixel
mapping, the workspace, the gripper's random-walk actions and end-effector path, the objects
(their appearance is drawn together with their hidden friction, glide and slip, in one RNG
order) and how the gripper pushes them. Pixel positions are what the renderer (cvae.synth.render)
draws; sizes are px of the SIZE x SIZE frames.
"""
from __future__ import annotations

import colorsys
from dataclasses import dataclass
from typing import Optional

import numpy as np

N_FRAMES = 30
SIZE = 64  # frames are SIZE x SIZE RGB

# World -> pixel mapping (top-down camera, robot base above the top edge of the image):
#   col = 32 + PX_PER_UNIT * y          y in [-0.5, 0.5] -> col in [4, 60]
#   row =  4 + PX_PER_UNIT * (x - X0)   x in [0.3, 1.3]  -> row in [4, 60]
# (the workspace keeps the gripper in the upper middle of the frame, the arm short)
# so +x (away from the robot) moves down the image and +y moves right; z (height) is shown by
# the head size and the shadow offset.
PX_PER_UNIT = 56.0
X0 = 0.3
WORKSPACE = np.array([[0.33, -0.31, 0.15], [0.97, 0.31, 0.35]])  # (min, max) of (x, y, z)
POSITION_GAIN = 0.5  # planar end-effector step per unit of planar action (real BAIR: 0.47)
POSITION_NOISE = 0.009  # std of the noise on each planar step (real: step/action corr. 0.92)
MAX_PLANAR = 0.1  # |dx|, |dy| of a planar action
LIFT_CODES = (0.0, 1.0, 4.0)  # action column 2: hold, lower, raise (a small discrete set, as
GRIP_CODES = (0.0, 1.0, 2.0)  # in BAIR); column 3: hold, close, open
Z_LOW, Z_HIGH = (0.17, 0.2), (0.27, 0.33)  # ranges of the lowered and raised heights
LIFT_RATE = 0.025  # |dz| per step while moving towards the commanded height
OBJECT_RADIUS = (3.0, 6.0)  # px
ROLL_P = 0.6  # probability that one object of a sequence starts rolling by itself
ROLL_START = (3, 22)  # step range at which it starts
ROLL_SPEED = (1.0, 2.5)  # its initial speed, px per step
Z_PUSH = 0.22  # the gripper pushes objects only while z < Z_PUSH
ARM_BASE_PX = (32.0, -14.0)  # (col, row) of the arm's root, above the top edge


def world_to_pixel(xy: np.ndarray) -> np.ndarray:
    """World (..., 2) = (x, y) -> pixel (..., 2) = (col, row), float; see the mapping above."""
    xy = np.asarray(xy, dtype=np.float64)
    return np.stack([32.0 + PX_PER_UNIT * xy[..., 1], 4.0 + PX_PER_UNIT * (xy[..., 0] - X0)], -1)


def action_delta(actions: np.ndarray) -> np.ndarray:
    """Planar world displacement (..., 2) = (dx, dy) commanded by actions (..., 4); the
    height follows the lift codes (see `actions_and_positions`)."""
    return POSITION_GAIN * np.asarray(actions, dtype=np.float64)[..., :2]


def head_halfsize(z: np.ndarray) -> np.ndarray:
    """Half side (px) of the gripper head: 3.6 at the lowest z, 5.2 at the highest (scale cue)."""
    return 3.6 + 8.0 * (np.asarray(z, dtype=np.float64) - 0.15)


def shadow_offset(z: np.ndarray) -> np.ndarray:
    """Gripper shadow offset (..., 2) in (col, row) px: 1 px at the lowest z, 6 at the highest."""
    s = 1.0 + 25.0 * (np.asarray(z, dtype=np.float64) - 0.15)
    return np.stack([0.8 * s, 0.6 * s], -1)


@dataclass
class SceneObject:
    """Appearance and hidden physics of one object (its pose lives in the trajectories)."""

    shape: str  # disk | square | triangle | bar
    radius: float  # px
    color: np.ndarray  # (3,) in [0, 1]
    color2: np.ndarray  # (3,) second texture colour
    texture: str  # plain | stripes | checker | dots
    freq: float  # texture frequency (rad/px)
    friction: float  # hidden: fraction of the gripper displacement transferred by a push
    glide: float = 0.0  # hidden: fraction of its velocity a moving object keeps per step
    slip: float = 0.0  # hidden: probability that a push glances off sideways


SHAPES = ("disk", "square", "triangle", "bar")
TEXTURES = ("plain", "stripes", "checker", "dots")


def actions_and_positions(rng: np.random.Generator, n: int) -> tuple[np.ndarray, np.ndarray]:
    """Random-walk actions (repeated over two steps) and the end-effector positions.

    Planar action: AR(1) with a weak pull to the workspace centre and occasional pauses; the
    planar step is POSITION_GAIN times it plus noise. Height: now and then a lift code (lower
    or raise) sets a new target height, which z approaches by LIFT_RATE per step; grip codes
    (close, open) are issued now and then. Columns 2 and 3 are 0 otherwise, as in BAIR.
    """
    lo, hi = WORKSPACE
    pos = np.empty((n, 3))
    pos[0] = [rng.uniform(0.42, 0.78), rng.uniform(-0.18, 0.18), rng.uniform(*Z_HIGH)]
    actions = np.zeros((n, 4))
    v = rng.normal(0.0, 0.04, 2)
    z_target = pos[0, 2]
    pause = 0
    centre = (lo[:2] + hi[:2]) / 2
    for t in range(n):
        if t % 2 == 0:
            if pause > 0:
                pause -= 1
            elif rng.random() < 0.1:
                pause = int(rng.integers(1, 3))
            if pause > 0:
                planar = np.zeros(2)
            else:
                v = 0.6 * v + rng.normal(0.0, 0.04, 2) - 0.25 * (pos[t, :2] - centre)
                v = np.clip(v, -MAX_PLANAR, MAX_PLANAR)
                planar = v
            lift = grip = 0.0
            if rng.random() < 0.2:
                lower = rng.random() < 0.6
                lift = LIFT_CODES[1] if lower else LIFT_CODES[2]
                z_target = rng.uniform(*(Z_LOW if lower else Z_HIGH))
            if rng.random() < 0.12:
                grip = GRIP_CODES[int(rng.integers(1, 3))]
            actions[t] = [planar[0], planar[1], lift, grip]
        else:
            actions[t] = actions[t - 1]
        if t + 1 < n:
            step = action_delta(actions[t]) + rng.normal(0.0, POSITION_NOISE, 2)
            dz = np.clip(z_target - pos[t, 2], -LIFT_RATE, LIFT_RATE)
            pos[t + 1] = np.clip(pos[t] + np.append(step, dz), lo, hi)
    return actions.astype(np.float32), pos.astype(np.float32)


def grip_state(actions: np.ndarray) -> np.ndarray:
    """(T,) +1 closed / -1 open as shown in frame t: the last grip code before it (open at
    first; the code of action t - 1 acts on frame t)."""
    state, out = -1.0, np.empty(len(actions))
    for t in range(len(actions)):
        out[t] = state
        code = actions[t, 3]
        state = 1.0 if code == GRIP_CODES[1] else -1.0 if code == GRIP_CODES[2] else state
    return out


def _contact_radius(z: float, obj: SceneObject) -> float:
    """Centre distance (px) below which the gripper head touches the object."""
    return float(head_halfsize(z)) + obj.radius - 0.5


def place_objects(rng: np.random.Generator, objects: list[SceneObject], gpx: np.ndarray,
                  z: np.ndarray) -> np.ndarray:
    """Initial object centres (n_obj, 2). With p=0.55 the first object is put just ahead of
    the gripper at a step where it moves while low, so a push happens in ~half the sequences."""
    n = len(objects)
    centres = np.zeros((n, 2))
    placed = 0
    if rng.random() < 0.55:
        d = np.diff(gpx, axis=0)
        speed = np.linalg.norm(d, axis=1)
        ok = np.flatnonzero((speed[:-1] > 1.2) & (z[1:-1] < Z_PUSH - 0.01))
        rng.shuffle(ok)
        for t in ok[:5]:
            r = _contact_radius(z[t + 1], objects[0])
            c = gpx[t] + d[t] / speed[t] * (r + 0.5) + rng.normal(0.0, 0.7, 2)
            earlier = np.linalg.norm(gpx[:t] - c, axis=1)  # no contact before step t
            clear = np.all(earlier > _contact_radius(0.35, objects[0]) - 1.5)
            inside = np.all((c > objects[0].radius + 1) & (c < SIZE - 1 - objects[0].radius))
            if clear and inside:
                centres[0] = c
                placed = 1
                break
    for j in range(placed, n):
        r = objects[j].radius
        for _ in range(100):
            c = rng.uniform(r + 2, SIZE - 2 - r, 2)
            far_gripper = np.linalg.norm(gpx[0] - c) > _contact_radius(0.35, objects[j]) + 1
            far_objects = all(np.linalg.norm(c - centres[k]) > r + objects[k].radius + 2
                              for k in range(j))
            if far_gripper and far_objects:
                break
        centres[j] = c
    return centres


def _rotate(v: np.ndarray, a: float) -> np.ndarray:
    return np.array([[np.cos(a), -np.sin(a)], [np.sin(a), np.cos(a)]]) @ v


def push_objects(rng: np.random.Generator, objects: list[SceneObject], start: np.ndarray,
                 gpx: np.ndarray, z: np.ndarray,
                 roll: Optional[tuple[int, int, np.ndarray]] = None
                 ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Object centres (T, n, 2), angles (T, n), push flags and self-motion flags (T, n).

    Push model, per step t -> t+1 with gripper displacement d = g[t+1] - g[t]: an object is
    touched when the gripper is low (z[t+1] < Z_PUSH), its head at t+1 overlaps the object
    (centre distance < contact radius) and it moves towards the object (d . (c - g[t]) > 0).
    A touched object moves by friction * |d| along a direction mixing the push direction (0.6)
    and the contact normal (0.4), rotated by N(0, 0.2) rad -- or, with the object's hidden slip
    probability, glancing off by 0.6-1.2 rad to a random side -- plus N(0, 0.25) px jitter, and
    turns by a small random angle. What the conditions do not tell: each object keeps the
    hidden fraction `glide` of its velocity per step after a push (it slides on, or stops
    dead), and `roll` = (object, step, velocity px/step) sets one object rolling off by itself
    at that step (keeping 0.95 of its speed per step, bouncing off the tray's edges). Objects
    that are neither pushed nor moving keep their exact position and angle.
    """
    n_frames, n = len(gpx), len(objects)
    centres = np.repeat(start[None], n_frames, axis=0)
    angles = np.repeat(rng.uniform(0, 2 * np.pi, n)[None], n_frames, axis=0)
    touched = np.zeros((n_frames, n), dtype=bool)
    moving = np.zeros((n_frames, n), dtype=bool)
    velocity = np.zeros((n, 2))
    keep = np.array([obj.glide for obj in objects])
    for t in range(n_frames - 1):
        centres[t + 1], angles[t + 1] = centres[t], angles[t]
        if roll is not None and roll[1] == t:
            velocity[roll[0]] = roll[2]
            keep[roll[0]] = 0.95
        g0, g1 = gpx[t], gpx[t + 1]
        d = g1 - g0
        step = np.linalg.norm(d)
        contact = z[t + 1] < Z_PUSH and step >= 0.05
        for j, obj in enumerate(objects):
            c = centres[t, j]
            normal = c - g1
            dist = np.linalg.norm(normal)
            lo, hi = obj.radius + 1, SIZE - 1 - obj.radius
            if contact and dist < _contact_radius(z[t + 1], obj) and np.dot(d, c - g0) > 0:
                direction = 0.6 * d / step + 0.4 * (normal / dist if dist > 1e-6 else d / step)
                if rng.random() < obj.slip:
                    a = rng.choice([-1.0, 1.0]) * rng.uniform(0.6, 1.2)
                else:
                    a = rng.normal(0.0, 0.2)
                direction = _rotate(direction / np.linalg.norm(direction), a)
                moved = c + obj.friction * step * direction + rng.normal(0.0, 0.25, 2)
                centres[t + 1, j] = np.clip(moved, lo, hi)
                angles[t + 1, j] = angles[t, j] + rng.normal(0.0, 0.12)
                velocity[j] = (centres[t + 1, j] - c) * obj.glide
                keep[j] = obj.glide
                touched[t + 1, j] = True
            elif np.linalg.norm(velocity[j]) >= 0.1:
                moved = c + velocity[j]
                for k in range(2):  # bounce off the tray's edges
                    if not lo <= moved[k] <= hi:
                        moved[k] = np.clip(2 * np.clip(moved[k], lo, hi) - moved[k], lo, hi)
                        velocity[j, k] = -velocity[j, k]
                centres[t + 1, j] = moved
                angles[t + 1, j] = angles[t, j] + 0.05 * np.linalg.norm(velocity[j])
                velocity[j] *= keep[j]
                moving[t + 1, j] = True
            else:
                velocity[j] = 0.0
    return centres, angles, touched, moving


def random_object(rng: np.random.Generator) -> SceneObject:
    """A small object of random shape, size, colours and texture, with hidden friction, glide
    (how far it slides on after a push) and slip probability."""
    hue = rng.uniform(0, 1)
    color = np.array(colorsys.hsv_to_rgb(hue, rng.uniform(0.45, 0.9), rng.uniform(0.6, 0.95)))
    hue2 = (hue + rng.uniform(0.1, 0.5)) % 1.0
    color2 = np.array(colorsys.hsv_to_rgb(hue2, rng.uniform(0.2, 0.9), rng.uniform(0.6, 0.98)))
    return SceneObject(shape=str(rng.choice(SHAPES)),
                       radius=float(rng.uniform(*OBJECT_RADIUS)),
                       color=color.astype(np.float32), color2=color2.astype(np.float32),
                       texture=str(rng.choice(TEXTURES)), freq=float(rng.uniform(1.2, 2.2)),
                       friction=float(rng.uniform(0.35, 1.0)),
                       glide=float(rng.uniform(0.0, 0.8)), slip=float(rng.uniform(0.0, 0.5)))
