"""Progress bars of wait_any/wait_all and status providers."""

from __future__ import annotations

import io
import re
import threading
from collections.abc import Iterator
from concurrent.futures import Future
from typing import Any

import pytest

from smart_future import SmartFuture, _progress, register_status_provider, wait_all, wait_any
from smart_future._status import collect_status

EVENT_TIMEOUT = 30.0  # generous deadlock guard for waits on events


def finished(value: Any = None, exc: BaseException | None = None) -> Future[Any]:
    future: Future[Any] = Future()
    if exc is not None:
        future.set_exception(exc)
    else:
        future.set_result(value)
    return future


def final_bar(err: str) -> str:
    """The last state the bar printed (tqdm redraws with \\r)."""
    frames = [f for f in re.split(r"[\r\n]", err) if f.strip()]
    assert frames, f"no progress bar output in {err!r}"
    return frames[-1]


@pytest.fixture
def fast_refresh(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_progress, "REFRESH_INTERVAL", 0.02)


class FakeTty(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_wait_all_bar_counts_and_failures(capsys: pytest.CaptureFixture[str]) -> None:
    futures = [finished(i) for i in range(5)] + [finished(exc=ValueError(i)) for i in range(2)]
    done = wait_all(futures, progress=True, desc="crunch", log_exceptions=False)
    assert len(done) == 7
    bar = final_bar(capsys.readouterr().err)
    assert "crunch" in bar
    assert "7/7" in bar
    assert "failed=2" in bar


def test_cancelled_counted(capsys: pytest.CaptureFixture[str]) -> None:
    cancelled: Future[Any] = Future()
    cancelled.cancel()
    wait_all([finished(1), cancelled], progress=True)
    bar = final_bar(capsys.readouterr().err)
    assert "2/2" in bar
    assert "cancelled=1" in bar
    assert "failed" not in bar


def test_bar_counts_while_waiting(capsys: pytest.CaptureFixture[str]) -> None:
    futures: list[Future[int]] = [Future() for _ in range(3)]
    it = wait_any(futures, progress=True)
    futures[1].set_result(1)
    first = next(it)
    assert first.result() == 1
    futures[0].set_result(0)
    futures[2].set_exception(RuntimeError("x"))
    rest = list(it)
    assert len(rest) == 2
    bar = final_bar(capsys.readouterr().err)
    assert "3/3" in bar
    assert "failed=1" in bar


def test_no_output_by_default(capsys: pytest.CaptureFixture[str]) -> None:
    wait_all([finished(1), finished(exc=ValueError())], log_exceptions=False)
    list(wait_any([finished(2)]))
    captured = capsys.readouterr()
    assert captured.err == ""
    assert captured.out == ""


def test_auto_is_off_when_stderr_is_not_a_terminal(capsys: pytest.CaptureFixture[str]) -> None:
    wait_all([finished(1)], progress="auto")
    list(wait_any([finished(1)], progress="auto"))
    assert capsys.readouterr().err == ""


def test_auto_is_on_when_stderr_is_a_terminal(monkeypatch: pytest.MonkeyPatch) -> None:
    fake = FakeTty()
    monkeypatch.setattr("sys.stderr", fake)
    wait_all([finished(1), finished(2)], progress="auto")
    assert "2/2" in final_bar(fake.getvalue())


def test_bad_progress_value_is_rejected_at_call() -> None:
    with pytest.raises(ValueError, match="progress must be"):
        wait_any([finished(1)], progress="yes")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="progress must be"):
        wait_all([finished(1)], progress=2)  # type: ignore[arg-type]


def test_bar_closes_on_timeout(capsys: pytest.CaptureFixture[str]) -> None:
    futures: list[Future[int]] = [finished(1), Future(), Future()]
    with pytest.raises(TimeoutError, match="2 of 3"):
        wait_all(futures, progress=True, timeout=0.05)
    bar = final_bar(capsys.readouterr().err)
    assert "1/3" in bar
    assert _open_bars() == 0


def test_bar_closes_when_generator_is_closed(capsys: pytest.CaptureFixture[str]) -> None:
    futures: list[Future[int]] = [finished(1), Future()]
    it = wait_any(futures, progress=True)
    next(it)
    assert _open_bars() == 1
    it.close()  # type: ignore[attr-defined]
    assert _open_bars() == 0
    assert "1/2" in final_bar(capsys.readouterr().err)


def test_bar_closes_when_callback_raises(capsys: pytest.CaptureFixture[str]) -> None:
    def callback(sf: SmartFuture[int]) -> None:
        raise RuntimeError("callback failed")

    with pytest.raises(RuntimeError, match="callback failed"):
        list(wait_any([finished(1), finished(2)], progress=True, callback=callback))
    assert _open_bars() == 0
    capsys.readouterr()


def test_bar_closes_on_keyboard_interrupt(capsys: pytest.CaptureFixture[str]) -> None:
    pending: Future[int] = Future()

    def callback(sf: SmartFuture[int]) -> None:
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        list(wait_any([finished(1), pending], progress=True, callback=callback))
    assert _open_bars() == 0
    assert pending.cancelled()  # the usual Ctrl-C handling still runs
    capsys.readouterr()


def test_status_provider_text_appears(capsys: pytest.CaptureFixture[str]) -> None:
    unregister = register_status_provider(lambda: "3 hosts, 12 in flight, ETA 40s")
    try:
        wait_all([finished(1)], progress=True)
    finally:
        unregister()
    assert "3 hosts, 12 in flight, ETA 40s" in final_bar(capsys.readouterr().err)


