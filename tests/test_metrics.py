import math

import numpy as np
import pytest
import torch
from numpy.lib.stride_tricks import sliding_window_view

from cvae.metrics import PSNR_CAP, psnr, ssim


def _pair(shape=(2, 3, 3, 16, 20), seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(shape, generator=g), torch.rand(shape, generator=g)


def _reference_ssim(x: np.ndarray, y: np.ndarray, data_range: float = 1.0) -> float:
    """Slow float64 SSIM of two (C, H, W) images from weighted moments of every 11x11 window."""
    r = np.arange(11) - 5
    g = np.exp(-(r**2) / (2 * 1.5**2))
    w = np.outer(g, g) / np.outer(g, g).sum()
    c1, c2 = (0.01 * data_range) ** 2, (0.03 * data_range) ** 2
    maps = []
    for xc, yc in zip(x.astype(np.float64), y.astype(np.float64)):
        # (H-10, W-10, 11, 11): the window around every valid output pixel
        px, py = sliding_window_view(xc, (11, 11)), sliding_window_view(yc, (11, 11))
        mx, my = (px * w).sum((-2, -1)), (py * w).sum((-2, -1))
        dx, dy = px - mx[..., None, None], py - my[..., None, None]
        vx, vy = (dx**2 * w).sum((-2, -1)), (dy**2 * w).sum((-2, -1))
        cxy = (dx * dy * w).sum((-2, -1))
        maps.append((2 * mx * my + c1) * (2 * cxy + c2) / ((mx**2 + my**2 + c1) * (vx + vy + c2)))
    return float(np.mean(maps))


def test_psnr_matches_hand_computation():
    pred, target = _pair()
    out = psnr(pred, target)
    assert out.shape == (2, 3)
    for b in range(2):
        for t in range(3):
            diff = pred[b, t].numpy().astype(np.float64) - target[b, t].numpy()
            mse = float(np.mean(diff**2))
            assert out[b, t].item() == pytest.approx(10 * math.log10(1.0 / mse), abs=1e-4)


def test_psnr_data_range_scales():
    pred, target = _pair()
    scaled = psnr(255 * pred, 255 * target, data_range=255.0)
    assert torch.allclose(scaled, psnr(pred, target), atol=1e-4)


def test_psnr_perfect_frame_is_capped():
    pred, target = _pair()
    target[0, 1] = pred[0, 1]
    out = psnr(pred, target)
    assert out[0, 1].item() == pytest.approx(PSNR_CAP)
    assert torch.isfinite(out).all() and (out[1] < PSNR_CAP).all()


def test_ssim_identical_is_one():
    pred, _ = _pair()
    assert torch.allclose(ssim(pred, pred), torch.ones(2, 3), atol=1e-6)


def test_ssim_decreases_with_noise():
    g = torch.Generator().manual_seed(1)
    clean = torch.rand(1, 1, 3, 8, 8, generator=g)
    clean = torch.nn.functional.interpolate(clean[0], size=(32, 32), mode="bilinear")[None]
    noise = torch.randn(clean.shape, generator=g)
    levels = (0.0, 0.02, 0.05, 0.1, 0.2, 0.4)
    scores = [ssim((clean + s * noise).clamp(0, 1), clean).item() for s in levels]
    assert scores[0] == pytest.approx(1.0, abs=1e-6)
    assert all(a > b for a, b in zip(scores, scores[1:])), scores


@pytest.mark.parametrize("data_range", [1.0, 255.0])
def test_ssim_matches_reference(data_range):
    pred, target = _pair()
    target = (0.7 * pred + 0.3 * target) * data_range  # correlated, so SSIM is far from 0
    pred = pred * data_range
    out = ssim(pred, target, data_range=data_range)
    expected = [[_reference_ssim(pred[b, t].numpy(), target[b, t].numpy(), data_range)
                 for t in range(3)] for b in range(2)]
    assert np.allclose(out.numpy(), expected, atol=1e-4, rtol=0)


@pytest.mark.parametrize("metric", [psnr, ssim])
def test_symmetric(metric):
    pred, target = _pair()
    assert torch.allclose(metric(pred, target), metric(target, pred), atol=1e-6)


@pytest.mark.parametrize("metric", [psnr, ssim])
def test_half_precision_inputs_score_in_float32(metric):
    pred, target = _pair()
    out = metric(pred.half(), target.half())
    assert out.dtype == torch.float32
    assert torch.allclose(out, metric(pred.half().float(), target.half().float()))


@pytest.mark.parametrize("metric", [psnr, ssim])
@pytest.mark.parametrize("shapes", [((3, 3, 16, 16), (3, 3, 16, 16)),  # 4-D
                                    ((1, 2, 3, 16, 16), (1, 3, 3, 16, 16))])  # mismatched
def test_shape_errors(metric, shapes):
    with pytest.raises(ValueError, match="B, T, C, H, W"):
        metric(torch.rand(shapes[0]), torch.rand(shapes[1]))


def test_ssim_rejects_frames_smaller_than_window():
    with pytest.raises(ValueError, match="11x11"):
        ssim(torch.rand(1, 1, 3, 8, 16), torch.rand(1, 1, 3, 8, 16))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("metric", [psnr, ssim])
def test_cuda_matches_cpu(metric):
    pred, target = _pair()
    assert torch.allclose(metric(pred.cuda(), target.cuda()).cpu(), metric(pred, target), atol=1e-4)
