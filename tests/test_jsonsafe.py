"""Histories and metrics with NaN (a diverged epoch) are written as strict JSON, NaN -> null."""
import json
import math

import numpy as np
import pyarrow.fs
import torch

from cvae import jsonsafe


def strict_loads(text: str):
    """json.loads that rejects NaN/Infinity, as JSON parsers outside Python do."""
    def refuse(name):
        raise ValueError(f"not JSON: {name}")
    return json.loads(text, parse_constant=refuse)


def test_non_finite_floats_become_null_everywhere():
    row = {"epoch": 2, "diverged": True, "loss": math.nan, "mse": np.float32("nan"),
           "kld": np.float64("inf"), "val_psnr": 0.0, "beta": np.float32(0.5),
           "per_frame": [1.5, -math.inf, (math.nan, 2)], "n": np.int64(3)}
    text = jsonsafe.dumps({"history": [row]}, indent=1)
    assert "NaN" not in text and "Infinity" not in text
    back = strict_loads(text)["history"][0]
    assert back == {"epoch": 2, "diverged": True, "loss": None, "mse": None, "kld": None,
                    "val_psnr": 0.0, "beta": 0.5, "per_frame": [1.5, None, [None, 2]], "n": 3}


def test_values_from_the_default_hook_are_made_finite_too():
    text = jsonsafe.dumps([torch.tensor(math.nan), torch.tensor(2.5)], default=lambda v: v.item())
    assert strict_loads(text) == [None, 2.5]


def test_the_sweeps_history_files_are_strict_json(tmp_path):
    from search.storage import write_json

    rows = [{"epoch": 1, "loss": 0.1, "val_psnr": 20.0},
            {"epoch": 2, "loss": math.nan, "val_psnr": 0.0, "diverged": True}]
    path = tmp_path / "t0" / "history.json"
    write_json(pyarrow.fs.LocalFileSystem(), str(path), rows)
    assert strict_loads(path.read_text())[1] == {"epoch": 2, "loss": None, "val_psnr": 0.0,
                                                 "diverged": True}