def test_status_refreshes_while_waiting(
    capsys: pytest.CaptureFixture[str], fast_refresh: None
) -> None:
    """The provider is polled repeatedly while nothing completes; its latest text is shown."""
    future: Future[int] = Future()
    calls = 0
    polled_again = threading.Event()

    def provider() -> str:
        nonlocal calls
        calls += 1
        if calls >= 3:
            polled_again.set()
        return f"heartbeat {calls}"

    def finish_when_polled() -> None:
        polled_again.wait(EVENT_TIMEOUT)
        future.set_result(1)

    unregister = register_status_provider(provider)
    thread = threading.Thread(target=finish_when_polled)
    thread.start()
    try:
        wait_all([future], progress=True, timeout=EVENT_TIMEOUT)
    finally:
        unregister()
        thread.join(EVENT_TIMEOUT)
    assert polled_again.is_set()
    err = capsys.readouterr().err
    assert "heartbeat 1" in err
    assert re.search(r"heartbeat (\d+)", final_bar(err)) is not None
    shown = [int(n) for n in re.findall(r"heartbeat (\d+)", err)]
    assert max(shown) >= 3


def test_status_providers_empty_and_failing_are_skipped() -> None:
    def broken() -> str:
        raise RuntimeError("provider bug")

    removers = [
        register_status_provider(lambda: None),
        register_status_provider(lambda: ""),
        register_status_provider(broken),
        register_status_provider(lambda: "ok"),
    ]
    try:
        assert collect_status() == ["ok"]
    finally:
        for remove in removers:
            remove()
            remove()  # harmless twice
    assert collect_status() == []


def test_status_provider_must_be_callable() -> None:
    with pytest.raises(TypeError, match="callable"):
        register_status_provider("not callable")  # type: ignore[arg-type]


def test_no_status_poll_without_progress() -> None:
    calls: list[int] = []

    def provider() -> str:
        calls.append(1)
        return "x"

    unregister = register_status_provider(provider)
    try:
        wait_all([finished(1)])
        list(wait_any([finished(1)]))
    finally:
        unregister()
    assert calls == []


# ----------------------------------------------------------------------


_open: list[int] = [0]


@pytest.fixture(autouse=True)
def _track_bars(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Count WaitProgress bars opened and not closed."""
    _open[0] = 0
    real_init = _progress.WaitProgress.__init__
    real_close = _progress.WaitProgress.close

    def init(self: _progress.WaitProgress, total: int, desc: str | None) -> None:
        real_init(self, total, desc)
        _open[0] += 1

    def close(self: _progress.WaitProgress) -> None:
        real_close(self)
        _open[0] -= 1

    monkeypatch.setattr(_progress.WaitProgress, "__init__", init)
    monkeypatch.setattr(_progress.WaitProgress, "close", close)
    yield


def _open_bars() -> int:
    return _open[0]


# ----------------------------------------------------------------------
# In a real Jupyter kernel
# ----------------------------------------------------------------------


@pytest.mark.timeout(600)
def test_in_a_jupyter_kernel(tmp_path: Any) -> None:
    """progress="auto" is on in a kernel, and ExecutorStats renders as HTML there."""
    nbformat = pytest.importorskip("nbformat")
    nbclient = pytest.importorskip("nbclient")
    pytest.importorskip("ipykernel")
    cells = [
        "from smart_future import _progress\nprint(_progress.in_jupyter_kernel())",
        "from parallelize import default_executor, parallelize, wait_all\n"
        "@parallelize\n"
        "def double(x):\n"
        "    return 2 * x\n"
        "print(sum(wait_all([double(i) for i in range(5)], progress='auto')))",
        "default_executor().stats()",
    ]
    notebook = nbformat.v4.new_notebook()
    notebook.cells = [nbformat.v4.new_code_cell(source) for source in cells]
    client = nbclient.NotebookClient(
        notebook,
        timeout=300,
        kernel_name="python3",
        resources={"metadata": {"path": str(tmp_path)}},
    )
    client.execute()

    def texts(cell: Any, name: str) -> str:
        return "".join(o.get("text", "") for o in cell.outputs if o.get("name") == name)

    first, second, third = notebook.cells
    assert texts(first, "stdout").strip() == "True"
    assert texts(second, "stdout").strip() == "20"
    # A widget with ipywidgets installed, else tqdm's text bar on stderr.
    widget = any(
        "application/vnd.jupyter.widget-view+json" in o.get("data", {}) for o in second.outputs
    )
    assert widget or "5/5" in texts(second, "stderr"), second.outputs
    html = "".join(o.get("data", {}).get("text/html", "") for o in third.outputs)
    assert "parallelize-stats" in html and "default-thread" in html


def test_final_bar_shows_the_status_at_the_end(capsys: pytest.CaptureFixture[str]) -> None:
    """A short job refreshes the status once at the start; the bar left on screen must
    still show the status once the work is done, not the stale first line."""
    future: Future[int] = Future()

    def provider() -> str:
        if future.done():
            return "idle"
        future.set_result(1)  # the work ends right after the first status is taken
        return "busy"

    unregister = register_status_provider(provider)
    try:
        wait_all([future], progress=True, timeout=EVENT_TIMEOUT)
    finally:
        unregister()
    last = final_bar(capsys.readouterr().err)
    assert "idle" in last and "busy" not in last


def test_kernel_without_ipywidgets_gets_a_quiet_text_bar(monkeypatch: pytest.MonkeyPatch) -> None:
    import warnings

    import tqdm.std

    monkeypatch.setattr(_progress, "in_jupyter_kernel", lambda: True)
    monkeypatch.setattr(_progress, "_has_ipywidgets", lambda: False)
    assert _progress._tqdm_class() is tqdm.std.tqdm
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # "IProgress not found" would be a TqdmWarning
        wait_all([finished(1)], progress=True)
