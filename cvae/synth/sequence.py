"""One synthetic pushing sequence (cvae.synth): the scene drawn, moved and rendered, with the
ground truth the tests check."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from cvae.synth.physics import (N_FRAMES, ROLL_P, ROLL_SPEED, ROLL_START, actions_and_positions,
                                grip_state, place_objects, push_objects, random_object,
                                world_to_pixel)
from cvae.synth.render import draw_tray, render_gripper, render_objects

SENSOR_NOISE = 0.2  # std (in 0..255 levels) of the per-pixel camera noise of each frame
CAMERA_BLUR = 0.8  # std (px) of the Gaussian blur of the rendered frames
FLICKER = 1.3  # std (in 0..255 levels) of each frame's overall brightness jitter


@dataclass
class Sequence:
    """One simulated sequence plus the ground truth the tests check."""

    frames: np.ndarray  # uint8 (T, 64, 64, 3)
    actions: np.ndarray  # float32 (T, 4): dx, dy, lift, grip; action[2i] == action[2i+1]
    positions: np.ndarray  # float32 (T, 3): end effector (x, y, z) when frame t was taken
    gripper_px: np.ndarray  # float64 (T, 2): (col, row) of the gripper head centre
    object_px: np.ndarray  # float64 (T, n_obj, 2): (col, row) of each object centre
    touched: np.ndarray  # bool (T, n_obj): pushed by the step that led to frame t
    moving: np.ndarray  # bool (T, n_obj): moved by the step that led to frame t on its own
    # (gliding on after a push, or rolling off by itself)


def simulate(rng: np.random.Generator, n_frames: int = N_FRAMES,
             camera_noise: bool = True) -> Sequence:
    """Simulate one sequence: scene, actions, end-effector path, pushes, an object that may
    roll off by itself, rendered frames with camera noise (drawn last: without it the same
    RNG gives the same scene, noise-free)."""
    tray = draw_tray(rng)
    objects = [random_object(rng) for _ in range(int(rng.integers(1, 4)))]
    actions, positions = actions_and_positions(rng, n_frames)
    pos = positions.astype(np.float64)
    gpx = world_to_pixel(pos[:, :2])
    z = pos[:, 2]
    start = place_objects(rng, objects, gpx, z)
    roll = None
    if rng.random() < ROLL_P:
        a = rng.uniform(0, 2 * np.pi)
        roll = (int(rng.integers(len(objects))), int(rng.integers(*ROLL_START)),
                rng.uniform(*ROLL_SPEED) * np.array([np.cos(a), np.sin(a)]))
    centres, angles, touched, moving = push_objects(rng, objects, start, gpx, z, roll)
    img = np.repeat(tray[None], n_frames, axis=0)
    render_objects(img, objects, centres, angles)
    render_gripper(img, gpx, z, grip_state(actions))
    if CAMERA_BLUR > 0:  # the soft edges of a downsampled camera image
        img = ndimage.gaussian_filter(img, sigma=(0, CAMERA_BLUR, CAMERA_BLUR, 0), mode="nearest")
    if camera_noise:
        img += rng.normal(0.0, FLICKER / 255.0, (n_frames, 1, 1, 1)).astype(np.float32)
        img += rng.normal(0.0, SENSOR_NOISE / 255.0, img.shape).astype(np.float32)
    frames = np.rint(np.clip(img, 0.0, 1.0) * 255.0).astype(np.uint8)
    return Sequence(frames=frames, actions=actions, positions=positions, gripper_px=gpx,
                    object_px=centres, touched=touched, moving=moving)
