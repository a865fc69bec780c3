"""The import picture: every arrow points down, `presets <- mobile_sdk <- trainer <- converters <-
pipelines <- benchmarks`, including dependencies hidden in strings (`python -m converters.export`)."""
import ast
import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
LAYERS = ["presets", "mobile_sdk", "trainer", "converters", "pipelines", "benchmarks"]
MODULE_STRING = re.compile(rf"^({'|'.join(LAYERS)})(\.\w+)+$")  # e.g. "converters.export" passed to python -m


def project_dependencies(path: Path) -> set[str]:
    """Top-level project packages a file imports or names as a module string."""
    tree = ast.parse(path.read_text())
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.add(node.module.split(".")[0])
        elif isinstance(node, ast.Constant) and isinstance(node.value, str) and MODULE_STRING.match(node.value):
            found.add(node.value.split(".")[0])
    return found & set(LAYERS)


@pytest.mark.parametrize("package", LAYERS)
def test_imports_point_down(package):
    allowed = set(LAYERS[:LAYERS.index(package) + 1])
    upward = {str(path.relative_to(REPO)): sorted(project_dependencies(path) - allowed)
              for path in sorted((REPO / package).rglob("*.py"))}
    assert not {path: deps for path, deps in upward.items() if deps}, f"{package} depends on a higher wing"


def test_the_checker_sees_a_dependency_hidden_in_a_string(tmp_path):
    source = tmp_path / "x.py"
    source.write_text('import subprocess\nsubprocess.run(["python", "-m", "converters.export"])\n')
    assert project_dependencies(source) == {"converters"}
