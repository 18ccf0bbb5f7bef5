"""RunHandle: the light call handle REMOTE's embedded pool gives the PROCESS pool."""

from __future__ import annotations

from typing import Any

import pytest

from parallelize.ext import RunHandle, RunState


def _recorder() -> tuple[list[tuple[Any, BaseException | None, float]], RunHandle, list[str]]:
    done: list[tuple[Any, BaseException | None, float]] = []
    started: list[str] = []
    handle = RunHandle(
        lambda value, error, seconds: done.append((value, error, seconds)),
        lambda: started.append("started"),
    )
    return done, handle, started


def test_a_started_call_reports_its_value_once_with_its_run_time() -> None:
    done, handle, started = _recorder()
    assert handle.set_running_or_notify_cancel()
    assert started == ["started"] and handle.state is RunState.RUNNING
    handle.run_seconds = 0.25
    handle.set_result(42)
    handle.set_result(43)  # a second answer (a dead worker's last frame) is dropped
    assert done == [(42, None, 0.25)]
    assert not handle.cancel() and not handle.stop()  # answered: nothing to cancel


def test_an_error_is_reported_as_an_error() -> None:
    done, handle, _ = _recorder()
    error = ValueError("boom")
    handle.set_exception(error)  # answered before it was seen starting
    assert done == [(None, error, 0.0)]
    assert handle.state is RunState.FINISHED


def test_a_cancelled_call_never_starts_nor_reports_and_runs_its_cancel_hooks() -> None:
    done, handle, started = _recorder()
    flagged: list[RunHandle] = []
    handle.add_done_callback(flagged.append)
    assert handle.cancel() and handle.cancelled()
    assert flagged == [handle]
    assert not handle.set_running_or_notify_cancel()
    handle.set_result(1)
    assert done == [] and started == []
    late: list[RunHandle] = []
    handle.add_done_callback(late.append)  # added after the cancel: runs at once
    assert late == [handle]


def test_stop_cancels_a_running_call_but_cancel_does_not() -> None:
    done, handle, _ = _recorder()
    flagged: list[RunHandle] = []
    handle.add_done_callback(flagged.append)
    handle.set_running_or_notify_cancel()
    assert not handle.cancel()  # the standard rule: a running call is not cancelled
    assert handle.stop() and handle.cancelled()
    assert flagged == [handle]
    handle.set_exception(RuntimeError("its worker was killed"))
    assert done == []


def test_finished_calls_do_not_keep_cancel_hooks() -> None:
    _, handle, _ = _recorder()
    handle.set_result(None)
    handle.add_done_callback(lambda _: pytest.fail("a finished call is never cancelled"))
    assert not handle.stop()


def test_the_skip_flag_is_set_when_a_waiting_call_is_cancelled_whenever_it_was_given() -> None:
    flags = bytearray(8)
    _, waiting, _ = _recorder()
    waiting.set_skip_flag(flags, 3)
    assert flags == bytearray(8)  # not cancelled: the worker runs it
    assert waiting.cancel()
    assert flags[3] == 1

    # Cancelled on another thread before the pool handed over the flag: set at once.
    flags = bytearray(8)
    _, early, _ = _recorder()
    assert early.cancel()
    early.set_skip_flag(flags, 5)
    assert flags[5] == 1

    # Answered: a later stop() sets nothing (the position may serve another call).
    flags = bytearray(8)
    _, answered, _ = _recorder()
    answered.set_skip_flag(flags, 1)
    answered.set_result(None)
    assert not answered.stop()
    assert flags == bytearray(8)
