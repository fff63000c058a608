"""The house rules of docs/design.md: a module imports only from its own floor or lower ones,
and no modules of one package import each other round a circle.

Every ``import facetrip.X`` / ``from facetrip.X import ...`` in the package, at the top of a
module or inside a function, is read from the source (nothing is imported), and the floor
of the importing module is compared with the floor of the imported one.
"""

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "facetrip"

# The floors of docs/design.md, lowest first: the first component below facetrip/ -> floor.
FLOORS = {
    "__init__": 1, "losses": 1, "tf_runtime": 1, "config": 1, "distances": 1, "untrusted_files": 1,
    "data": 2,
    "models": 3,
    "runs": 4,
    "embedding": 5,
    "mining": 6,
    "evaluation": 7,
    "training": 8,
    "verification": 9, "export": 9, "identification": 9,
    "cli": 10, "__main__": 10, "python_api": 10,
}


def _room(dotted: str) -> str:
    """The first component below ``facetrip`` of a dotted module name (``facetrip`` itself: ``__init__``)."""
    parts = dotted.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def _imports(path: Path) -> list[tuple[int, str]]:
    """(line, dotted module) of every facetrip import in a source file."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names if alias.name.split(".")[0] == "facetrip"]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and (node.module or "").split(".")[0] == "facetrip":
            if node.module == "facetrip":  # from facetrip import losses, __version__
                found += [(node.lineno, f"facetrip.{alias.name}") for alias in node.names]
            else:
                found.append((node.lineno, node.module))
    return found


MODULES = sorted(PACKAGE.rglob("*.py"))


def test_every_room_of_the_package_has_a_floor():
    rooms = {path.relative_to(PACKAGE).parts[0].removesuffix(".py") for path in MODULES}
    assert rooms <= set(FLOORS), f"rooms without a floor in FLOORS (and docs/design.md): {sorted(rooms - set(FLOORS))}"


@pytest.mark.parametrize("path", MODULES, ids=lambda path: str(path.relative_to(PACKAGE)))
def test_no_module_imports_from_a_higher_floor(path):
    room = path.relative_to(PACKAGE).parts[0].removesuffix(".py")
    upward = []
    for line, module in _imports(path):
        imported = _room(module)
        if imported in FLOORS and FLOORS[imported] > FLOORS[room]:
            upward.append(f"line {line}: {module} (floor {FLOORS[imported]} > {FLOORS[room]})")
    assert not upward, f"{path.relative_to(PACKAGE)} imports upward: " + "; ".join(upward)


def test_the_rule_is_checked_on_a_module_that_breaks_it(tmp_path):
    """The checker itself: a floor-2 module importing training is caught."""
    broken = tmp_path / "data_module.py"
    broken.write_text("def f():\n    from facetrip.training import train\n")
    assert _imports(broken) == [(2, "facetrip.training")]
    assert FLOORS[_room("facetrip.training")] > FLOORS["data"]


def _sibling_imports(paths, package_root: Path = PACKAGE) -> dict[str, set[str]]:
    """module -> the modules of its own package it imports (a package's ``__init__`` left out: it gathers them)."""
    modules = {".".join(path.relative_to(package_root.parent).with_suffix("").parts): path for path in paths}
    graph = {}
    for name, path in modules.items():
        if name.endswith(".__init__"):
            continue
        package = name.rsplit(".", 1)[0]
        imported = set()
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                candidates = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                candidates = [node.module, *(f"{node.module}.{alias.name}" for alias in node.names)]
            else:
                continue
            imported |= {module for module in candidates if module in modules and module != name
                         and module.rsplit(".", 1)[0] == package and not module.endswith(".__init__")}
        graph[name] = imported
    return graph


def _circles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan), each a circle of imports."""
    index, low, stack, on_stack, circles = {}, {}, [], set(), []

    def visit(module):
        index[module] = low[module] = len(index)
        stack.append(module)
        on_stack.add(module)
        for other in sorted(graph.get(module, ())):
            if other not in index:
                visit(other)
                low[module] = min(low[module], low[other])
            elif other in on_stack:
                low[module] = min(low[module], index[other])
        if low[module] == index[module]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == module:
                    break
            if len(component) > 1:
                circles.append(sorted(component))

    for module in sorted(graph):
        if module not in index:
            visit(module)
    return circles


def test_no_modules_of_one_package_import_each_other_round_a_circle():
    circles = _circles(_sibling_imports(MODULES))
    assert not circles, "import circles (at the top or inside a function): " + "; ".join(" <-> ".join(c) for c in circles)


def test_the_circle_check_finds_a_circle_made_inside_functions(tmp_path):
    """The checker itself: two data modules importing each other, one of them inside a function, are caught."""
    package = tmp_path / "facetrip" / "data"
    package.mkdir(parents=True)
    (package / "__init__.py").write_text("from facetrip.data.first import f\n")
    (package / "first.py").write_text("from facetrip.data.second import g\n")
    (package / "second.py").write_text("def g():\n    from facetrip.data import first\n")
    (package / "third.py").write_text("from facetrip.data.first import f\n")
    graph = _sibling_imports(sorted(package.glob("*.py")), tmp_path / "facetrip")
    assert _circles(graph) == [["facetrip.data.first", "facetrip.data.second"]]
