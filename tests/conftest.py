"""Shared fixtures: an isolated cache and small datasets in the BAIR layout."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

BAIR_SAMPLE = Path(__file__).resolve().parents[2] / "shared" / "data" / "bair_sample"


@pytest.fixture(scope="session", autouse=True)
def isolated_cache(tmp_path_factory):
    """Decoded caches and synthetic data of the tests go to a temporary folder."""
    path = tmp_path_factory.mktemp("cvae-cache")
    old = os.environ.get("CVAE_CACHE")
    os.environ["CVAE_CACHE"] = str(path)
    yield path
    if old is None:
        os.environ.pop("CVAE_CACHE", None)
    else:
        os.environ["CVAE_CACHE"] = old


@pytest.fixture(scope="session")
def synth_root(tmp_path_factory) -> Path:
    """A small synthetic dataset (train 24, validate 8, test 8 sequences)."""
    from cvae.synth import write_dataset

    root = tmp_path_factory.mktemp("synth") / "data"
    write_dataset(root, train=24, validate=8, test=8, seed=0, workers=1, progress=False)
    return root


@pytest.fixture
def bair_sample() -> Path:
    """The one real BAIR test sequence; tests using it are skipped where it is absent."""
    if not (BAIR_SAMPLE / "test").is_dir():
        pytest.skip(f"real BAIR sample not found at {BAIR_SAMPLE}")
    return BAIR_SAMPLE
