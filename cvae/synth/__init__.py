"""Embedded synthetic "robot pushing" data in the BAIR layout.

Real BAIR cannot be downloaded everywhere, so this package simulates a top-down view of a tray
with 1-3 small objects and a dark robot gripper on an arm that enters from the top edge. The
gripper follows random-walk actions (dx, dy, lift, grip), each repeated over two steps as in
BAIR; the end-effector position is their integral. Objects are pushed when the lowered gripper
head meets them, with a hidden per-object friction and random jitter, so the future depends on
the actions but is not fully determined by them. Everything is written exactly like BAIR:

    <out>/<split>/traj_<a>_to_<b>.tfrecords/<k>/{0..29}.png, actions.csv, endeffector_positions.csv

Each sequence has its own RNG seeded with (seed, split id, index), so generation is parallel and
reproducible. Use `ensure_synthetic()` for the cached default dataset, `write_dataset()` for a
custom one, or `python -m cvae synth`.

One module per job: `physics` (the world, the actions, the objects and how they are pushed),
`render` (tray, objects, gripper), `sequence` (`simulate`: one sequence with its ground truth),
`dataset` (the BAIR layout on disk, the cached default dataset), `cache` (atomic writing and
generate-once, shared with the other tasks' synthetic data), `command` (`python -m cvae synth`).
Their public names are importable from here.
"""
from cvae.synth.cache import default_cache_dir, ensure_generated, is_synthetic, write_atomically
from cvae.synth.command import register, run
from cvae.synth.dataset import (DEFAULT_SIZES, PNG_COMPRESS_LEVEL, SEQ_PER_TRAJ, SPLITS, VERSION,
                                default_path, ensure_synthetic, sequence_rng, traj_dir_name,
                                write_dataset)
from cvae.synth.physics import (ARM_BASE_PX, GRIP_CODES, LIFT_CODES, LIFT_RATE, MAX_PLANAR,
                                N_FRAMES, OBJECT_RADIUS, POSITION_GAIN, POSITION_NOISE,
                                PX_PER_UNIT, ROLL_P, ROLL_SPEED, ROLL_START, SHAPES, SIZE,
                                TEXTURES, WORKSPACE, X0, Z_HIGH, Z_LOW, Z_PUSH, SceneObject,
                                action_delta, grip_state, head_halfsize, shadow_offset,
                                world_to_pixel)
from cvae.synth.render import FLOOR_LEVEL, FLOOR_MARGIN, TRAY_BLUE_DROP, TRAY_RED, coverage
from cvae.synth.sequence import CAMERA_BLUR, FLICKER, SENSOR_NOISE, Sequence, simulate

__all__ = [
    "ARM_BASE_PX", "CAMERA_BLUR", "DEFAULT_SIZES", "FLICKER", "FLOOR_LEVEL", "FLOOR_MARGIN",
    "GRIP_CODES", "LIFT_CODES", "LIFT_RATE", "MAX_PLANAR", "N_FRAMES", "OBJECT_RADIUS",
    "PNG_COMPRESS_LEVEL", "POSITION_GAIN", "POSITION_NOISE", "PX_PER_UNIT", "ROLL_P",
    "ROLL_SPEED", "ROLL_START", "SENSOR_NOISE", "SEQ_PER_TRAJ", "SHAPES", "SIZE", "SPLITS",
    "SceneObject", "Sequence", "TEXTURES", "TRAY_BLUE_DROP", "TRAY_RED", "VERSION", "WORKSPACE",
    "X0", "Z_HIGH", "Z_LOW", "Z_PUSH", "action_delta", "coverage", "default_cache_dir",
    "default_path", "ensure_generated", "ensure_synthetic", "grip_state", "head_halfsize",
    "is_synthetic", "register", "run", "sequence_rng", "shadow_offset", "simulate",
    "traj_dir_name", "world_to_pixel", "write_atomically", "write_dataset",
]
