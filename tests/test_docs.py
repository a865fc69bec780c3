"""The docs stay true: presets are data in one place and the docs quote the numbers they hold; the
docs speak of the project only (no issue numbers, no machine paths)."""
import ast
import re
from pathlib import Path

import pytest

import presets
from trainer.world.presets import PRESETS, Preset

REPO = Path(__file__).resolve().parents[1]
EXPERIMENTS = [name for name in presets.NAMES if hasattr(presets.load(name), "RUN")]


@pytest.mark.parametrize("name", presets.NAMES)
def test_each_preset_file_says_how_to_run_it_and_sizes_its_world(name):
    module = presets.load(name)
    assert "python -m " in module.__doc__
    assert PRESETS[name] == Preset(**module.WORLD)


@pytest.mark.parametrize("name", EXPERIMENTS)
def test_each_experiment_has_a_smoke_variant_on_a_known_world(name):
    module = presets.load(name)
    for settings in (module.RUN, module.SMOKE):
        assert isinstance(settings, presets.Settings) and settings.world in presets.NAMES
    assert module.SMOKE.steps_per_epoch and module.SMOKE.world == "tiny"


def test_unknown_preset_names_the_choices():
    with pytest.raises(ValueError, match="tiny"):
        presets.load("huge")


def test_docs_quote_the_presets():
    readme = (REPO / "README.md").read_text()
    run = presets.load("demo").RUN
    assert (f"image-only ({run.image_epochs} epochs), post-processing ({run.geo_epochs}) and "
            f"feature-modulation ({run.featuremod_epochs}") in " ".join(readme.split())
    assert f"alpha {run.alpha}, {run.image_size} px" in readme
    table = (REPO / "docs" / "datasets.md").read_text()
    for name in presets.NAMES:
        w = presets.load(name).WORLD
        row = re.search(rf"^\| `{name}` \| (\d+) \((\d+) x (\d+) x (\d+)\) \| (\d+) \|", table, re.M)
        assert row, f"docs/datasets.md has no row for the {name} world"
        shape = (w["supercategories"], w["genera_per_supercategory"], w["species_per_genus"])
        assert tuple(map(int, row.groups())) == (shape[0] * shape[1] * shape[2], *shape, w["image_size"])


DOCS = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: p.name)
def test_docs_name_no_issue_numbers_or_machine_paths(doc):
    text = doc.read_text()
    assert not re.search(r"\bissues? #?\d+", text, re.I), "an issue number"
    assert not re.search(r"(?<![\w.])/(work|home|Users|root)/", text), "a machine path"


PACKAGES = ("presets", "mobile_sdk", "trainer", "converters", "pipelines", "benchmarks")
FILE_NAMED = re.compile(rf"`((?:{'|'.join(PACKAGES)})/[\w/.]*)`")  # `trainer/data/readers.py`, `mobile_sdk/whitelist/`
FILE_SUFFIXES = {"md", "json", "py", "txt", "csv", "npz", "png", "tflite", "keras", "gwl"}
MODULE_NAMED = re.compile(rf"\b((?:{'|'.join(PACKAGES)})(?:\.\w+)+)")  # trainer.data.readers.load_split


def _module_file(name: str) -> Path | None:
    path = REPO.joinpath(*name.split("."))
    return next((p for p in (path.with_suffix(".py"), path / "__init__.py") if p.is_file()), None)


def _top_level_names(path: Path) -> set[str]:
    names = set()
    for node in ast.parse(path.read_text()).body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            names.add(node.name)
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            names.update((alias.asname or alias.name).split(".")[0] for alias in node.names)
        else:
            names.update(n.id for n in ast.walk(node) if isinstance(n, ast.Name) and isinstance(n.ctx, ast.Store))
    return names


def missing_names(text: str) -> list[str]:
    """Files and modules (or a module's top-level names) the text names that the repository lacks;
    placeholders in capitals (`presets/NAME.py`, `trainer.figures.X`) and file names
    (`benchmarks.md`) are not names."""
    missing = [m for m in FILE_NAMED.findall(text) if not re.search(r"[A-Z]{2}", m) and not (REPO / m).exists()]
    for name in set(MODULE_NAMED.findall(text)):
        parts = name.split(".")
        if parts[-1] in FILE_SUFFIXES or any(part.isupper() for part in parts):
            continue
        # the longest prefix that is a module; what follows must be one of its top-level names
        known, module = next((i, f) for i in range(len(parts), 0, -1) if (f := _module_file(".".join(parts[:i]))))
        if known < len(parts) and parts[known] not in _top_level_names(module):
            missing.append(name)
    return sorted(missing)


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: p.name)
def test_docs_name_files_and_modules_that_exist(doc):
    assert missing_names(doc.read_text()) == []


def test_the_name_checker_sees_a_moved_module():
    assert missing_names("`trainer/data/readers.py` and trainer.data.readers.load_split") == []
    assert missing_names("`trainer/data/formats.py`, trainer.data.readers.read_all, trainer.data.nowhere.x") == \
        ["trainer.data.nowhere.x", "trainer.data.readers.read_all", "trainer/data/formats.py"]


def test_benchmarks_print_repository_paths():
    from benchmarks.common import REPO as BENCH_REPO, shown_path

    assert shown_path(BENCH_REPO / "out" / "bench" / "x.md") == "out/bench/x.md"
    assert shown_path("/somewhere/deep/out/bench/x.md") == ".../out/bench/x.md"


def test_readme_commands_use_the_demo_preset():
    """The README's step-by-step commands train what `make demo` trains (presets/demo.py)."""
    run = presets.load("demo").RUN
    readme = (REPO / "README.md").read_text()
    steps = readme.split("## Using the parts")[1].split("```sh")[1].split("```")[0]
    train = {re.search(r"--model (\w+)", line)[1]: line for line in steps.splitlines() if "trainer.train" in line}
    assert {"image", "postprocess", "featuremod"} <= set(train)
    for kind in ("image", "postprocess", "featuremod"):
        assert f"--epochs {run.epochs(kind)} " in train[kind], train[kind]
    assert f"--image-size {run.image_size} --alpha {run.alpha} " in train["image"]
    assert f"--preset {run.world} " in steps
