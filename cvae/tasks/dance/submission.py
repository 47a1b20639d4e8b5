"""The dance lab's submission file: the generated test sequences as the lab's `Tester.py`
writes them (`submission.csv`, scored on Kaggle).

One row per generated frame, sequences in test order (frame 0, the given one, included):
an `id` column counting rows from 0, then the frame's 3 x 32 x 64 values flattened channel by
channel, row by row (the order of `(3, H, W).reshape(-1)`), as integers rint(x * 255). Unlike
the lab's tester, values are clipped to 0..255 (the generator's output is unbounded).
"""
from __future__ import annotations

import os
from typing import Sequence

import numpy as np
import torch


def submission_rows(sequences: Sequence[torch.Tensor]) -> np.ndarray:
    """Frames (T_k, 3, H, W) of each test sequence -> int rows (sum T_k, 3 H W), no id."""
    rows = [torch.as_tensor(s).detach().cpu().reshape(len(s), -1).numpy() for s in sequences]
    return np.clip(np.rint(np.concatenate(rows) * 255.0), 0, 255).astype(np.int64)


def write_submission(path: str | os.PathLike, sequences: Sequence[torch.Tensor]) -> int:
    """Write the submission CSV for the generated sequences; returns the number of rows."""
    rows = submission_rows(sequences)
    header = ",".join(["id"] + [str(i) for i in range(rows.shape[1])])
    table = np.concatenate([np.arange(len(rows))[:, None], rows], axis=1)
    np.savetxt(path, table, fmt="%d", delimiter=",", header=header, comments="")
    return len(rows)
