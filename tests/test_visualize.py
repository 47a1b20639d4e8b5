import numpy as np
import pytest
import torch
from PIL import Image, ImageSequence

from cvae.visualize import (
    CONTEXT_COLOR, PAD, plot_curves, plot_psnr_per_frame, save_gif, save_grid, save_strip, to_uint8,
)

T, H, W = 5, 12, 16


def _frames(seed: int) -> torch.Tensor:
    """Float (T, 3, H, W) frames with few distinct colours, so GIF palettes stay lossless."""
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 3, (T, 3, H, W), generator=g).float() / 2


def _as_uint8(frames: torch.Tensor) -> np.ndarray:
    return (frames.permute(0, 2, 3, 1).numpy() * 255).round().astype(np.uint8)


def _gif_frames(path) -> list[np.ndarray]:
    with Image.open(path) as im:
        return [np.asarray(frame.convert("RGB")) for frame in ImageSequence.Iterator(im)]


def _png(path) -> np.ndarray:
    with Image.open(path) as im:
        return np.asarray(im.convert("RGB"))


def test_to_uint8_accepts_both_layouts_and_rejects_others():
    frames = _frames(0)
    assert np.array_equal(to_uint8(frames), _as_uint8(frames))
    assert np.array_equal(to_uint8(_as_uint8(frames)), _as_uint8(frames))
    assert np.array_equal(to_uint8(frames.bfloat16()), _as_uint8(frames))  # AMP outputs
    assert to_uint8(torch.full((1, 3, 2, 2), 2.0)).max() == 255  # clipped to [0, 1]
    for bad in (frames.permute(0, 2, 3, 1), _as_uint8(frames)[0], frames[:0]):
        with pytest.raises(ValueError, match="T, 3, H, W"):
            to_uint8(bad)


@pytest.mark.parametrize("scale", [1, 2])
def test_gif_frames_width_and_loop(tmp_path, scale):
    cols = {"ground truth": _frames(0), "prediction": _frames(1)}
    path = save_gif(tmp_path / "a" / "pred.gif", cols, fps=5, n_past=2, scale=scale)
    frames = _gif_frames(path)
    assert len(frames) == T
    assert frames[0].shape[1] == 2 * (W * scale + 2 * PAD)
    assert frames[0].shape[0] > H * scale + 2 * PAD  # label row on top
    with Image.open(path) as im:
        assert im.info["loop"] == 0 and im.info["duration"] == 200
    # the frames themselves come back unchanged, bottom-aligned under the labels
    top, left = frames[0].shape[0] - PAD - H * scale, PAD
    for t, frame in enumerate(frames):
        shown = frame[top:top + H * scale:scale, left:left + W * scale:scale]
        assert np.array_equal(shown, _as_uint8(_frames(0))[t])


def test_gif_float_and_uint8_inputs_agree(tmp_path):
    cols = {"gt": _frames(0), "pred": _frames(1)}
    a = save_gif(tmp_path / "f.gif", cols, n_past=1)
    b = save_gif(tmp_path / "u.gif", {k: _as_uint8(v) for k, v in cols.items()}, n_past=1)
    assert all(np.array_equal(x, y) for x, y in zip(_gif_frames(a), _gif_frames(b)))


def test_gif_marks_context_frames_only(tmp_path):
    cols = {"gt": _frames(0), "pred": _frames(1)}
    plain = _gif_frames(save_gif(tmp_path / "0.gif", cols, n_past=0))
    marked = _gif_frames(save_gif(tmp_path / "2.gif", cols, n_past=2))
    changed = [not np.array_equal(p, m) for p, m in zip(plain, marked)]
    assert changed == [True, True, False, False, False]
    assert tuple(marked[0][-1, 0]) == CONTEXT_COLOR  # bottom-left corner: first column's border


def test_gif_rejects_mismatched_sequences(tmp_path):
    with pytest.raises(ValueError, match="differ"):
        save_gif(tmp_path / "x.gif", {"gt": _frames(0), "pred": _frames(1)[:-1]})


