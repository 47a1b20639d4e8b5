"""The tasks (one per lab) behind one small interface, picked by `Config.task`.

    bair    SVG on BAIR robot pushing, conditioned on actions and positions (cvae.tasks.bair
            binds cvae.data, cvae.model and cvae.synth)
    dance   the pose-conditioned dance lab (cvae.tasks.dance: its data, synthetic dancer and
            template model)
    smmnist SVG's Stochastic Moving MNIST, unconditional (cvae.tasks.smmnist: the motion,
            rendered or real MNIST digits; SVG with one channel)

What differs between tasks is the dataset, the model, the training step and the validation
protocol; config, schedules, metrics, checkpoints, the training loop (cvae.train), evaluation
(cvae.evaluate), the Ray trainable and the sweeps are shared. A task module provides:

    resolve_root(data) -> Path          the dataset root: the given folder or the embedded
                                        synthetic data (generated once into the cache)
    prepare(cfg, skip_bad) -> str       resolve_root plus decoding the training and validation
                                        splits into the cache (a sweep's driver calls it once)
    build_model(cfg) -> nn.Module       with `predict(x_ctx, cond, n_future, x_future=None)`
    step(model, x, cond, tf, cfg)       training loss terms: (mse summed over steps, KL, steps)
    TrainingData(cfg, root, state)      train batches, the validation set, the state a
                                        checkpoint keeps (`extra_state()`)
    load_stats(state)                   what evaluation needs from a checkpoint besides the
                                        model (BAIR: the condition statistics)
    eval_setup(root, split, cfg, stats, n_past, n_future)
                                        (sequences to score, given frames, predicted frames):
                                        the task's protocol; sequences have `len` and
                                        `batch(idx, starts, seq_len) -> (frames, conditions)`
    run_synth(args), run_check(args)    `python -m cvae synth --task T`, `check-data --task T`
    add_synth_arguments(parser)         optional: the task's own `synth` flags
"""
from __future__ import annotations

import importlib
from pathlib import Path
from types import ModuleType
from typing import Callable, Optional

from cvae.config import TASKS, Config

MODULES = {"bair": "cvae.tasks.bair", "dance": "cvae.tasks.dance.task",
           "smmnist": "cvae.tasks.smmnist.task"}
assert tuple(MODULES) == TASKS


def get(name: str) -> ModuleType:
    """The task module of `name` (one of cvae.config.TASKS), imported on first use."""
    if name not in MODULES:
        raise ValueError(f"task={name!r}: expected one of {', '.join(MODULES)}")
    return importlib.import_module(MODULES[name])


def prepare_data(cfg: Config, quiet: bool = False) -> str:
    """Make the data of `cfg` ready for training: the embedded synthetic data generated when
    `cfg.data` is None, the training and validation splits decoded into the cache (so that
    concurrent trials find them ready). Returns the dataset root. Raises DataError."""
    return get(cfg.task).prepare(cfg, quiet=quiet)


def data_root(data: Optional[str], embedded: Callable[[], Path]) -> Path:
    """A task's dataset root: the given folder (DataError when it is not one), or with None
    the embedded synthetic data (`embedded()`, generated once into the cache)."""
    if data is None:
        return embedded()
    from cvae.data import DataError

    root = Path(data).expanduser()
    if not root.is_dir():
        raise DataError(f"{root}: data folder not found")
    return root
