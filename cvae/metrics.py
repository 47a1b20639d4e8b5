"""Per-frame image quality metrics of predicted videos: PSNR and SSIM.

Both take `pred` and `target` shaped (B, T, C, H, W) with values in [0, data_range] and return one
score per frame, shaped (B, T), so callers can average over sequences, over time, or report a
per-timestep curve. They run on whatever device the inputs live on and compute in at least float32
(half-precision inputs from AMP are upcast).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

PSNR_CAP = 100.0  # dB reported for a perfect frame (mse = 0), so averages stay finite
SSIM_WINDOW = 11  # Gaussian window side (Wang et al. 2004)
SSIM_SIGMA = 1.5  # Gaussian window standard deviation
SSIM_K1 = 0.01
SSIM_K2 = 0.03
SVG_SSIM_WINDOW = 7  # uniform window of skimage's compare_ssim, used by SVG's eval_seq


def _check(pred: torch.Tensor, target: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Check pred and target are (B, T, C, H, W) of one shape; return them as float32 or wider."""
    if pred.dim() != 5 or pred.shape != target.shape:
        raise ValueError(
            f"expected pred and target of equal shape (B, T, C, H, W), got {tuple(pred.shape)} "
            f"and {tuple(target.shape)}"
        )
    dtype = torch.promote_types(torch.promote_types(pred.dtype, target.dtype), torch.float32)
    return pred.to(dtype), target.to(dtype)


def psnr(pred: torch.Tensor, target: torch.Tensor, data_range: float = 1.0) -> torch.Tensor:
    """Peak signal-to-noise ratio of each frame, (B, T), in dB.

    10 * log10(data_range^2 / mse) with the mse taken over C, H and W; capped at `PSNR_CAP`
    (100 dB), which is what a perfect frame scores.
    """
    pred, target = _check(pred, target)
    mse = (pred - target).pow(2).mean(dim=(2, 3, 4))  # (B, T)
    floor = data_range**2 * 10 ** (-PSNR_CAP / 10)  # the mse at which psnr == PSNR_CAP
    return 10 * torch.log10(data_range**2 / mse.clamp_min(floor))


def _gaussian_window(groups: int, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """Normalized 2-D Gaussian window, one copy per conv group: (groups, 1, 11, 11)."""
    x = torch.arange(SSIM_WINDOW, dtype=dtype, device=device) - (SSIM_WINDOW - 1) / 2
    g = torch.exp(-(x**2) / (2 * SSIM_SIGMA**2))
    g = g / g.sum()
    return torch.outer(g, g).expand(groups, 1, SSIM_WINDOW, SSIM_WINDOW).contiguous()


def ssim(pred: torch.Tensor, target: torch.Tensor, data_range: float = 1.0,
         kind: str = "finn") -> torch.Tensor:
    """Structural similarity of each frame, (B, T) (Wang et al. 2004).

    kind "finn" (default): local statistics from an 11x11 Gaussian window (sigma 1.5) applied
    per channel as a 'valid' convolution (no padding), population (not sample) covariances,
    data range 1; the SSIM map averaged over channels and pixels. This is `finn_ssim` of the SVG
    code base (used by its `finn_eval_seq`) and the lab's SSIM; skimage's
    `structural_similarity(..., gaussian_weights=True, use_sample_covariance=False)`.
    kind "svg": what SVG's own `eval_seq` computes, skimage's `compare_ssim` defaults on float
    frames: a 7x7 uniform window, sample covariances (49/48) and data range 2 (the float dtype
    range [-1, 1]), `data_range` ignored. Frames must be at least window x window.
    """
    if kind not in ("finn", "svg"):
        raise ValueError(f"ssim kind={kind!r}: expected 'finn' or 'svg'")
    pred, target = _check(pred, target)
    b, t, c, h, w = pred.shape
    size = SSIM_WINDOW if kind == "finn" else SVG_SSIM_WINDOW
    if h < size or w < size:
        raise ValueError(f"ssim needs frames of at least {size}x{size}, got {h}x{w}")
    x = pred.reshape(b * t, c, h, w)  # (B*T, C, H, W): one image per frame
    y = target.reshape(b * t, c, h, w)
    # Filter the five moment images of every channel in one 'valid' pass:
    # (B*T, 5C, H, W) -> (B*T, 5C, H-size+1, W-size+1).
    moments = torch.cat([x, y, x * x, y * y, x * y], dim=1)
    if kind == "finn":
        filtered = F.conv2d(moments, _gaussian_window(5 * c, x.dtype, x.device), groups=5 * c)
        cov_norm = 1.0
    else:
        filtered = F.avg_pool2d(moments, size, stride=1)
        cov_norm, data_range = size * size / (size * size - 1), 2.0
    mu_x, mu_y, e_xx, e_yy, e_xy = filtered.chunk(5, dim=1)
    var_x = cov_norm * (e_xx - mu_x**2)
    var_y = cov_norm * (e_yy - mu_y**2)
    cov_xy = cov_norm * (e_xy - mu_x * mu_y)

    c1 = (SSIM_K1 * data_range) ** 2
    c2 = (SSIM_K2 * data_range) ** 2
    ssim_map = ((2 * mu_x * mu_y + c1) * (2 * cov_xy + c2)) / (
        (mu_x**2 + mu_y**2 + c1) * (var_x + var_y + c2)
    )
    return ssim_map.mean(dim=(1, 2, 3)).reshape(b, t)