def test_grid_layout_and_inputs(tmp_path):
    gt, pred = _frames(0), _frames(1)
    rows = {"ground truth": gt, "prediction": pred, "|difference|": (gt - pred).abs()}
    grid = _png(save_grid(tmp_path / "grid.png", rows, n_past=2, scale=2))
    cell_w, cell_h = W * 2 + 2 * PAD, H * 2 + 2 * PAD
    assert grid.shape[0] > 3 * cell_h and grid.shape[1] > T * cell_w  # header row and label column
    # the last row, last column holds the last difference frame
    last = grid[-cell_h + PAD:-PAD:2, -cell_w + PAD:-PAD:2]
    assert np.array_equal(last, to_uint8(rows["|difference|"])[-1])
    as_uint8 = {k: _as_uint8(v) for k, v in rows.items()}
    assert np.array_equal(_png(save_grid(tmp_path / "u.png", as_uint8, n_past=2, scale=2)), grid)


def test_grid_marks_context_columns_only(tmp_path):
    rows = {"gt": _frames(0), "pred": _frames(1)}
    plain = _png(save_grid(tmp_path / "0.png", rows, n_past=0))
    marked = _png(save_grid(tmp_path / "2.png", rows, n_past=2))
    cols = np.nonzero((plain != marked).any(axis=(0, 2)))[0]
    cell_w = W + 2 * PAD
    assert len(cols) and cols.max() < plain.shape[1] - (T - 2) * cell_w  # first two columns only


def test_strip(tmp_path):
    frames = _frames(0)
    strip = _png(save_strip(tmp_path / "s.png", frames, scale=2, every=2))
    assert strip.shape == (2 * H + 2 * PAD, 3 * (2 * W + 2 * PAD), 3)  # frames 0, 2, 4
    assert np.array_equal(strip[PAD:-PAD:2, PAD:PAD + 2 * W:2], _as_uint8(frames)[0])
    from_uint8 = _png(save_strip(tmp_path / "u.png", _as_uint8(frames), scale=2, every=2))
    assert np.array_equal(from_uint8, strip)


def _history(n=12, diverged=False):
    rows = [{"epoch": e, "loss": 0.5 / e, "mse": 0.4 / e, "kld": 10.0 ** -(e / 3),
             "beta": min(1.0, e / 6) * 1e-4, "tfr": max(0.0, 1 - e / 10), "val_psnr": 18 + e}
            for e in range(1, n + 1)]
    rows[3]["val_psnr"] = None  # not validated that epoch
    del rows[4]["kld"]
    if diverged:
        rows.append({"epoch": n + 1, "loss": float("nan"), "val_psnr": 0.0, "diverged": True})
    return rows


@pytest.mark.parametrize("diverged", [False, True])
def test_plot_curves(tmp_path, diverged):
    path = plot_curves(tmp_path / "c" / "curves.png", _history(diverged=diverged), title="run")
    image = _png(path)
    assert image.shape[0] > 300 and image.shape[1] > 300
    assert (image < 128).any() and (image > 128).any()  # something is drawn on a light background


def test_plot_curves_partial_history(tmp_path):
    image = _png(plot_curves(tmp_path / "p.png", [{"loss": 1.0}, {"loss": 0.5, "val_psnr": 20.0}]))
    assert image.size > 0


def test_plot_curves_rejects_empty_history(tmp_path):
    with pytest.raises(ValueError, match="empty"):
        plot_curves(tmp_path / "e.png", [])


def test_plot_psnr_per_frame(tmp_path):
    curves = {"model": [25.0, 24.0, 23.0], "copy last frame": [22.0, 20.0, 19.0]}
    image = _png(plot_psnr_per_frame(tmp_path / "psnr.png", curves, n_past=2, title="test"))
    assert image.shape[0] > 200 and (image < 128).any()
