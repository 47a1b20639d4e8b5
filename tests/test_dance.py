"""The dance task's building blocks: the lab-layout loader, the template's modules and the
batched training step, the synthetic dancer."""
from __future__ import annotations

import copy
import hashlib
import json
import os
import random
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from cvae.data import DataError
from cvae.tasks.dance import synth
from cvae.tasks.dance.data import (DanceClips, check_dance, format_dance_report, load_dance_split,
                                   load_dance_test)
from cvae.tasks.dance.model import DanceVAE, kl_criterion
from cvae.tasks.dance.submission import write_submission


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Tiny tensors: extra threads cost more than they save on a shared CPU."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


# ------------------------------------------------------------------ loader

def _png(path: Path, rgb: tuple[int, int, int], size: tuple[int, int] = (64, 32)) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, rgb).save(path)


def _frame_rgb(n: int) -> tuple[int, int, int]:
    return (10 * n, 50, 100)


def _label_rgb(n: int) -> tuple[int, int, int]:
    return (0, 10 * n + 5, 200)


def _write_split(root: Path, split: str, n: int, size=(64, 32)) -> Path:
    """Frames whose red channel is 10 N and labels whose green is 10 N + 5, written in a
    shuffled order."""
    order = list(range(n))
    random.Random(0).shuffle(order)
    for i in order:
        _png(root / split / f"{split}_img" / f"frame{i}.png", _frame_rgb(i), size)
        _png(root / split / f"{split}_label" / f"frame{i}.png", _label_rgb(i), size)
    return root


def test_loader_orders_frames_numerically_and_pairs_labels(tmp_path):
    root = _write_split(tmp_path, "train", 12)
    clips = DanceClips(root, "train", clip_len=4)
    assert len(clips) == 3
    frames, labels = clips.batch(np.array([2, 0]))
    assert frames.shape == labels.shape == (2, 4, 3, 32, 64)
    # clip 2 is frame8..frame11 (lexical order would give frame4, frame5, frame6, frame7)
    red = (frames[0, :, 0] * 255).round().reshape(4, -1)
    assert red.min(1).values.tolist() == red.max(1).values.tolist() == [80, 90, 100, 110]
    green = (labels[0, :, 1] * 255).round().reshape(4, -1)
    assert green[:, 0].tolist() == [85, 95, 105, 115]  # each frame's own label
    assert (frames[1, :, 0, 0, 0] * 255).round().tolist() == [0, 10, 20, 30]
    f2, l2 = clips[2]
    assert torch.equal(f2, frames[0]) and torch.equal(l2, labels[0])
    assert len(DanceClips(root, "train", clip_len=4, partial=0.5)) == 1  # int(12 * .5) // 4
    assert load_dance_split(root, "train").numbers.tolist() == list(range(12))


def test_loader_resizes_to_32x64_and_refreshes_its_cache(tmp_path):
    root = _write_split(tmp_path, "val", 5, size=(128, 64))
    data = load_dance_split(root, "val")
    assert data.frames.shape == (5, 32, 64, 3)
    assert data.frames[3, 10, 20].tolist() == list(_frame_rgb(3))
    path = root / "val" / "val_img" / "frame3.png"
    _png(path, (1, 2, 3), (128, 64))
    os.utime(path, ns=(path.stat().st_atime_ns, path.stat().st_mtime_ns + 10**9))
    assert load_dance_split(root, "val").frames[3, 0, 0].tolist() == [1, 2, 3]


def _missing_label(root):
    (root / "train" / "train_label" / "frame5.png").unlink()
    return "train_label/frame5.png"


def _extra_label(root):
    _png(root / "train" / "train_label" / "frame99.png", (0, 0, 0))
    return "train_label/frame99.png"


def _odd_frame_size(root):
    _png(root / "train" / "train_img" / "frame4.png", (0, 0, 0), (32, 32))
    return "train_img/frame4.png"


def _label_size(root):
    _png(root / "train" / "train_label" / "frame2.png", (0, 0, 0), (128, 64))
    return "train_label/frame2.png"


def _corrupt(root):
    (root / "train" / "train_img" / "frame3.png").write_bytes(b"\x89PNG\r\n\x1a\nnot a png")
    return "train_img/frame3.png"


def _bad_name(root):
    _png(root / "train" / "train_img" / "img7.png", (0, 0, 0))
    return "train_img/img7.png"


@pytest.mark.parametrize("damage", [_missing_label, _extra_label, _odd_frame_size, _label_size,
                                    _corrupt, _bad_name])
