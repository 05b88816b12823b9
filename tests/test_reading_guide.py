"""READING.md cites `path::name` for every object it maps; each must exist, so the guide cannot rot silently."""
import ast
import re
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
CITATION = re.compile(r"`([\w/]+\.py)::(\w+)`")


def _top_level_names(path: Path) -> set[str]:
    names = set()
    for node in ast.parse(path.read_text()).body:
        if isinstance(node, (ast.FunctionDef, ast.ClassDef)):
            names.add(node.name)
        elif isinstance(node, ast.Assign):
            names.update(t.id for t in node.targets if isinstance(t, ast.Name))
    return names


def test_every_cited_path_and_name_exists():
    citations = CITATION.findall((REPO / "READING.md").read_text())
    assert len(citations) > 30  # the guide is made of them
    missing = [f"{path}::{name}" for path, name in citations
               if not (REPO / path).is_file() or name not in _top_level_names(REPO / path)]
    assert not missing, f"READING.md cites what does not exist: {missing}"
