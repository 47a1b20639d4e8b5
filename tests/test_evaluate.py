import json

import numpy as np
import pytest
import torch
from PIL import Image

from cvae import checkpoint
from cvae.__main__ import main
from cvae.config import preset
from cvae.evaluate import evaluate_checkpoint
from cvae.metrics import psnr
from cvae.train import fit


@pytest.fixture(scope="module")
def tiny_checkpoint(synth_root, tmp_path_factory):
    out = tmp_path_factory.mktemp("ckpt")
    fit(preset("tiny", data=str(synth_root), epochs=1),
        lambda row, d: checkpoint.save(out, checkpoint.load(d)))
    return out


def test_evaluate_on_the_real_sample_reports_the_copy_last_frame_baseline(
        tiny_checkpoint, bair_sample, capsys):
    r = evaluate_checkpoint(tiny_checkpoint, data=str(bair_sample), split="test")
    assert r["n_sequences"] == 1 and len(r["psnr_per_frame"]) == 10
    seq = bair_sample / "test" / "traj_0_to_255.tfrecords" / "175"
    frames = torch.stack([torch.from_numpy(np.asarray(Image.open(seq / f"{t}.png"), np.float32)
                                           / 255).permute(2, 0, 1) for t in range(12)])[None]
    copy = frames[:, 1:2].expand(1, 10, 3, 64, 64)
    expected = psnr(copy, frames[:, 2:])[0]
    assert r["baseline_psnr_per_frame"] == pytest.approx(expected.tolist(), rel=1e-5)
    assert r["baseline_psnr"] == pytest.approx(expected.mean().item(), rel=1e-5)
    assert main(["evaluate", "--checkpoint", str(tiny_checkpoint), "--data", str(bair_sample)]) == 0
    out = capsys.readouterr().out
    assert "copy last frame" in out and f"{r['baseline_psnr']:6.2f} dB" in out


def test_best_of_n_samples_and_shuffled_conditions(tiny_checkpoint, synth_root):
    one = evaluate_checkpoint(tiny_checkpoint, split="test", samples=1)
    best = evaluate_checkpoint(tiny_checkpoint, split="test", samples=4)
    assert best["ssim"] >= one["ssim"] - 1e-9  # the first sample is among the four
    assert best["baseline_psnr"] == one["baseline_psnr"]
    shuffled = evaluate_checkpoint(tiny_checkpoint, split="test", shuffle_conditions=True)
    assert shuffled["psnr"] != one["psnr"] and shuffled["baseline_psnr"] == one["baseline_psnr"]


def test_evaluate_cli_json_horizon_and_media(tiny_checkpoint, tmp_path, capsys):
    assert main(["evaluate", "--checkpoint", str(tiny_checkpoint), "--n-future", "28",
                 "--max-sequences", "3", "--media", str(tmp_path), "--json"]) == 0
    r = json.loads(capsys.readouterr().out)
    assert r["n_sequences"] == 3 and len(r["ssim_per_frame"]) == 28
    for name in ("gif", "grid", "psnr_plot"):
        assert (tmp_path / r["media"][name].rsplit("/", 1)[-1]).stat().st_size > 0


def test_evaluate_cli_errors_are_one_line(tiny_checkpoint, tmp_path, capsys):
    assert main(["evaluate", "--checkpoint", str(tmp_path / "none")]) == 2
    assert main(["evaluate", "--checkpoint", str(tiny_checkpoint), "--n-future", "29"]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 2 and all(line.startswith("error: ") for line in lines)
    assert "n_past + n_future" in lines[1]
