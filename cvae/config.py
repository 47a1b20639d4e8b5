"""Typed configuration of one CVAE training run, with the presets the project ships.

One flat dataclass so that a Ray Tune config dict (flat by nature) maps onto it field by
field; the comments group the fields by the code they configure.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, fields
from typing import Any, Optional

KL_ANNEAL_MODES = ("monotonic", "cyclical", "cyclical-sigmoid", "none")
TASKS = ("bair", "dance", "smmnist")  # cvae.tasks: one per lab or benchmark

# The labs' own flag names (their argument parsers) and the Config field each one is here; a
# key spelt the lab's way is an error naming the field (`lab_name_hint`), never a silent alias.
LAB_NAMES = {
    # the dance lab's Trainer.py
    "tfr_sde": "tfr_start_decay_epoch", "tfr_d_step": "tfr_decay_step",
    "kl_anneal_type": "kl_anneal", "num_epoch": "epochs", "F_dim": "g_dim", "N_dim": "z_dim",
    "L_dim": "pose_dim", "D_out_dim": "fusion_dim", "train_vi_len": "clip_len",
    "val_vi_len": "val_len", "fast_train": "fast_train_epochs",
    "fast_train_epoch": "fast_train_epochs", "DR": "data",
    # the BAIR lab and SVG's train_svg_lp.py
    "kl_anneal_cyclical": "kl_anneal", "niter": "epochs", "n_eval": "eval_n_future",
    "data_root": "data", "beta": "beta_max", "data_threads": "num_workers",
}


@dataclass
class Config:
    task: str = "bair"  # "bair" (SVG on robot pushing), "dance" (the pose-conditioned lab) or
    # "smmnist" (SVG's Stochastic Moving MNIST, unconditional: the future is in the latent)
    # data
    data: Optional[str] = None  # dataset root in the task's layout; None = embedded synthetic data
    normalize_conditions: bool = True  # standardize actions/positions with train-split statistics
    n_past: int = 2  # conditioning frames
    n_future: int = 10  # predicted frames during training (lab: 10)
    eval_n_future: int = 10  # predicted frames during validation (lab demo protocol: 2 -> 10)
    val_sequences: int = 64  # validation sequences scored per epoch (0 = whole split)
    train_window: str = "random"  # "first": frames 0..n_past+n_future-1 of each sequence, as
    # SVG's BAIR loader and the lab (the frames the test protocol scores); "random": any window
    # model (SVG, Denton & Fergus 2018)
    width: float = 1.0  # channel multiplier of the VGG64 encoder/decoder (1.0 = 64-128-256-512)
    g_dim: int = 128  # frame encoding size (dance: RGB_Encoder channels, the lab's F_dim)
    z_dim: int = 64  # latent size per step (dance: latent channels per pixel, the lab's N_dim)
    rnn_size: int = 256  # hidden size of every LSTM
    predictor_rnn_layers: int = 2  # frame predictor LSTM layers
    posterior_rnn_layers: int = 1  # Gaussian LSTM layers of q(z_t | x_t) and p(z_t | x_{t-1})
    prior_rnn_layers: int = 1
    learned_prior: bool = False  # SVG-LP: p(z_t | x_{1:t-1}); False = SVG-FP: N(0, I)
    last_frame_skip: bool = False  # skips from the last input frame instead of the last context frame
    cond_dim: int = 7  # 4-dim action + 3-dim end-effector position
    init: str = "torch"  # "svg": conv/linear weights N(0, 0.02), bias 0, BatchNorm gamma
    # N(1, 0.02), beta 0 (SVG's utils.init_weights); "torch": PyTorch's default initialisation
    # dance task (the lab's template; ignored by bair)
    pose_dim: int = 32  # Label_Encoder channels (the lab's L_dim)
    fusion_dim: int = 192  # Decoder_Fusion output channels (the lab's D_out_dim)
    clip_len: int = 16  # frames per training clip (the lab's train_vi_len)
    val_len: int = 630  # frames of the validation sequence generated from its first frame
    partial: float = 1.0  # fraction of the training clips used (the lab's partial)
    fast_partial: float = 0.4  # fraction used during the first fast_train_epochs epochs
    fast_train_epochs: int = 0  # 0 = off (the lab's --fast_train with fast_train_epoch)
    chunk: int = 0  # steps batched per call in the training pass (0: all; a speed knob only)
    clamp_feedback: bool = False  # clamp generated frames to [0, 1] before feeding them back
    # (the lab feeds the raw, unbounded output back)
    # smmnist task (ignored by the others)
    digits: int = 2  # digits per sequence (SVG's num_digits)
    # optimization
    lr: float = 0.002
    lr_milestones: str = ""  # epochs at which lr is multiplied by lr_gamma, e.g. "2,5"
    # (the dance lab's MultiStepLR([2, 5], 0.1)); "" = constant lr
    lr_gamma: float = 0.1
    beta1: float = 0.9  # Adam beta1
    batch_size: int = 16
    epoch_size: int = 600  # training batches per epoch (dance: 0 = one pass over the clips)
    epochs: int = 300
    grad_clip: float = 0.0  # max gradient norm; 0 = no clipping
    # teacher forcing
    tfr: float = 1.0  # initial teacher forcing ratio (per-sequence coin)
    tfr_start_decay_epoch: int = 10  # 0-based epoch of the first decayed tfr (the dance
    # lab's tfr_sde, which decays after each epoch: its 0 and 1 are both 1 here)
    tfr_decay_step: float = 0.0  # decay per epoch; 0 = linear to tfr_lower_bound by the last epoch
    tfr_lower_bound: float = 0.0
    # KL annealing (Fu et al. 2019)
    kl_anneal: str = "cyclical"  # one of KL_ANNEAL_MODES
    kl_anneal_cycle: int = 4  # cycles over the run (cyclical modes)
    kl_anneal_ratio: float = 0.5  # fraction of a cycle (or of the run, monotonic) spent ramping
    kl_anneal_unit: str = "epoch"  # "epoch" or "step": the time axis of the schedule
    beta_min: float = 0.0  # beta at the start of a ramp
    beta_max: float = 1.0  # beta after a ramp (and the constant beta of "none")
    # run
    seed: int = 1
    device: str = "auto"  # "auto" (CUDA when present), "cpu", "cuda", "cuda:1"
    amp: str = "auto"  # bf16 autocast: "auto" (on for CUDA), "on", "off"
    channels_last: str = "auto"  # "auto" (on for CUDA, off for CPU: measured), "on", "off"
    threads: int = 0  # torch threads; 0 = leave torch's default
    gpu_memory_fraction: float = 0.0  # cap of this process's GPU memory share; 0 = no cap
    num_workers: int = 0  # DataLoader worker processes
    gif_every: int = 0  # write a sample GIF every N epochs during `cvae train`; 0 = only at the end
    skip_bad: bool = False  # leave out (and list) sequences failing the data checks; False = stop

    def __post_init__(self) -> None:
        validate(self)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def replace(self, **overrides: Any) -> "Config":
        return from_dict({**self.to_dict(), **overrides})


class ConfigError(ValueError):
    """An invalid value of one field, as data: `key`, `value` and what was `expected`
    (str(e) is "key=value: expected what")."""

    def __init__(self, key: str, value: Any, expected: str):
        super().__init__(f"{key}={value!r}: expected {expected}")
        self.key, self.value, self.expected = key, value, expected


def field_names() -> list[str]:
    return [f.name for f in fields(Config)]


def field_type(name: str) -> type:
    """The Python type a field accepts (Optional[str] -> str)."""
    default = Config.__dataclass_fields__[name].default
    if name == "data":
        return str
    return type(default)


def validate(cfg: Config) -> None:
    """Raise ValueError naming the field for any out-of-range value."""
    def need(ok: bool, key: str, what: str) -> None:
        if not ok:
            raise ConfigError(key, getattr(cfg, key), what)

    need(cfg.task in TASKS, "task", "one of " + ", ".join(TASKS))
    need(cfg.kl_anneal in KL_ANNEAL_MODES, "kl_anneal", "one of " + ", ".join(KL_ANNEAL_MODES))
    need(cfg.kl_anneal_unit in ("epoch", "step"), "kl_anneal_unit", "'epoch' or 'step'")
    need(cfg.train_window in ("first", "random"), "train_window", "'first' or 'random'")
    need(cfg.init in ("svg", "torch"), "init", "'svg' or 'torch'")
    need(cfg.kl_anneal_cycle >= 1, "kl_anneal_cycle", "an integer >= 1")
    need(0 < cfg.kl_anneal_ratio <= 1, "kl_anneal_ratio", "a number in (0, 1]")
    need(cfg.lr > 0, "lr", "a positive number")
    need(0 <= cfg.tfr <= 1, "tfr", "a number in [0, 1]")
    need(0 <= cfg.tfr_lower_bound <= 1, "tfr_lower_bound", "a number in [0, 1]")
    need(cfg.tfr_start_decay_epoch >= 0, "tfr_start_decay_epoch", "an integer >= 0")
    need(cfg.tfr_decay_step >= 0, "tfr_decay_step", "a number >= 0")
    need(cfg.n_past >= 1, "n_past", "an integer >= 1")
    need(cfg.n_future >= 1, "n_future", "an integer >= 1")
    need(cfg.eval_n_future >= 1, "eval_n_future", "an integer >= 1")
    if cfg.task == "bair":
        need(cfg.n_past + max(cfg.n_future, cfg.eval_n_future) <= 30, "n_future",
             "n_past + n_future (and eval_n_future) <= 30 frames")
    for key in ("batch_size", "epochs", "g_dim", "z_dim", "rnn_size", "predictor_rnn_layers",
                "posterior_rnn_layers", "prior_rnn_layers", "pose_dim", "fusion_dim"):
        need(getattr(cfg, key) >= 1, key, "an integer >= 1")
    full_pass = cfg.task == "dance" and cfg.kl_anneal_unit == "epoch"
    need(cfg.epoch_size >= (0 if full_pass else 1), "epoch_size",
         "an integer >= 1 (0, one pass over the clips, only for the dance task with "
         "kl_anneal_unit=epoch)" if cfg.task == "dance" else "an integer >= 1")
    if cfg.task == "dance":  # the template's blocks divide these channel counts
        for key, k in (("g_dim", 8), ("z_dim", 4), ("pose_dim", 2), ("fusion_dim", 8)):
            need(getattr(cfg, key) % k == 0, key, f"a multiple of {k} for the dance model")
    need(cfg.digits in (1, 2, 3), "digits", "1, 2 or 3")
    need(cfg.clip_len >= 2, "clip_len", "an integer >= 2")
    need(cfg.val_len >= 2, "val_len", "an integer >= 2")
    need(0 < cfg.partial <= 1, "partial", "a number in (0, 1]")
    need(0 < cfg.fast_partial <= 1, "fast_partial", "a number in (0, 1]")
    need(cfg.fast_train_epochs >= 0, "fast_train_epochs", "an integer >= 0")
    need(cfg.chunk >= 0, "chunk", "an integer >= 0")
    try:
        lr_milestones(cfg)
    except ValueError:
        need(False, "lr_milestones", "comma-separated epochs, e.g. '2,5' ('' = constant lr)")
    need(cfg.lr_gamma > 0, "lr_gamma", "a positive number")
    need(cfg.width > 0, "width", "a positive number")
    need(cfg.beta_min >= 0 and cfg.beta_max >= 0, "beta_max", "non-negative betas")
    need(cfg.amp in ("auto", "on", "off"), "amp", "'auto', 'on' or 'off'")
    need(cfg.channels_last in ("auto", "on", "off"), "channels_last", "'auto', 'on' or 'off'")
    need(cfg.val_sequences >= 0, "val_sequences", "an integer >= 0")
    need(0 <= cfg.gpu_memory_fraction <= 1, "gpu_memory_fraction", "a number in [0, 1]")


def lr_milestones(cfg: Config) -> list[int]:
    """The epochs of `cfg.lr_milestones` ("2,5" -> [2, 5]); ValueError when malformed."""
    epochs = [int(t) for t in cfg.lr_milestones.replace(" ", "").split(",") if t]
    if any(e < 1 for e in epochs) or epochs != sorted(set(epochs)):
        raise ValueError(f"lr_milestones={cfg.lr_milestones!r}")
    return epochs


def lab_name_hint(key: str) -> Optional[str]:
    """For a lab's flag name (tfr_sde, --kl_anneal_type), the message naming the Config field
    it is here; None for other keys."""
    name = key.lstrip("-")
    if name not in LAB_NAMES:
        return None
    return (f"{key!r} is the lab's name; here it is {LAB_NAMES[name]!r}"
            + (" (0 = off, else the number of epochs)" if name == "fast_train" else ""))


def from_dict(values: dict[str, Any], base: Optional[Config] = None) -> Config:
    """Typed config from a flat dict; unknown keys are an error naming the key (and, for a
    lab's flag name, the field it is here)."""
    names = set(field_names())
    unknown = sorted(set(values) - names)
    if unknown:
        import difflib
        lab = lab_name_hint(unknown[0])
        hint = difflib.get_close_matches(unknown[0], names, n=1)
        raise ValueError(f"unknown config key {unknown[0]!r}"
                         + (f": {lab}" if lab else f" (did you mean {hint[0]!r}?)" if hint
                            else ""))
    merged = {**(base.to_dict() if base else {}), **values}
    coerced = {k: coerce(k, v) for k, v in merged.items()}
    return Config(**coerced)


def coerce(key: str, value: Any) -> Any:
    """Convert a value (e.g. from YAML or the command line) to the field's type, or raise."""
    if key == "data" and value is None:
        return None
    want = field_type(key)
    if isinstance(value, str) and want is not str:
        text = value.strip()
        if want is bool:
            if text.lower() in ("true", "1", "yes", "on"):
                return True
            if text.lower() in ("false", "0", "no", "off"):
                return False
        else:
            try:
                return want(float(text)) if want is int and float(text).is_integer() else want(text)
            except ValueError:
                pass
        raise ConfigError(key, value, want.__name__)
    if want is float and isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    if want is int and isinstance(value, float) and value.is_integer():
        return int(value)
    if not isinstance(value, want) or (want is not bool and isinstance(value, bool)):
        raise ConfigError(key, value, want.__name__)
    return value


# Presets: the lab's full configuration, a CPU configuration that learns within minutes on two
# cores, and a tiny one for tests.
PRESETS: dict[str, dict[str, Any]] = {
    "lab": dict(width=1.0, g_dim=128, z_dim=64, rnn_size=256, predictor_rnn_layers=2,
                posterior_rnn_layers=1, lr=0.002, batch_size=16, epoch_size=600, epochs=300,
                n_past=2, n_future=10, tfr=1.0, tfr_start_decay_epoch=10, kl_anneal="cyclical",
                kl_anneal_cycle=4, kl_anneal_ratio=0.5, val_sequences=256, train_window="first",
                init="svg"),
    "cpu": dict(width=0.125, g_dim=64, z_dim=8, rnn_size=128, predictor_rnn_layers=2,
                posterior_rnn_layers=1, lr=0.003, batch_size=8, epoch_size=60, epochs=10,
                n_past=2, n_future=10, tfr=1.0, tfr_start_decay_epoch=5, tfr_lower_bound=0.0,
                kl_anneal="cyclical", kl_anneal_cycle=2, kl_anneal_ratio=0.5,
                beta_max=1e-3, val_sequences=32, train_window="first", init="torch"),
    "tiny": dict(width=0.0625, g_dim=16, z_dim=4, rnn_size=32, predictor_rnn_layers=1,
                 posterior_rnn_layers=1, lr=0.002, batch_size=4, epoch_size=4, epochs=2,
                 n_past=2, n_future=4, eval_n_future=4, tfr=1.0, tfr_start_decay_epoch=1,
                 kl_anneal="monotonic", beta_max=1e-3, val_sequences=8, threads=1),
    # the dance lab's template defaults (its Trainer.py argument parser)
    "dance-lab": dict(task="dance", g_dim=128, pose_dim=32, z_dim=12, fusion_dim=192, lr=1e-3,
                      lr_milestones="2,5", lr_gamma=0.1, batch_size=2, epoch_size=0, epochs=70,
                      clip_len=16, val_len=630, partial=1.0, fast_partial=0.4,
                      fast_train_epochs=0, tfr=1.0, tfr_start_decay_epoch=10,
                      tfr_decay_step=0.1, tfr_lower_bound=0.0, kl_anneal="cyclical",
                      kl_anneal_cycle=10, kl_anneal_ratio=1.0, beta_min=0.0, beta_max=1.0,
                      grad_clip=1.0, init="torch"),
    # learns within minutes on one core (README, Dance task): the template's modules at a
    # quarter of their widths, clips of 8 frames, half the batches free-running from epoch 3,
    # lr / 4 for the last two epochs
    "dance-cpu": dict(task="dance", g_dim=32, pose_dim=8, z_dim=4, fusion_dim=32, lr=2e-3,
                      lr_milestones="6", lr_gamma=0.25, batch_size=2, epoch_size=100,
                      epochs=8, clip_len=8, val_len=630, tfr=1.0, tfr_start_decay_epoch=2,
                      tfr_decay_step=0.5,
                      tfr_lower_bound=0.5, kl_anneal="none", kl_anneal_cycle=2,
                      kl_anneal_ratio=0.5, beta_min=0.0, beta_max=1e-4, grad_clip=1.0,
                      clamp_feedback=True, init="torch", threads=1),
    # SVG's SM-MNIST (train_svg_lp.py defaults and its README command: --num_digits 2
    # --g_dim 128 --z_dim 10 --beta 0.0001): SVG-LP, constant beta, always teacher forced,
    # 5 given frames; evaluated 5 -> 25 (n_eval 30)
    "smmnist-lab": dict(task="smmnist", digits=2, width=1.0, g_dim=128, z_dim=10, rnn_size=256,
                        predictor_rnn_layers=2, posterior_rnn_layers=1, prior_rnn_layers=1,
                        learned_prior=True, lr=0.002, batch_size=100, epoch_size=600,
                        epochs=300, n_past=5, n_future=10, eval_n_future=25, tfr=1.0,
                        tfr_lower_bound=1.0, kl_anneal="none", beta_max=1e-4,
                        val_sequences=256, init="svg"),
    # the latent carries the future within minutes on two cores (docs/results.md, SM-MNIST):
    # one digit, SVG-FP, 1200 teacher-forced steps, a KL weight below the fixed prior's
    # collapse (1e-4 keeps 1 nat and gains 0.3 dB from the posterior; 5e-6 12 nats, 2.3 dB)
    "smmnist-cpu": dict(task="smmnist", digits=1, width=0.125, g_dim=64, z_dim=8,
                        rnn_size=128, predictor_rnn_layers=2, posterior_rnn_layers=1,
                        prior_rnn_layers=1, learned_prior=False, lr=0.003, batch_size=8,
                        epoch_size=100, epochs=12, n_past=2, n_future=10, eval_n_future=10,
                        tfr=1.0, tfr_lower_bound=1.0, kl_anneal="monotonic",
                        kl_anneal_unit="step", kl_anneal_ratio=0.5, beta_max=5e-6,
                        val_sequences=64, init="torch"),
    "smmnist-tiny": dict(task="smmnist", digits=1, width=0.0625, g_dim=16, z_dim=4,
                         rnn_size=32, predictor_rnn_layers=1, posterior_rnn_layers=1, lr=0.002,
                         batch_size=4, epoch_size=4, epochs=2, n_past=2, n_future=4,
                         eval_n_future=4, tfr=1.0, tfr_start_decay_epoch=1,
                         kl_anneal="monotonic", beta_max=1e-4, val_sequences=8, threads=1),
    "dance-tiny": dict(task="dance", g_dim=8, pose_dim=8, z_dim=4, fusion_dim=16, lr=2e-3,
                       batch_size=2, epoch_size=2, epochs=2, clip_len=4, val_len=12, tfr=1.0,
                       tfr_start_decay_epoch=1, tfr_decay_step=0.5, kl_anneal="monotonic",
                       beta_max=1e-3, grad_clip=1.0, clamp_feedback=True, threads=1),
}


def preset(name: str, **overrides: Any) -> Config:
    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}: expected one of {', '.join(PRESETS)}")
    return from_dict({**PRESETS[name], **overrides})


def config_from_trial(flat: dict[str, Any]) -> Config:
    """Typed Config from a trial's flat dict (an optional "preset" key supplies defaults)."""
    values = dict(flat)
    name = values.pop("preset", None)
    return preset(name, **values) if name else from_dict(values)