def test_bad_data_is_one_line_naming_the_file(tmp_path, damage):
    root = _write_split(tmp_path, "train", 8)
    name = damage(root)
    with pytest.raises(DataError) as err:
        load_dance_split(root, "train")
    message = str(err.value)
    assert name in message and "\n" not in message
    report = check_dance(root)
    assert any(name in p for p in report["problems"])


def test_check_dance_reports_counts_and_short_validation(tmp_path):
    root = _write_split(_write_split(tmp_path, "train", 40), "val", 20)
    report = check_dance(root)
    assert report["splits"]["train"] == dict(frames=40, gaps=0, bad_frames=0,
                                             size_on_disk=[32, 64], resized=False, clips=2)
    assert report["problems"] == [f"{root / 'val' / 'val_img'}: 20 frames, the validation "
                                  "protocol needs 630"]
    assert check_dance(root, val_len=20)["problems"] == []
    text = format_dance_report(report).splitlines()
    assert text[1:3] == ["  train     40 frames with labels, 32x64, 2 clips of 16",
                         "  val       20 frames with labels, 32x64"]
    assert text[-2:] == ["1 problem(s):", f"  {report['problems'][0]}"]


# ------------------------------------------------------------------ model

TEMPLATE_COUNTS = {  # the template's modules at F 128, L 32, N 12, D_out 192
    "frame_transformation": 193_568, "label_transformation": 16_832,
    "Gaussian_Predictor": 8_289, "Decoder_Fusion": 617_768, "Generator": 749_163}


def test_parameter_counts_match_the_template():
    model = DanceVAE()
    assert model.parameter_counts() == TEMPLATE_COUNTS
    assert sum(p.numel() for p in model.parameters()) == 1_585_620
    keys = model.state_dict().keys()  # the template's names, so its checkpoints load
    assert {"frame_transformation.0.conv1.weight", "label_transformation.2.running_mean",
            "Gaussian_Predictor.6.weight", "Decoder_Fusion.0.block.1.conv_out.weight",
            "Generator.7.weight", "Generator.0.block.0.conv1.0.weight"} <= set(keys)
    assert len(keys) == 209


def test_kl_criterion_values():
    mu, logvar = torch.zeros(2, 3, 4, 5), torch.zeros(2, 3, 4, 5)
    assert kl_criterion(mu, logvar, 2).item() == 0.0
    # KL(N(1, 1) || N(0, 1)) = 1/2 per element; 120 elements over a batch of 2
    assert kl_criterion(mu + 1, logvar, 2).item() == pytest.approx(30.0)


def tiny_model(seed=0) -> DanceVAE:
    torch.manual_seed(seed)
    return DanceVAE(f_dim=16, l_dim=8, n_dim=4, d_out_dim=16)


def tiny_batch(b=3, t=5, h=8, w=16, seed=1):
    g = torch.Generator().manual_seed(seed)
    return (torch.rand(b, t, 3, h, w, generator=g), torch.rand(b, t, 3, h, w, generator=g),
            torch.randn(b, t - 1, 4, h, w, generator=g))


def lab_loop(model, frames, labels, tf, noise):
    """The lab's training step as written there: one step at a time, time-major."""
    b, t = frames.shape[:2]
    mse, kld = 0.0, 0.0
    prev = frames[:, 0]
    for i in range(1, t):
        f_prev = model.frame_transformation(prev)
        f_cur = model.frame_transformation(frames[:, i])
        l_cur = model.label_transformation(labels[:, i])
        _, mu, logvar = model.Gaussian_Predictor(f_cur, l_cur)
        z = mu + torch.exp(0.5 * logvar) * noise[:, i - 1]
        pred = model.Generator(model.Decoder_Fusion(f_prev, l_cur, z))
        mse = mse + torch.nn.functional.mse_loss(pred, frames[:, i])
        kld = kld + (-0.5 * torch.sum(1 + logvar - mu.pow(2) - logvar.exp()) / b)
        prev = torch.where(tf.view(b, 1, 1, 1), frames[:, i], pred.detach())
    return mse, kld


