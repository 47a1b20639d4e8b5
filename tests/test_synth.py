"""cvae/synth/: determinism, BAIR layout, dynamics (actions -> positions -> pixels), pushes."""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from cvae import synth
from cvae.synth import dataset as synth_dataset

SIZES = dict(train=3, validate=2, test=2)


@pytest.fixture(scope="module")
def seqs() -> list[synth.Sequence]:
    return [synth.simulate(np.random.default_rng([7, 0, i])) for i in range(24)]


@pytest.fixture(scope="module")
def clean() -> list[synth.Sequence]:
    """The same scenes without camera noise."""
    return [synth.simulate(np.random.default_rng([7, 0, i]), camera_noise=False)
            for i in range(24)]


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("synth") / "data"
    return out, synth.write_dataset(out, **SIZES, seed=0, workers=1, progress=False)


def _files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in root.rglob("*") if p.is_file()}


def _dist_to_segment(p: np.ndarray, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Distance of points p (N, 2) to the segment a-b."""
    ab = b - a
    h = np.clip(((p - a) @ ab) / max(ab @ ab, 1e-9), 0.0, 1.0)
    return np.linalg.norm(p - a - h[:, None] * ab, axis=1)


def _dark_centroid(frame: np.ndarray) -> tuple[np.ndarray, int]:
    """(col, row) centroid of the very dark pixels (the gripper head) and their count."""
    rows, cols = np.nonzero(frame.max(-1) < 40)
    return np.array([cols.mean(), rows.mean()]) if len(rows) else np.full(2, np.nan), len(rows)


def test_shapes_and_dtypes(seqs):
    for s in seqs:
        n = s.object_px.shape[1]
        assert s.frames.shape == (30, 64, 64, 3) and s.frames.dtype == np.uint8
        assert s.actions.shape == (30, 4) and s.actions.dtype == np.float32
        assert s.positions.shape == (30, 3) and s.positions.dtype == np.float32
        assert s.gripper_px.shape == (30, 2)
        assert 1 <= n <= 3 and s.object_px.shape == (30, n, 2) and s.touched.shape == (30, n)
        assert s.moving.shape == (30, n)
        assert not s.touched[0].any() and not s.moving[0].any()


def test_simulate_is_deterministic_per_seed():
    a, b = (synth.simulate(np.random.default_rng([3, 1, 5])) for _ in range(2))
    c = synth.simulate(np.random.default_rng([4, 1, 5]))
    for field in ("frames", "actions", "positions", "object_px", "touched", "moving"):
        np.testing.assert_array_equal(getattr(a, field), getattr(b, field))
    assert not np.array_equal(a.frames, c.frames)
    assert not np.array_equal(a.actions, c.actions)


def test_world_to_pixel_mapping():
    np.testing.assert_allclose(synth.world_to_pixel([synth.X0, -0.5]), [4.0, 4.0])
    np.testing.assert_allclose(synth.world_to_pixel([synth.X0 + 1.0, 0.5]), [60.0, 60.0])
    # +x (away from the robot) moves down the image (row), +y moves right (col)
    np.testing.assert_allclose(synth.world_to_pixel([0.6, 0.01]) - synth.world_to_pixel([0.6, 0.0]),
                               [synth.PX_PER_UNIT * 0.01, 0.0])
    np.testing.assert_allclose(synth.world_to_pixel([0.61, 0.0]) - synth.world_to_pixel([0.6, 0.0]),
                               [0.0, synth.PX_PER_UNIT * 0.01])


def test_actions_repeat_over_two_steps(seqs):
    for s in seqs:
        np.testing.assert_array_equal(s.actions[0::2], s.actions[1::2])
        assert np.abs(s.actions[:, :2]).max() <= synth.MAX_PLANAR + 1e-7
        assert set(np.unique(s.actions[:, 2])) <= set(synth.LIFT_CODES)  # discrete, as BAIR's
        assert set(np.unique(s.actions[:, 3])) <= set(synth.GRIP_CODES)
    # random-walk actions with occasional pauses
    planar = np.concatenate([s.actions[::2, :2] for s in seqs])
    paused = np.all(planar == 0, axis=1).mean()
    assert 0.03 < paused < 0.4
    assert np.corrcoef(planar[:-1, 0], planar[1:, 0])[0, 1] < 0.95


def test_positions_integrate_actions(seqs):
    lo, hi = synth.WORKSPACE
    for s in seqs:
        pos = s.positions.astype(np.float64)
        assert np.all(pos >= lo - 1e-6) and np.all(pos <= hi + 1e-6)
        residual = pos[1:, :2] - pos[:-1, :2] - synth.action_delta(s.actions[:-1])
        free = np.all((pos[1:] > lo + 1e-6) & (pos[1:] < hi - 1e-6), axis=1)  # not clipped
        assert free.mean() > 0.5
        assert np.abs(residual[free]).max() < 6 * synth.POSITION_NOISE
        assert np.abs(np.diff(pos[:, 2])).max() <= synth.LIFT_RATE + 1e-6
    # BAIR's planar step is about half the action (least squares 0.47, correlation 0.92)
    a = np.concatenate([s.actions[:-1, :2].ravel() for s in seqs])
    d = np.concatenate([np.diff(s.positions[:, :2], axis=0).ravel() for s in seqs])
    assert 0.4 < (a @ d) / (a @ a) < 0.55 and 0.85 < np.corrcoef(a, d)[0, 1] < 0.97


def test_gripper_pixels_follow_actions(seqs):
    expected, moved = [], []
    for s in seqs:
        np.testing.assert_allclose(s.gripper_px, synth.world_to_pixel(s.positions[:, :2]))
        d = synth.action_delta(s.actions[:-1])
        expected.append(synth.PX_PER_UNIT * d[:, [1, 0]])  # (dy, dx) -> (dcol, drow)
        moved.append(np.diff(s.gripper_px, axis=0))
    expected, moved = np.concatenate(expected), np.concatenate(moved)
    for k in range(2):
        assert np.corrcoef(expected[:, k], moved[:, k])[0, 1] > 0.85
    speed = np.linalg.norm(moved, axis=1)
    assert 1.0 < np.median(speed) < 4.0  # visible but BAIR-like motion
    assert np.mean(speed > 0.5) > 0.6


def test_rendered_gripper_moves_with_actions(seqs):
    """The darkest blob (the gripper head) sits at gripper_px and moves as the action says."""
    shifts, expected = [], []
    for s in seqs:
        for t in range(29):
            (c0, n0), (c1, n1) = _dark_centroid(s.frames[t]), _dark_centroid(s.frames[t + 1])
            assert n0 > 15
            assert np.linalg.norm(c0 - s.gripper_px[t]) < 3.0
            step = synth.PX_PER_UNIT * synth.action_delta(s.actions[t])[[1, 0]]
            moved = np.linalg.norm(s.gripper_px[t + 1] - s.gripper_px[t])
            if np.linalg.norm(step) > 1.5 and moved > 1.0:  # not stuck at the workspace edge
                shifts.append(c1 - c0)
                expected.append(step)
    shifts, expected = np.array(shifts), np.array(expected)
    assert len(shifts) > 100
    norms = np.linalg.norm(shifts, axis=1) * np.linalg.norm(expected, axis=1)
    cos = np.sum(shifts * expected, 1) / norms
    assert np.mean(cos > 0.5) > 0.9
    for k in range(2):
        assert np.corrcoef(shifts[:, k], expected[:, k])[0, 1] > 0.8


def test_untouched_objects_are_static(clean):
    """Without a push or an object moving on its own nothing but the gripper and its shadow
    changes, pixel for pixel (without camera noise; the camera blur spreads edges by 3 px)."""
    reach = 1.4 * float(synth.head_halfsize(0.35)) + 5.0 + 3.0
    rows, cols = np.mgrid[0:64, 0:64]
    checked = far = 0
    for s in clean:
        base = np.array(synth.ARM_BASE_PX)
        for t in range(1, 30):
            moved = np.any(s.object_px[t] != s.object_px[t - 1], axis=-1)
            np.testing.assert_array_equal(moved, s.touched[t] | s.moving[t])
            if moved.any():
                continue
            changed = np.any(s.frames[t] != s.frames[t - 1], axis=-1)
            p = np.stack([cols[changed], rows[changed]], 1).astype(np.float64)
            dist = np.full(len(p), np.inf)
            for k in (t - 1, t):
                for off in (np.zeros(2), synth.shadow_offset(s.positions[k, 2])):
                    dist = np.minimum(dist, _dist_to_segment(p, base + off, s.gripper_px[k] + off))
            assert np.all(dist <= reach), f"pixels changed {dist.max():.1f} px from the gripper"
            checked += 1
            far += np.sum(~changed) > 1000
    assert checked > 200 and far == checked


def test_camera_noise_changes_most_pixels_slightly(seqs, clean):
    for s, c in zip(seqs[:4], clean[:4]):
        diff = s.frames.astype(int) - c.frames.astype(int)
        assert np.abs(diff).mean() < 2.5 and np.abs(diff).max() <= 12
        step = np.abs(np.diff(s.frames.astype(int), axis=0)).max(-1)
        assert 0.8 < (step > 0).mean() < 0.99


def test_objects_roll_and_glide_where_the_conditions_do_not_say(seqs):
    """What the latent has to carry: an object rolling off by itself at a random step in
    about ROLL_P of the sequences, and objects sliding on after a push by a hidden amount."""
    rolled = [s for s in seqs if (s.moving & ~np.cumsum(s.touched, 0).astype(bool)).any()]
    assert 0.3 < len(rolled) / len(seqs) < 0.9
    starts = {int(np.argmax((s.moving & ~np.cumsum(s.touched, 0).astype(bool)).any(1)))
              for s in rolled}
    assert len(starts) > 3  # at different steps
    glided = sum(bool((s.moving[1:] & s.touched[:-1]).any()) for s in seqs)
    assert glided >= 1


def test_pushes_move_objects_only_when_low(seqs):
    pushed = [s for s in seqs if s.touched.any()]
    assert 0.25 <= len(pushed) / len(seqs) <= 0.9
    along = []
    for s in pushed:
        t, j = np.nonzero(s.touched)
        assert np.all(s.positions[t, 2] < synth.Z_PUSH)
        # the head overlapped the object (radius <= 6 px) before it moved
        assert np.all(np.linalg.norm(s.object_px[t - 1, j] - s.gripper_px[t], axis=-1)
                      < synth.head_halfsize(s.positions[t, 2]) + 6.0)
        obj_step = s.object_px[t, j] - s.object_px[t - 1, j]
        grip_step = s.gripper_px[t] - s.gripper_px[t - 1]
        along.append(np.sum(obj_step * grip_step, -1) > 0)
    # objects move roughly along the gripper's motion (jitter and the tray edge aside)
    assert np.mean(np.concatenate(along)) > 0.8


def test_traj_dir_names():
    assert synth.traj_dir_name(0, 1024) == "traj_0_to_255.tfrecords"
    assert synth.traj_dir_name(300, 1024) == "traj_256_to_511.tfrecords"
    assert synth.traj_dir_name(1023, 1024) == "traj_768_to_1023.tfrecords"
    assert synth.traj_dir_name(257, 300) == "traj_256_to_299.tfrecords"
    assert synth.traj_dir_name(2, 3) == "traj_0_to_2.tfrecords"


def test_layout(dataset):
    root, stats = dataset
    assert sorted(p.name for p in root.iterdir()) == ["SYNTH.json", "test", "train", "validate"]
    assert not list(root.parent.glob(".*tmp*"))  # the temporary directory is gone
    info = json.loads((root / "SYNTH.json").read_text())
    assert info["seed"] == 0 and info["version"] == synth.VERSION and info["sizes"] == SIZES
    assert stats["sequences"] == 7 and stats["bytes"] > 7 * 30 * 1000 and stats["disk_bytes"] > 0
    for split, n in SIZES.items():
        traj = root / split / f"traj_0_to_{n - 1}.tfrecords"
        assert sorted(p.name for p in (root / split).iterdir()) == [traj.name]
        assert sorted(int(p.name) for p in traj.iterdir()) == list(range(n))
        for seq in traj.iterdir():
            names = {p.name for p in seq.iterdir()}
            csvs = {"actions.csv", "endeffector_positions.csv"}
            assert names == {f"{t}.png" for t in range(30)} | csvs
            assert np.loadtxt(seq / "actions.csv", delimiter=",").shape == (30, 4)
            assert np.loadtxt(seq / "endeffector_positions.csv", delimiter=",").shape == (30, 3)
            with Image.open(seq / "0.png") as im:
                assert im.mode == "RGB" and im.size == (64, 64)


def test_files_hold_the_simulation(dataset):
    root, _ = dataset
    seq_dir = root / "train" / "traj_0_to_2.tfrecords" / "1"
    s = synth.simulate(synth.sequence_rng(0, "train", 1))
    frames = np.stack([np.asarray(Image.open(seq_dir / f"{t}.png")) for t in range(30)])
    np.testing.assert_array_equal(frames, s.frames)
    first = (seq_dir / "actions.csv").read_text().splitlines()[0].split(",")
    assert len(first) == 4 and all("e" in v for v in first)  # full precision, no header
    actions = np.loadtxt(seq_dir / "actions.csv", delimiter=",").astype(np.float32)
    positions = np.loadtxt(seq_dir / "endeffector_positions.csv", delimiter=",").astype(np.float32)
    np.testing.assert_array_equal(actions, s.actions)
    np.testing.assert_array_equal(positions, s.positions)


def test_write_dataset_is_deterministic(dataset, tmp_path):
    root, _ = dataset
    again = synth.write_dataset(tmp_path / "again", **SIZES, seed=0, workers=2, progress=False)
    assert _files(Path(again["path"])) == _files(root)  # a process pool writes the same bytes
    other = synth.write_dataset(tmp_path / "other", **SIZES, seed=1, workers=1, progress=False)
    a, b = _files(root), _files(Path(other["path"]))
    assert a.keys() == b.keys()
    assert a["train/traj_0_to_2.tfrecords/0/5.png"] != b["train/traj_0_to_2.tfrecords/0/5.png"]


def test_write_dataset_replaces_only_synthetic_output(tmp_path):
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("keep me")
    with pytest.raises(FileExistsError):
        synth.write_dataset(foreign, train=1, validate=0, test=0, progress=False)
    assert (foreign / "notes.txt").read_text() == "keep me"
    out = tmp_path / "out"
    synth.write_dataset(out, train=2, validate=0, test=0, seed=0, progress=False)
    synth.write_dataset(out, train=1, validate=1, test=0, seed=0, progress=False)
    sizes = json.loads((out / "SYNTH.json").read_text())["sizes"]
    assert sizes == dict(train=1, validate=1, test=0)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["foreign", "out"]


def _cli(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    synth.register(parser.add_subparsers(dest="command"))
    return parser.parse_args(argv)


def test_cli(tmp_path, capsys):
    args = _cli(["synth"])
    assert (args.train, args.validate, args.test, args.seed) == (1024, 128, 256, 0)
    assert args.out is None and args.func is synth.run
    out = tmp_path / "cli"
    argv = ["synth", "--out", str(out), "--train", "2", "--validate", "1", "--test", "0",
            "--seed", "3"]
    assert synth.run(_cli(argv + ["--workers", "1"])) == 0
    assert "MB on disk" in capsys.readouterr().err
    assert json.loads((out / "SYNTH.json").read_text())["seed"] == 3
    assert synth.run(_cli(argv)) == 0  # a previous synth output may be overwritten
    capsys.readouterr()
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "x").write_text("")
    assert synth.run(_cli(["synth", "--out", str(foreign)])) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and str(foreign) in err[0]
    with pytest.raises(SystemExit):
        _cli(["synth", "--train", "-1"])


def test_ensure_synthetic_generates_once(tmp_path, monkeypatch):
    monkeypatch.setattr(synth_dataset, "DEFAULT_SIZES", dict(train=2, validate=1, test=1))
    monkeypatch.setenv("CVAE_CACHE", str(tmp_path / "cache"))
    assert synth.default_cache_dir() == tmp_path / "cache"
    path = synth.ensure_synthetic(quiet=True)
    assert path == tmp_path / "cache" / f"synthetic-v{synth.VERSION}-seed0"
    sizes = json.loads((path / "SYNTH.json").read_text())["sizes"]
    assert sizes == dict(train=2, validate=1, test=1)

    def fail(*args, **kwargs):
        raise AssertionError("generated twice")

    monkeypatch.setattr(synth_dataset, "_generate", fail)
    assert synth.ensure_synthetic(quiet=True) == path


def test_ensure_synthetic_survives_a_race(tmp_path, monkeypatch):
    """When another process finishes first, the loser keeps the winner's copy and cleans up."""
    monkeypatch.setattr(synth_dataset, "DEFAULT_SIZES", dict(train=1, validate=1, test=0))
    generate = synth_dataset._generate

    def racing(root, sizes, seed, workers, progress):
        stats = generate(root, sizes, seed, workers, progress)
        generate(synth.default_path(tmp_path, seed), sizes, seed, workers, progress)  # the winner
        return stats

    monkeypatch.setattr(synth_dataset, "_generate", racing)
    path = synth.ensure_synthetic(tmp_path, seed=2, quiet=True)
    assert synth.is_synthetic(path)
    assert sorted(p.name for p in tmp_path.iterdir()) == [path.name]
