"""Reading a data file's text with errors that name it: a missing file, or bytes that are not UTF-8 (with the
line and byte where they are), instead of a bare UnicodeDecodeError."""
from pathlib import Path


def read_text(path, what: str, encoding: str = "utf-8") -> str:
    """The whole text of `path` (a `what` file: "MetaMathQA", "GLUE TSV", ...)."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise FileNotFoundError(f"{path}: {what} file not found") from None
    try:
        return data.decode(encoding)
    except UnicodeDecodeError as e:
        line = data.count(b"\n", 0, e.start) + 1
        raise ValueError(f"{path}, line {line} (byte {e.start}): not UTF-8 text ({what} files are UTF-8)") from None
