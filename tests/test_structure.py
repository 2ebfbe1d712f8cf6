"""Plain structure checks of the package's code (docs/ARCHITECTURE.md): every function fits on a screen."""
import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "personseg"
MAX_LINES = 80


def test_no_function_is_over_80_lines():
    long = []
    for path in sorted(PACKAGE.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                lines = node.end_lineno - node.lineno + 1
                if lines > MAX_LINES:
                    long.append(f"{path.relative_to(PACKAGE.parent)}:{node.lineno} {node.name} ({lines} lines)")
    assert not long, "split these functions:\n" + "\n".join(long)
