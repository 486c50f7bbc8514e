"""The package boundary and the import layering of docs/architecture.md."""

import ast
import subprocess
import sys
from pathlib import Path

from peft_kadapt.training.methods import methods_markdown


ROOT = Path(__file__).parents[1]
PACKAGE = ROOT / "peft_kadapt"


def test_the_core_package_imports_no_training_dependency():
    code = "import sys, peft_kadapt, peft_kadapt.budget, peft_kadapt.intrinsic, peft_kadapt.hub\n"
    code += "print(sorted({'datasets', 'matplotlib', 'onnx', 'peft_kadapt.training'} & set(sys.modules)))"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True)
    assert done.stdout.strip() == "[]"


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports_of(path: Path) -> set[str]:
    """Modules of this package that `path` imports, anywhere in the file (also inside functions)."""
    name = module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            base = package.rsplit(".", node.level - 1)[0] if node.level else ""
            target = ".".join(x for x in (base, node.module) if x)
            candidates = [target] + [f"{target}.{a.name}" for a in node.names]
        elif isinstance(node, ast.Import):
            candidates = [a.name for a in node.names]
        else:
            continue
        found |= {c for c in candidates if c.startswith("peft_kadapt") and _exists(c)}
    return found - {name}


def _exists(module: str) -> bool:
    path = ROOT.joinpath(*module.split("."))
    return path.with_suffix(".py").exists() or (path / "__init__.py").exists()


def graph() -> dict[str, set[str]]:
    return {module_name(p): imports_of(p) for p in PACKAGE.rglob("*.py")}


def test_core_modules_never_import_the_training_tools():
    for module, imported in graph().items():
        if not module.startswith("peft_kadapt.training"):
            assert not {m for m in imported if m.startswith("peft_kadapt.training")}, module


def test_no_import_cycle():
    edges = graph()
    # a package's __init__ re-exporting its own modules is not a cycle of files
    edges = {m: {t for t in ts if not m.startswith(t + ".")} for m, ts in edges.items()}
    state: dict[str, int] = {}

    def visit(m, path):
        state[m] = 1
        for t in edges.get(m, ()):
            assert state.get(t) != 1, f"import cycle: {' -> '.join(path + [t])}"
            if t not in state:
                visit(t, path + [t])
        state[m] = 2

    for m in edges:
        if m not in state:
            visit(m, [m])


def test_examples_use_public_api_only():
    for path in (ROOT / "examples").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("peft_kadapt"):
                assert not any(part.startswith("_") for part in node.module.split(".")), (path, node.module)
                assert not any(a.name.startswith("_") for a in node.names), (path, [a.name for a in node.names])


def test_the_docs_method_table_is_the_method_table():
    assert methods_markdown() in (ROOT / "docs" / "training.md").read_text()


def test_no_function_of_the_package_is_longer_than_60_lines():
    long = [
        f"{path.relative_to(ROOT)}:{node.name} ({node.end_lineno - node.lineno + 1} lines)"
        for path in PACKAGE.rglob("*.py")
        for node in ast.walk(ast.parse(path.read_text()))
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.end_lineno - node.lineno + 1 > 60
    ]
    assert not long, long
