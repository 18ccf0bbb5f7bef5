"""Packages depend one way: smart_future <- parallelize <- remote. A lower package never
imports a higher one (not even by a string given to importlib), and remote uses only
parallelize's public names and its extension API, ``parallelize.ext``."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
ORDER = ["smart_future", "parallelize", "remote"]


def _imports(path: Path) -> list[str]:
    tree = ast.parse(path.read_text(), str(path))
    found: list[str] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.append(node.module)
        elif (
            isinstance(node, ast.Call)
            and getattr(node.func, "attr", getattr(node.func, "id", "")) == "import_module"
            and node.args
            and isinstance(node.args[0], ast.Constant)
            and isinstance(node.args[0].value, str)
        ):
            found.append(node.args[0].value)
    return found


def _modules(package: str) -> list[Path]:
    return sorted((ROOT / package).rglob("*.py"))


@pytest.mark.parametrize("package", ORDER)
def test_lower_packages_never_import_higher_ones(package: str) -> None:
    higher = ORDER[ORDER.index(package) + 1 :]
    for path in _modules(package):
        for name in _imports(path):
            top = name.split(".")[0]
            assert top not in higher, f"{path.relative_to(ROOT)} imports {name}"


def test_remote_uses_only_public_parallelize_api() -> None:
    for path in _modules("remote"):
        for name in _imports(path):
            if name.split(".")[0] == "parallelize":
                assert name in ("parallelize", "parallelize.ext"), (
                    f"{path.relative_to(ROOT)} imports {name}: use parallelize or parallelize.ext"
                )


def test_the_method_registry_finds_remote_through_its_entry_point() -> None:
    import subprocess
    import sys

    # a fresh interpreter that never imported remote: the entry point provides it
    code = (
        "import sys\n"
        "from parallelize import Method, default_executor\n"
        "assert 'remote' not in sys.modules\n"
        "ex = default_executor(Method.REMOTE)\n"
        "print(type(ex).__module__)\n"
        "ex.shutdown()\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True
    )
    assert out.stdout.strip() == "remote._executor"


def test_a_method_without_a_provider_names_the_fix(monkeypatch: pytest.MonkeyPatch) -> None:
    from parallelize import Method, _registry

    monkeypatch.setattr(_registry, "_factories", {})
    monkeypatch.setattr(_registry, "_loaded", True)  # as if no plugin were installed
    with pytest.raises(RuntimeError, match=r"Method.REMOTE has no executor: install"):
        _registry.method_factory(Method.REMOTE)
