"""The import picture: every arrow points down, `presets <- mobile_sdk <- trainer <- converters <-
pipelines <- benchmarks`, including dependencies hidden in strings (`python -m converters.export`)."""
import ast
import os
import re
import subprocess
import sys
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


def test_every_module_opens_with_what_it_is():
    """One idea per file, said in its first lines: a newcomer reads the docstring, not the code."""
    silent = [str(path.relative_to(REPO)) for package in LAYERS for path in sorted((REPO / package).rglob("*.py"))
              if path.read_text().strip() and not (ast.get_docstring(ast.parse(path.read_text())) or "").strip()]
    assert not silent, f"modules without a docstring: {silent}"


def test_the_checker_sees_a_dependency_hidden_in_a_string(tmp_path):
    source = tmp_path / "x.py"
    source.write_text('import subprocess\nsubprocess.run(["python", "-m", "converters.export"])\n')
    assert project_dependencies(source) == {"converters"}


# Inside the trainer: the groups that never load TensorFlow import each other at the top of a file;
# a TensorFlow-side module (the commands, data/pipeline, model/, training/) only inside a function.
TF_FREE = ["trainer.data", "trainer.world", "trainer.evaluation", "trainer.figures"]  # less what TF_SIDE names
TF_SIDE = ["tensorflow", "keras", "trainer.data.pipeline", "trainer.model", "trainer.training", "trainer.train",
           "trainer.evaluate", "trainer.prepare"]


def _in(module: str, groups) -> bool:
    return any(module == group or module.startswith(group + ".") for group in groups)


def imports_by_place(path: Path) -> tuple[set[str], set[str]]:
    """(modules imported when the file is imported, modules imported inside a function)."""
    top, lazy = set(), set()

    def visit(node, in_function: bool):
        for child in ast.iter_child_nodes(node):
            names = []
            if isinstance(child, ast.Import):
                names = [alias.name for alias in child.names]
            elif isinstance(child, ast.ImportFrom) and child.level == 0 and child.module:
                names = [child.module] + [f"{child.module}.{alias.name}" for alias in child.names]
            (lazy if in_function else top).update(names)
            visit(child, in_function or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)))

    visit(ast.parse(path.read_text()), False)
    return top, lazy


def module_name(path: Path) -> str:
    parts = path.relative_to(REPO).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


TF_FREE_FILES = [path for path in sorted((REPO / "trainer").rglob("*.py"))
                 if _in(module_name(path), TF_FREE) and not _in(module_name(path), TF_SIDE)]


@pytest.mark.parametrize("path", TF_FREE_FILES, ids=lambda p: str(p.relative_to(REPO)))
def test_tf_free_modules_load_no_tensorflow_side_at_import_and_import_each_other_at_the_top(path):
    top, lazy = imports_by_place(path)
    assert not {m for m in top if _in(m, TF_SIDE)}, "a TensorFlow-side import at the top of a TF-free module"
    project = {m for m in lazy if m.split(".")[0] in LAYERS}
    assert not {m for m in project if not _in(m, TF_SIDE)} - {"trainer.console"}, \
        "a TF-free project module imported inside a function: import it at the top of the file"


def test_the_group_checker_tells_top_from_function_imports(tmp_path):
    source = tmp_path / "x.py"
    source.write_text("import numpy\nfrom trainer.data import readers\n\ndef f():\n    import tensorflow as tf\n")
    assert imports_by_place(source) == ({"numpy", "trainer.data", "trainer.data.readers"}, {"tensorflow"})


def test_importing_every_tf_free_module_loads_no_tensorflow():
    modules = [module_name(path) for path in TF_FREE_FILES if path.name != "__main__.py"]
    code = (f"import importlib, sys\nfor m in {modules!r}: importlib.import_module(m)\n"
            "print(sorted(m for m in ('tensorflow', 'keras') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=300,
                         env={**os.environ, "PYTHONPATH": str(REPO)})
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip().splitlines()[-1] == "[]", out.stdout
