"""Static typing of the public API: mypy --strict (and pyright, when it runs) on tests/typing/.

``tests/typing/check_decorator.py`` must type-check cleanly (its ``assert_type``
calls pin what a decorated function, a SmartFuture and the waits look like);
``tests/typing/check_errors.py`` must give an error on exactly the lines marked
``# error: CODE``. Only diagnostics in those files count: the packages
themselves are checked by ``mypy`` in scripts/test.sh.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
TYPING = ROOT / "tests" / "typing"
GOOD = TYPING / "check_decorator.py"
BAD = TYPING / "check_errors.py"
_MARK = re.compile(r"#\s*error:\s*([\w-]+)")
_MYPY_LINE = re.compile(
    r"^(?P<path>[^:]+):(?P<line>\d+): error: (?P<msg>.*?)(?:  \[(?P<code>[\w-]+)\])?$"
)


def expected_errors(path: Path) -> dict[int, str]:
    """{line number: mypy error code} for the lines marked ``# error: CODE``."""
    marks = {}
    for number, text in enumerate(path.read_text().splitlines(), start=1):
        match = _MARK.search(text)
        if match:
            marks[number] = match.group(1)
    return marks


@pytest.fixture(scope="module")
def mypy_errors() -> dict[str, list[tuple[int, str, str]]]:
    """Run mypy once on both files: {file name: [(line, code, message), ...]}."""
    api = pytest.importorskip("mypy.api")
    stdout, stderr, status = api.run(
        [
            "--config-file",
            str(ROOT / "pyproject.toml"),
            "--strict",
            # typing.assert_type is new in 3.11; the files are never run.
            "--python-version",
            "3.11",
            "--show-error-codes",
            "--no-pretty",
            "--no-error-summary",
            str(GOOD),
            str(BAD),
        ]
    )
    assert status in (0, 1), f"mypy crashed ({status}):\n{stdout}\n{stderr}"
    errors: dict[str, list[tuple[int, str, str]]] = {GOOD.name: [], BAD.name: []}
    for line in stdout.splitlines():
        match = _MYPY_LINE.match(line)
        if match is None:
            continue
        name = Path(match["path"]).name
        if name in errors and Path(match["path"]).parent.name == "typing":
            errors[name].append((int(match["line"]), match["code"] or "", match["msg"]))
    return errors


@pytest.mark.timeout(900)  # a cold mypy cache on a busy 2-core machine is slow
def test_mypy_accepts_the_typed_api(mypy_errors: dict[str, list[tuple[int, str, str]]]) -> None:
    assert mypy_errors[GOOD.name] == []


@pytest.mark.timeout(900)
def test_mypy_reports_misuse(mypy_errors: dict[str, list[tuple[int, str, str]]]) -> None:
    expected = expected_errors(BAD)
    assert expected, "no '# error:' marks found"
    got = {line: code for line, code, _ in mypy_errors[BAD.name]}
    assert got == expected, mypy_errors[BAD.name]


def test_calling_with_wrong_argument_type_is_an_error(
    mypy_errors: dict[str, list[tuple[int, str, str]]],
) -> None:
    lines = BAD.read_text().splitlines()
    line = next(i for i, text in enumerate(lines, start=1) if 'f("not an int")' in text)
    messages = [msg for number, _, msg in mypy_errors[BAD.name] if number == line]
    assert messages and '"str"' in messages[0] and '"int"' in messages[0], messages


# ----------------------------------------------------------------------
# pyright
# ----------------------------------------------------------------------


def _pyright() -> list[str]:
    local = Path(sys.executable).parent / "pyright"
    found = str(local) if local.exists() else shutil.which("pyright")
    if found is None:
        pytest.skip("pyright is not installed (it is in the dev extra: pip install pyright)")
    return [found]


@pytest.fixture(scope="module")
def pyright_errors() -> dict[str, list[tuple[int, str]]]:
    command = _pyright()
    try:
        proc = subprocess.run(
            [*command, "--outputjson", "--pythonpath", sys.executable, str(GOOD), str(BAD)],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=600,
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        pytest.skip(f"pyright could not run: {exc}")
    try:
        report = json.loads(proc.stdout)
    except json.JSONDecodeError:
        # pyright (the pip wrapper) fetches its node package from the npm registry on
        # first use; without it there is no JSON report.
        pytest.skip(
            f"pyright did not produce a report (exit {proc.returncode}): "
            f"{(proc.stderr or proc.stdout)[-500:]}"
        )
    errors: dict[str, list[tuple[int, str]]] = {GOOD.name: [], BAD.name: []}
    for diag in report.get("generalDiagnostics", []):
        if diag.get("severity") != "error":
            continue
        name = Path(diag["file"]).name
        if name in errors:
            errors[name].append((diag["range"]["start"]["line"] + 1, diag.get("message", "")))
    return errors


@pytest.mark.timeout(900)
def test_pyright_accepts_the_typed_api(pyright_errors: dict[str, list[tuple[int, str]]]) -> None:
    assert pyright_errors[GOOD.name] == []


@pytest.mark.timeout(900)
def test_pyright_reports_misuse(pyright_errors: dict[str, list[tuple[int, str]]]) -> None:
    got = {line for line, _ in pyright_errors[BAD.name]}
    assert got == set(expected_errors(BAD)), pyright_errors[BAD.name]