@pytest.mark.parametrize("chunk", [None, 3])
@pytest.mark.parametrize("tf", ["all", "none", "mixed"])
def test_step_equals_the_per_step_loop(tf, chunk):
    frames, labels, noise = tiny_batch()
    forced = {"all": torch.ones(3, dtype=torch.bool), "none": torch.zeros(3, dtype=torch.bool),
              "mixed": torch.tensor([True, False, True])}[tf]
    model = tiny_model()
    reference = copy.deepcopy(model)
    mse, kld, steps = model(frames, labels, forced if tf == "mixed" else tf == "all", noise,
                            chunk=chunk)  # 3: steps 1-3 together, then step 4
    ref_mse, ref_kld = lab_loop(reference, frames, labels, forced, noise)
    assert steps == 4
    assert mse.item() == pytest.approx(ref_mse.item(), rel=1e-5)
    assert kld.item() == pytest.approx(ref_kld.item(), rel=1e-5)
    assert kld.item() > 1.0  # a real posterior, not a trivially equal zero
    (mse + 0.3 * kld).backward()
    (ref_mse + 0.3 * ref_kld).backward()
    for (name, p), q in zip(model.named_parameters(), reference.parameters()):
        assert p.grad is not None and p.grad.abs().sum() > 0, name
        assert torch.allclose(p.grad, q.grad, rtol=1e-4, atol=1e-6), name
    # BatchNorm statistics are per step, updated in step order, as in the loop
    for (name, a), c in zip(model.named_buffers(), reference.buffers()):
        assert torch.allclose(a.float(), c.float(), atol=1e-6), name


def test_free_running_differs_from_teacher_forcing():
    frames, labels, noise = tiny_batch()
    model = tiny_model()
    forced, _, _ = model(frames, labels, True, noise)
    free, _, _ = model(frames, labels, False, noise)
    assert abs(forced.item() - free.item()) > 1e-4


def test_generate_follows_the_autoregressive_protocol():
    frames, labels, noise = tiny_batch(b=2, t=6)
    model = tiny_model().eval()
    out = model.generate(frames[:, 0], labels, z=noise, chunk=4)  # chunks of 4 and 1 steps
    assert out.shape == frames.shape and torch.equal(out[:, 0], frames[:, 0])
    prev = frames[:, 0]
    with torch.no_grad():
        for t in range(1, 6):
            prev = model.Generator(model.Decoder_Fusion(model.frame_transformation(prev),
                                                        model.label_transformation(labels[:, t]),
                                                        noise[:, t - 1]))
            assert torch.allclose(out[:, t], prev, atol=1e-5)
    torch.manual_seed(3)
    a = model.generate(frames[:, 0], labels)
    b = model.generate(frames[:, 0], labels)
    assert not torch.allclose(a[:, 1:], b[:, 1:])  # z ~ N(0, I) drawn at each call


def test_submission_has_the_lab_testers_layout(tmp_path):
    a = torch.zeros(2, 3, 2, 4)
    a[1, 2, 1, 3] = 0.5  # the last value of the second frame: channel 2, row 1, column 3
    b = torch.full((1, 3, 2, 4), 1.2)  # out of range: clipped to 255
    b[0, 0, 0, 0] = -0.1
    assert write_submission(tmp_path / "submission.csv", [a, b]) == 3
    lines = (tmp_path / "submission.csv").read_text().splitlines()
    assert lines[0] == "id," + ",".join(str(i) for i in range(24))
    rows = [list(map(int, line.split(","))) for line in lines[1:]]
    assert [r[0] for r in rows] == [0, 1, 2]
    assert rows[1][1:] == [0] * 23 + [128] and rows[0][1:] == [0] * 24
    assert rows[2][1:] == [0] + [255] * 23


# ------------------------------------------------------------------ synthetic dancer

TINY = dict(dancers=2, train_len=32, val_len=40, test=2, test_len=20)


