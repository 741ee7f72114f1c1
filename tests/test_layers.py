"""The direction of imports: the README's layer map (its "Layout" section) is read, every import of the package is
read with `ast`, and an import of a layer above, or of another folder of the same layer, fails the suite."""
from __future__ import annotations

import ast
import re
import shutil
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "fastfreeze"
TOP = "top level"
MODEL_LIBRARIES = {"timm", "PIL", "torchvision"}


def layer_map(readme: Path = ROOT / "README.md") -> dict[str, int]:
    """`{folder or top-level module: layer}` from the README's map: lines `<layer> <folder>/` or `<layer> <module>`,
    and `<layer> top level` for the modules at the top of the package that are not listed by name."""
    text = readme.read_text(encoding="utf-8")
    block = text[text.index("## Layout"):].split("```")[1]
    ranks = {}
    for line in block.splitlines():
        m = re.match(r"(\d+) (top level|\w+/?)\s", line + " ")
        if m:
            ranks[m.group(2).rstrip("/")] = int(m.group(1))
    return ranks


def module_name(file: Path, package: Path) -> str:
    parts = list(file.relative_to(package.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def resolve(module: str, is_package: bool, node: ast.ImportFrom) -> list[str]:
    """The package modules an `ImportFrom` names (its module and, for `from . import x`, each x)."""
    if node.level:
        base = module.split(".") if is_package else module.split(".")[:-1]
        base = base[:len(base) - node.level + 1]
        target = ".".join(base + ([node.module] if node.module else []))
    else:
        target = node.module or ""
    return [target] if node.module else [f"{target}.{a.name}" for a in node.names]


def package_imports(package: Path = PACKAGE, module_level_only: bool = False) -> dict[str, set[str]]:
    """`{module: the modules it imports}` for every module of `package` (its own modules and third-party ones,
    by name); `module_level_only` leaves out imports inside functions."""
    graph: dict[str, set[str]] = {}
    for file in sorted(package.rglob("*.py")):
        module = module_name(file, package)
        tree = ast.parse(file.read_text(encoding="utf-8"))
        nodes = ast.walk(tree) if not module_level_only else _module_level(tree.body)
        imported = set()
        for node in nodes:
            if isinstance(node, ast.Import):
                imported.update(a.name for a in node.names)
            elif isinstance(node, ast.ImportFrom) and node.module != "__future__":
                imported.update(resolve(module, file.name == "__init__.py", node))
        graph[module] = imported
    return graph


def _module_level(body: list[ast.stmt]) -> list[ast.stmt]:
    """The statements run when the module is imported (`if`/`try` blocks included, `if TYPE_CHECKING` not)."""
    out = []
    for node in body:
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            continue
        out.append(node)
        if isinstance(node, (ast.If, ast.Try)):
            out.extend(_module_level(node.body + node.orelse + getattr(node, "finalbody", [])))
    return out


def home(module: str, ranks: dict[str, int]) -> tuple[str, int]:
    """The folder (or top-level module, or TOP) a package module belongs to, and its layer."""
    parts = module.split(".")
    if len(parts) == 1:
        return TOP, ranks[TOP]  # the package's own __init__
    name = parts[1]
    return (name, ranks[name]) if name in ranks else (TOP, ranks[TOP])


def wrong_way_imports(graph: dict[str, set[str]], ranks: dict[str, int], package: str = "fastfreeze") -> list[str]:
    """Each import of a module of a higher layer, or of another folder of the same layer."""
    wrong = []
    for module, imported in graph.items():
        where, rank = home(module, ranks)
        for target in sorted(imported):
            if target.split(".")[0] != package or target == package:
                continue
            target_home, target_rank = home(target, ranks)
            if target_rank > rank or (target_rank == rank and target_home != where):
                wrong.append(f"{module} (layer {rank}, {where}) imports {target} (layer {target_rank}, {target_home})")
    return wrong


def reachable(graph: dict[str, set[str]], start: str, package: str = "fastfreeze") -> set[str]:
    """Every module `start` imports, directly or through the package's modules (with the `__init__` of each
    subpackage on the way; the top package's `__init__` is the public API, which imports everything)."""
    seen, todo = set(), [start]
    while todo:
        module = todo.pop()
        if module in seen:
            continue
        seen.add(module)
        parts = module.split(".")
        parents = [".".join(parts[:k]) for k in range(2, len(parts))]
        todo.extend(t for t in graph.get(module, set()) | set(parents) if t in graph or t.split(".")[0] != package)
    return seen


# --------------------------------------------------------------------------------------------------------------
def test_the_readme_maps_every_folder_and_the_top_level():
    ranks = layer_map()
    folders = {p.name for p in PACKAGE.iterdir() if (p / "__init__.py").exists()}
    assert folders <= set(ranks) and TOP in ranks
    tops = [p.stem for p in PACKAGE.glob("*.py") if p.stem not in ranks]
    assert len(tops) + sum(1 for name in ranks if (PACKAGE / f"{name}.py").exists()) <= 15


def test_imports_go_one_way():
    assert wrong_way_imports(package_imports(), layer_map()) == []


def test_the_check_catches_a_wrong_way_import_in_a_graph():
    graph, ranks = package_imports(), layer_map()
    graph["fastfreeze.core.loop"] = graph["fastfreeze.core.loop"] | {"fastfreeze.vision"}
    graph["fastfreeze.inference.tta"] = graph["fastfreeze.inference.tta"] | {"fastfreeze.finetune.lr_finder"}
    assert wrong_way_imports(graph, ranks) == [
        "fastfreeze.core.loop (layer 1, core) imports fastfreeze.vision (layer 5, top level)",
        "fastfreeze.inference.tta (layer 4, inference) imports fastfreeze.finetune.lr_finder (layer 4, finetune)"]


@pytest.mark.parametrize("line", ["from ..vision import vision_learner", "from .. import vision",
                                  "import fastfreeze.vision"])
def test_the_check_catches_the_core_importing_vision_learner_in_a_copy_of_the_package(tmp_path, line):
    copy = tmp_path / "fastfreeze"
    shutil.copytree(PACKAGE, copy, ignore=shutil.ignore_patterns("__pycache__"))
    assert wrong_way_imports(package_imports(copy), layer_map()) == []
    loop = copy / "core" / "loop.py"
    loop.write_text(loop.read_text() + f"\n{line}\n")
    assert [w for w in wrong_way_imports(package_imports(copy), layer_map())
            if w.startswith("fastfreeze.core.loop ")] == [
        "fastfreeze.core.loop (layer 1, core) imports fastfreeze.vision (layer 5, top level)"]


def test_the_core_needs_no_model_library():
    graph = package_imports(module_level_only=True)
    libraries = {m.split(".")[0] for m in reachable(graph, "fastfreeze.core.loop")}
    assert not libraries & MODEL_LIBRARIES and "torch" in libraries
    # and the check sees them where they are imported
    assert {"timm", "PIL"} <= {m.split(".")[0] for m in reachable(graph, "fastfreeze.vision")}


def test_subpackage_inits_import_nothing():
    for init in PACKAGE.glob("*/__init__.py"):
        tree = ast.parse(init.read_text(encoding="utf-8"))
        assert not [n for n in ast.walk(tree) if isinstance(n, (ast.Import, ast.ImportFrom))], init
