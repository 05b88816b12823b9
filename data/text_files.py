"""Reading a data file's text (or JSONL records) with errors that name it: a missing file, or bytes that are not
UTF-8 (with the line and byte where they are), instead of a bare UnicodeDecodeError."""
import gzip
import json
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


def read_jsonl(path, what: str):
    """(line number, object) for each non-blank line of a JSONL file (gzip when it ends .gz), streamed, so a
    caller may stop early; a missing file, bytes that are not UTF-8, a line that is not a JSON object or a broken
    gzip stream is an error naming the file (and the line)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: {what} file not found")
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as f:
            for line_no, raw in enumerate(f, 1):
                try:
                    line = raw.decode("utf-8")
                except UnicodeDecodeError:
                    raise ValueError(f"{path}, line {line_no}: not UTF-8 text ({what} files are UTF-8)") from None
                if not line.strip():
                    continue
                try:
                    record = json.loads(line)
                except json.JSONDecodeError as e:
                    raise ValueError(f"{path}, line {line_no}: malformed JSON ({e})") from None
                if not isinstance(record, dict):
                    raise ValueError(f"{path}, line {line_no}: expected a JSON object")
                yield line_no, record
    except (OSError, EOFError) as e:  # gzip.BadGzipFile is an OSError
        raise ValueError(f"{path}: unreadable ({type(e).__name__}: {e})") from None
