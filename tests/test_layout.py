"""The package's shape: size limits, and imports that only run down the layers.

config → data → model → training loop → trial run → search driver → study storage → report,
with the public API and the CLI on top.
"""

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "lrtune"
MAX_MODULE, MAX_CLASS, MAX_FUNCTION = 500, 150, 60

# What each part of lrtune may import from lrtune; a part may always import itself.
MAY_IMPORT = {
    "errors": set(),
    "formatting": {"config"},
    "config": {"errors"},  # and nothing that imports config
    "progress": {"formatting"},
    "training": {"config", "errors", "progress"},
    "storage": {"config", "errors"},
    "tuner": {"config", "errors", "progress", "training", "storage", "formatting"},
    "report": {"config", "errors", "storage", "formatting"},
    "deploy": {"config", "errors", "progress", "training", "storage", "formatting"},
    "api": {"config", "errors", "progress", "training", "storage", "tuner", "report", "formatting", "deploy"},
    "cli": {"config", "errors", "progress", "storage", "formatting", "api", "report", "tuner", "training", "deploy"},
    "__init__": {"api", "config", "errors", "progress"},
    "__main__": {"cli"},
}
NEVER = {"training": {"optuna"}, "storage": {"torch", "timm"}, "report": {"torch", "timm"}, "deploy": {"lrtune.tuner"}}


def modules():
    return sorted(p for p in PACKAGE.rglob("*.py") if "__pycache__" not in p.parts)


def part_of(path: Path) -> str:
    return path.relative_to(PACKAGE).parts[0].removesuffix(".py")


def imported(tree: ast.AST) -> set[str]:
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
            if node.module == "lrtune":
                names |= {f"lrtune.{alias.name}" for alias in node.names}
    return names


def sizes(path: Path):
    tree = ast.parse(path.read_text())
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            yield node, node.end_lineno - node.lineno + 1


@pytest.mark.parametrize("path", modules(), ids=lambda p: str(p.relative_to(PACKAGE)))
def test_size_limits(path):
    assert len(path.read_text().splitlines()) <= MAX_MODULE
    for node, lines in sizes(path):
        limit = MAX_CLASS if isinstance(node, ast.ClassDef) else MAX_FUNCTION
        assert lines <= limit, f"{node.name} has {lines} lines"


@pytest.mark.parametrize("path", modules(), ids=lambda p: str(p.relative_to(PACKAGE)))
def test_imports_only_run_down_the_layers(path):
    part = part_of(path)
    for name in imported(ast.parse(path.read_text())):
        root = name.split(".")[0]
        assert root not in NEVER.get(part, set()), f"{part} imports {name}"
        if root == "lrtune" and name != "lrtune":
            target = name.split(".")[1]
            assert target == part or target in MAY_IMPORT[part], f"{part} imports {name}"
