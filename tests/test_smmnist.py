"""The SM-MNIST task: SVG's motion and bounce rule, the rendered and the real-MNIST digits, the
unconditional one-channel model, and training/evaluation through the task interface."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from cvae.config import preset
from cvae.data import DataError
from cvae.model import SVG
from cvae.tasks.smmnist import data as smm
from cvae.tasks.smmnist import task as smm_task

LIM = smm.FRAME - smm.DIGIT  # positions lie in [0, LIM - 1]


@pytest.fixture(scope="module")
def digits_root(tmp_path_factory) -> Path:
    """Rendered digits, few per split (the default sizes take seconds)."""
    root = tmp_path_factory.mktemp("smmnist") / "digits"
    smm.write_digits(root, seed=0, sizes={"train": 60, "validate": 20, "test": 20})
    return root


def test_positions_stay_in_the_frame_and_turn_only_at_walls():
    pos = smm.simulate(400, 40, 2, np.random.default_rng(0))  # (n, T, digits, 2)
    assert pos.min() == 0 and pos.max() == LIM - 1  # walls are reached, never crossed
    v = np.diff(pos, axis=1)  # v[:, t] = pos[t + 1] - pos[t]
    assert np.abs(v).max() <= smm.SPEED and (v != 0).any()
    turned = (v[:, 1:] != v[:, :-1]).any(-1)  # (n, T-2, digits): motion changed at frame t+1
    wall = ((pos == 0) | (pos == LIM - 1)).any(-1)  # (n, T, digits)
    at_wall = wall[:, 1:-1] | wall[:, 2:]  # drawn at the wall then, or clamped at it next
    assert turned.sum() > 1000 and not (turned & ~at_wall).any()


def test_a_bounce_draws_a_new_direction_away_from_the_wall():
    pos = smm.simulate(4000, 30, 1, np.random.default_rng(1))[:, :, 0]  # (n, T, 2)
    for axis, wall, sign in ((0, 0, 1), (0, LIM - 1, -1), (1, 0, 1), (1, LIM - 1, -1)):
        p = sign * (pos[..., axis] - wall)  # distance from the wall, (n, T)
        # certain bounces: moving at full speed towards the wall from 1-3 pixels away, so the
        # next position lay beyond it and was clamped onto it
        bounced = (p[:, 2:-1] == 0) & (p[:, 1:-2] <= 3) & (p[:, 1:-2] - p[:, :-3] == -4)
        after = (p[:, 3:] - p[:, 2:-1])[bounced]  # the first step after the bounce
        # SVG's stochastic rule draws 1..4 away from the wall (0 where a bounce off the other
        # axis' wall at the same frame redrew it); a mirror would always give 4, a direction
        # drawn in [-4, 4] and clamped a mean of 10/9
        assert bounced.sum() > 100 and after.min() >= 0 and after.mean() > 2.0
        assert set(after.tolist()) >= {1, 2, 3, 4}


def test_render_adds_digits_and_clips_at_one():
    digits = np.full((1, 2, smm.DIGIT, smm.DIGIT), 0.6, np.float32)
    pos = np.array([[[[0, 0], [16, 16]]]])  # (n=1, T=1, 2 digits, 2): overlap 16x16
    frame = smm.render(digits, pos)[0, 0]
    assert frame[0, 0] == pytest.approx(0.6) and frame[20, 20] == 1.0 and frame[63, 63] == 0
    assert frame[40, 40] == pytest.approx(0.6) and frame[40, 5] == 0 and frame[50, 50] == 0


def test_sequences_are_deterministic_and_differ(digits_root):
    cfg = preset("smmnist-tiny")
    a = smm_task.sequences(digits_root, "test", cfg, 12)
    b = smm_task.sequences(digits_root, "test", cfg, 12)
    x, c = a.batch(np.array([0, 1, 2]), np.zeros(3, int))
    y, _ = b.batch(np.array([2, 0]), np.zeros(2, int))
    assert x.shape == (3, 12, 1, 64, 64) and c.shape == (3, 12, 0)
    assert torch.equal(x[2], y[0]) and torch.equal(x[0], y[1])
    assert not torch.equal(x[0], x[1])
    assert 0 <= float(x.min()) and float(x.max()) <= 1 and float(x.mean()) > 0.02
    later, _ = a.batch(np.array([1]), np.array([3]), seq_len=5)  # a window of sequence 1
    assert torch.equal(later[0], x[1, 3:8])
    val = smm_task.sequences(digits_root, "validate", cfg, 12).batch(np.array([0]),
                                                                     np.zeros(1, int))[0]
    assert not torch.equal(val[0], x[0])
    train = smm.Digits(smm.load_digits(digits_root, "train"), 1, "train")
    s1 = train.sample(np.random.default_rng(5), 4, 6)
    assert torch.equal(s1, train.sample(np.random.default_rng(5), 4, 6))
    assert not torch.equal(s1, train.sample(np.random.default_rng(6), 4, 6))


def test_rendered_digits_vary_and_splits_differ():
    a, labels = smm.render_glyphs(40, seed=0)
    b, _ = smm.render_glyphs(40, seed=0)
    c, _ = smm.render_glyphs(40, seed=1)
    assert a.shape == (40, 32, 32) and a.dtype == np.uint8 and np.array_equal(a, b)
    assert not np.array_equal(a, c)
    assert set(labels.tolist()) <= set(range(10)) and len(set(labels.tolist())) >= 5
    ink = a.reshape(40, -1).mean(1) / 255
    assert (ink > 0.03).all() and (ink < 0.5).all()
    assert (a[:, :2].max() == 0) and (a[:, -2:].max() == 0)  # MNIST's empty margin
    same = [i for i in range(1, 40) if labels[i] == labels[0]]  # jitter: one label, new pixels
    assert all(not np.array_equal(a[0], a[i]) for i in same)


def _write_idx(path: Path, array: np.ndarray) -> None:
    """An MNIST idx file (magic 0x0803 images / 0x0801 labels, big-endian sizes), as
    torchvision leaves it after extracting the download."""
    magic = {3: 0x0803, 1: 0x0801}[array.ndim]
    header = magic.to_bytes(4, "big") + b"".join(n.to_bytes(4, "big") for n in array.shape)
    path.write_bytes(header + array.astype(np.uint8).tobytes())


def test_real_mnist_in_torchvision_layout(tmp_path):
    raw = tmp_path / "MNIST" / "raw"
    raw.mkdir(parents=True)
    rng = np.random.default_rng(0)
    train = np.zeros((6, 28, 28), np.uint8)
    train[:, 4:24, 8:20] = rng.integers(100, 256, size=(6, 20, 12))
    test = np.zeros((4, 28, 28), np.uint8)
    test[np.arange(4), 10, 10] = [10, 20, 30, 40]
    for name, arr in (("train-images-idx3-ubyte", train), ("t10k-images-idx3-ubyte", test),
                      ("train-labels-idx1-ubyte", np.arange(6)),
                      ("t10k-labels-idx1-ubyte", np.arange(4))):
        _write_idx(raw / name, arr)
    got = smm.load_digits(tmp_path, "train")
    assert got.shape == (6, 32, 32) and got.dtype == np.uint8
    assert got[:, :4].max() == 0 and got[:, 6:26, 10:22].min() > 50  # the ink, scaled 32/28
    validate, held_out = smm.load_digits(tmp_path, "validate"), smm.load_digits(tmp_path, "test")
    assert len(validate) == len(held_out) == 2  # the test digits halved
    assert validate[0].max() < validate[1].max() < held_out[0].max() < held_out[1].max()
    cfg = preset("smmnist-tiny", data=str(tmp_path))
    data = smm_task.TrainingData(cfg, smm_task.resolve_root(cfg.data))
    x, c, _ = data.sample(np.random.default_rng(0), 0, 0)
    assert x.shape == (cfg.batch_size, cfg.n_past + cfg.n_future, 1, 64, 64) and x.max() > 0.2


def test_missing_mnist_is_one_line(tmp_path):
    with pytest.raises(DataError) as e:
        smm.load_digits(tmp_path, "train")
    assert "\n" not in str(e.value) and str(tmp_path) in str(e.value) and "MNIST" in str(e.value)
    out = subprocess.run([sys.executable, "-m", "cvae", "train", "--preset", "smmnist-tiny",
                          "--data", str(tmp_path), "--out", str(tmp_path / "run")],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 2
    assert out.stderr.strip().splitlines()[-1].startswith(f"error: {tmp_path}: no MNIST")


@pytest.mark.parametrize("learned_prior", [False, True])
def test_unconditional_model(learned_prior):
    torch.manual_seed(0)
    cfg = preset("smmnist-tiny", learned_prior=learned_prior)
    model = SVG(cfg, channels=1, cond_dim=0).eval()
    assert model.encoder.c1[0][0].in_channels == 1 and model.condition.out_dim == 0
    x = torch.rand(2, 6, 1, 64, 64)
    torch.manual_seed(1)
    a = model(x, None)
    torch.manual_seed(1)
    b = model(x, x.new_zeros(2, 6, 0))
    assert torch.equal(a.mse, b.mse) and torch.equal(a.kld, b.kld) and a.steps == 5
    torch.manual_seed(2)
    rolled = model(x, None, torch.tensor([True, False]))
    assert torch.isfinite(rolled.mse) and rolled.steps == 5
    pred = model.predict(x[:, :2], None, 4)
    assert pred.shape == (2, 4, 1, 64, 64) and 0 <= float(pred.min()) <= float(pred.max()) <= 1
    post = model.predict(x[:, :2], None, 4, x_future=x[:, 2:])
    assert post.shape == pred.shape and not torch.equal(post, pred)


def test_train_and_evaluate_through_the_task(tmp_path, digits_root):
    """`cvae train` on the task's tiny preset, then `cvae evaluate` with SVG's best-of-N and z
    from the posterior, from the command line."""
    run = tmp_path / "run"
    out = subprocess.run([sys.executable, "-m", "cvae", "train", "--preset", "smmnist-tiny",
                          "--data", str(digits_root), "--out", str(run)],
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    for name in ("prediction.gif", "grid.png", "psnr_per_frame.png", "test_metrics.json"):
        assert (run / name).is_file()
    from cvae.evaluate import evaluate_checkpoint

    one = evaluate_checkpoint(run / "checkpoint", split="validate", max_sequences=6)
    assert (one["n_past"], one["n_future"], one["n_sequences"]) == (2, 4, 6)
    best = evaluate_checkpoint(run / "checkpoint", split="validate", max_sequences=6, samples=4)
    assert best["ssim"] >= one["ssim"] - 1e-9  # the best of 4 by SSIM includes the first draw
    post = evaluate_checkpoint(run / "checkpoint", split="validate", max_sequences=6,
                               z="posterior", latent=True)
    assert len(post["kl_per_dim"]) == 4 and post["kl"] >= 0
    assert one["baseline_psnr"] == post["baseline_psnr"]  # the same sequences


def test_check_data_and_synth_commands(tmp_path, digits_root):
    out = subprocess.run([sys.executable, "-m", "cvae", "check-data", "--task", "smmnist",
                          str(digits_root)], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "train: 60 digits" in out.stdout and "copy last frame 2 -> 10 PSNR" in out.stdout
    bad = subprocess.run([sys.executable, "-m", "cvae", "check-data", "--task", "smmnist",
                          str(tmp_path)], capture_output=True, text=True, timeout=120)
    assert bad.returncode == 1 and bad.stdout.count("no MNIST") == 1
    gone = subprocess.run([sys.executable, "-m", "cvae", "check-data", "--task", "smmnist",
                           str(tmp_path / "nowhere")], capture_output=True, text=True, timeout=120)
    assert gone.returncode == 1 and "nowhere: data folder not found" in gone.stdout