def _digests(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha1(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def tiny_dance(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("dance") / "data"
    synth.write_dataset(out, **TINY, seed=3, progress=False)
    return out


def test_synth_writes_the_lab_layout(tiny_dance):
    root = tiny_dance
    train = sorted(p.name for p in (root / "train" / "train_img").iterdir())
    assert train == sorted(f"frame{n}.png" for n in range(64))
    assert train == sorted(p.name for p in (root / "train" / "train_label").iterdir())
    assert len(list((root / "val" / "val_img").iterdir())) == 40
    assert len(list((root / "val" / "val_label").iterdir())) == 40
    for k in ("0", "1"):
        assert [p.name for p in (root / "test" / "test_img" / k).iterdir()] == ["frame0.png"]
        assert len(list((root / "test" / "test_label" / k).iterdir())) == 20
    with Image.open(root / "train" / "train_img" / "frame63.png") as im:
        assert im.size == (64, 32) and im.mode == "RGB"
    info = json.loads((root / "SYNTH.json").read_text())
    assert info["train_segments"] == [dict(frames=[0, 31], dancer=0),
                                      dict(frames=[32, 63], dancer=1)]
    assert check_dance(root, val_len=40)["problems"] == []
    assert format_dance_report(check_dance(root, val_len=40)).splitlines()[-2:] == [
        "  test       2 sequences, first frame given, 20 pose labels each, ground truth in "
        "test/test_truth", "ok"]
    test = load_dance_test(root)
    first, labels = test.sequence(1)
    assert test.names == ["0", "1"] and first.shape == (3, 32, 64) and labels.shape[0] == 20
    seq = synth.simulate(3, "test", 1, 20, dancer=1)
    assert torch.equal(first, torch.from_numpy(seq.frames[0]).permute(2, 0, 1).float() / 255)
    # the held-out truth: every frame of the sequence, the given one first
    assert test.truth.shape == (40, 32, 64, 3) and np.array_equal(test.truth[20:], seq.frames)
    (root / "test" / "test_truth" / "1" / "frame7.png").rename(root / "frame7.png")
    try:
        with pytest.raises(DataError, match="test_truth/1/frame7.png: missing ground-truth"):
            load_dance_test(root)
    finally:
        (root / "frame7.png").rename(root / "test" / "test_truth" / "1" / "frame7.png")


def test_synth_is_deterministic_for_a_seed(tiny_dance, tmp_path):
    again = tmp_path / "again"
    synth.write_dataset(again, **TINY, seed=3, progress=False)
    assert _digests(again) == _digests(tiny_dance)
    other = tmp_path / "other"
    synth.write_dataset(other, **TINY, seed=4, progress=False)
    a, b = _digests(other), _digests(tiny_dance)
    assert a.keys() == b.keys()
    assert a["train/train_img/frame0.png"] != b["train/train_img/frame0.png"]
    with pytest.raises(FileExistsError):
        (tmp_path / "mine").mkdir()
        (tmp_path / "mine" / "notes.txt").write_text("keep")
        synth.write_dataset(tmp_path / "mine", **TINY, progress=False)


def test_label_is_aligned_with_the_figure():
    seq = synth.simulate(5, "val", 0, 60, dancer=1)
    figure = np.any(seq.frames != seq.background[None], axis=-1)  # (T, H, W)
    t, j = np.meshgrid(np.arange(60), np.arange(len(synth.JOINTS)), indexing="ij")
    col, row = np.floor(seq.joints[..., 0]).astype(int), np.floor(seq.joints[..., 1]).astype(int)
    inside = (row >= 0) & (row < 32) & (col >= 0) & (col < 64)
    assert inside.mean() > 0.9
    t, row, col = t[inside], row[inside], col[inside]
    assert figure[t, row, col].all()  # every joint lands on the dancer
    assert (seq.labels[t, row, col].max(-1) > 0).all()  # and on the stick figure
    strong = seq.labels.max(-1) > 128
    assert figure[strong].mean() > 0.99  # the stick figure lies on the dancer
    shifted = np.roll(strong, 6, axis=2)  # a misregistered label would not
    assert figure[shifted].mean() < 0.8


def test_pose_fixes_the_limbs_and_hidden_state_the_details():
    cast = synth.make_dancer(synth.dancer_rng(0, 2))
    assert cast.texture != "plain" and cast.ponytail > 0  # this dancer shows both details
    rng = synth.sequence_rng(0, "val", 0)
    q, x = synth.choreograph(rng, 64)
    joints = synth.pose_joints(cast, q, x)
    swing, phase = synth.hidden_state(rng, joints)
    frames = synth.render_frames(cast, joints, swing, phase).astype(float)
    hidden = synth.render_frames(cast, joints, swing[::-1].copy(), phase + 1.5).astype(float)
    posed = synth.render_frames(cast, joints[::-1].copy(), swing, phase).astype(float)
    by_hidden, by_pose = np.abs(frames - hidden).mean(), np.abs(frames - posed).mean()
    assert 0.05 < by_hidden < by_pose / 3
    assert np.array_equal(synth.render_labels(joints), synth.render_labels(joints.copy()))


def test_ensure_synthetic_dance_generates_once(tmp_path, monkeypatch):
    monkeypatch.setattr(synth, "DEFAULT_SIZES", dict(TINY, test=1))
    path = synth.ensure_synthetic_dance(tmp_path, seed=2, quiet=True)
    assert path == tmp_path / f"dance-synthetic-v{synth.VERSION}-seed2"
    marker = (path / "SYNTH.json").stat().st_mtime_ns
    assert synth.ensure_synthetic_dance(tmp_path, seed=2, quiet=True) == path
    assert (path / "SYNTH.json").stat().st_mtime_ns == marker  # reused, not regenerated
    assert json.loads((path / "SYNTH.json").read_text())["sizes"]["test"] == 1
    assert [p.name for p in tmp_path.iterdir()] == [path.name]  # no temporary left behind
