"""The house's one rule, kept true: imports point down (experiments -> dashboards, circuits, sae -> interp).

Every import statement of every module is read with `ast` (those inside functions too, which is where
an upward import hides), so a new one that points up fails here, naming the file and the line.
"""

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("interp", "circuits", "sae", "dashboards", "experiments")
# what each package may import from the project (besides itself)
ALLOWED = {
    "interp": set(),
    "circuits": {"interp"},
    "sae": {"interp"},
    "dashboards": {"interp"},
    "experiments": {"interp", "circuits", "sae", "dashboards"},
}


def project_imports(path: Path) -> list[tuple[int, str]]:
    """(line, top-level package) of every import of a project package in the file."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names = [node.module]
        else:
            continue
        found += [(node.lineno, name.split(".")[0]) for name in names if name.split(".")[0] in PACKAGES]
    return found


def upward_imports(package: str) -> list[str]:
    bad = []
    for path in sorted((ROOT / package).rglob("*.py")):
        for line, target in project_imports(path):
            if target != package and target not in ALLOWED[package]:
                bad.append(f"{path.relative_to(ROOT)}:{line} imports {target}")
    return bad


@pytest.mark.parametrize("package", PACKAGES)
def test_imports_point_down(package):
    assert upward_imports(package) == []


def test_the_check_sees_an_upward_import_inside_a_function(tmp_path):
    module = tmp_path / "m.py"
    module.write_text(
        "import os\n\ndef f():\n    from experiments.cli import app\n    import sae.train\n    return app\n"
    )
    assert project_imports(module) == [(4, "experiments"), (5, "sae")]
