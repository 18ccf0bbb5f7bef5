from __future__ import annotations

import inspect
import threading
from concurrent.futures import ThreadPoolExecutor

import pytest

import parallelize as par
from parallelize import Method, SmartFuture, parallelize

TIMEOUT = 30.0


@parallelize
def add(x: int, y: int = 1) -> int:
    """Add two numbers."""
    return x + y


@parallelize(method=Method.PROCESS)
def square_in_process(x: int) -> int:
    return x * x


def test_bare_decorator_returns_smart_future_on_a_thread() -> None:
    result = add(1, 2)
    assert isinstance(result, SmartFuture)
    assert result.result(TIMEOUT) == 3
    assert result + 2 == 5


@pytest.mark.parametrize(
    "decorator",
    [
        parallelize(),
        parallelize(method=Method.THREAD),
        parallelize(Method.THREAD),
        parallelize(method="thread"),
        parallelize("THREAD"),
    ],
)
def test_all_spellings_of_the_thread_decorator(decorator: object) -> None:
    main_thread = threading.get_ident()

    def where() -> int:
        return threading.get_ident()

    wrapped = decorator(where)  # type: ignore[operator]
    assert wrapped().result(TIMEOUT) != main_thread


def test_process_method_runs_in_another_process() -> None:
    import os

    @parallelize(method=Method.PROCESS)
    def pid() -> int:
        return os.getpid()

    assert pid().result(TIMEOUT) != os.getpid()
    assert square_in_process(7).result(TIMEOUT) == 49


def test_metadata_is_kept() -> None:
    assert add.__name__ == "add"
    assert add.__doc__ == "Add two numbers."
    assert add.__wrapped__(1, 2) == 3
    assert str(inspect.signature(add)) == "(x: 'int', y: 'int' = 1) -> 'int'"


def test_closures_and_lambdas() -> None:
    factor = 3

    @parallelize
    def scale(x: int) -> int:
        return x * factor

    triple = parallelize(lambda x: x * 3)
    assert scale(2).result(TIMEOUT) == 6
    assert triple(4).result(TIMEOUT) == 12


class Counter:
    def __init__(self, start: int) -> None:
        self.start = start

    @parallelize
    def plus(self, x: int) -> int:
        return self.start + x

    @parallelize
    @staticmethod
    def static_double(x: int) -> int:
        return 2 * x

    @parallelize
    @classmethod
    def class_name(cls, suffix: str) -> str:
        return cls.__name__ + suffix

    @parallelize(method=Method.PROCESS)
    def plus_in_process(self, x: int) -> int:
        return self.start + x


def test_methods_static_and_class_methods() -> None:
    counter = Counter(10)
    assert counter.plus(5).result(TIMEOUT) == 15
    assert Counter.static_double(4).result(TIMEOUT) == 8
    assert counter.static_double(5).result(TIMEOUT) == 10
    assert Counter.class_name("!").result(TIMEOUT) == "Counter!"
    assert counter.plus_in_process(1).result(TIMEOUT) == 11


@pytest.mark.parametrize("method", [Method.THREAD, Method.PROCESS])
def test_smart_future_arguments_are_resolved(method: Method) -> None:
    gate = threading.Event()

    @parallelize
    def slow_value() -> int:
        gate.wait(TIMEOUT)
        return 20

    @parallelize(method=method)
    def combine(a: int, b: int, *, c: int) -> int:
        return a + b + c

    pending = slow_value()
    # The call does not block while its argument is pending.
    combined = combine(pending, add(1, 1), c=add(0, 0))
    assert not combined.done()
    gate.set()
    assert combined.result(TIMEOUT) == 22


def test_failed_argument_fails_the_dependent_call_without_running_it() -> None:
    ran = threading.Event()

    @parallelize
    def fail() -> int:
        raise KeyError("missing")

    @parallelize
    def use(x: int) -> int:
        ran.set()
        return x

    with pytest.raises(KeyError, match="missing"):
        use(fail()).result(TIMEOUT)
    assert not ran.is_set()


def test_cancelling_a_dependent_call_before_it_is_submitted() -> None:
    gate = threading.Event()
    ran = threading.Event()

    @parallelize
    def blocker() -> int:
        gate.wait(TIMEOUT)
        return 1

    @parallelize
    def dependent(x: int) -> None:
        ran.set()

    future = dependent(blocker())
    assert future.cancel()
    gate.set()
    assert future.cancelled()
    assert not ran.wait(0.2)


def test_explicit_executor() -> None:
    with ThreadPoolExecutor(1, thread_name_prefix="explicit") as pool:

        @parallelize(executor=pool)
        def name() -> str:
            return threading.current_thread().name

        assert name().result(TIMEOUT).startswith("explicit")


@pytest.mark.parametrize("target", [42, "text", None, [1, 2]])
def test_decorating_a_non_callable_is_a_type_error(target: object) -> None:
    with pytest.raises(TypeError, match="decorates a function or method"):
        parallelize(method=Method.THREAD)(target)


def test_decorating_a_class_is_a_type_error() -> None:
    with pytest.raises(TypeError, match="not the class Counter"):
        parallelize(Counter)


def test_decorating_a_coroutine_function_is_a_type_error() -> None:
    async def coro() -> None:
        pass

    with pytest.raises(TypeError, match="coroutine"):
        parallelize(coro)


def test_unknown_method_is_a_value_error() -> None:
    with pytest.raises(ValueError, match=r"unknown parallelize method 'gpu'.*Method.THREAD"):
        parallelize(method="gpu")


def test_unknown_option_names_the_fix() -> None:
    with pytest.raises(TypeError, match=r"unknown option 'methd'.*Did you mean 'method'"):
        parallelize(methd=Method.THREAD)


def test_bad_executor_option() -> None:
    with pytest.raises(TypeError, match=r"needs a concurrent\.futures\.Executor"):
        parallelize(executor="threads")
    with pytest.raises(TypeError, match="either method= or executor="):
        parallelize(method=Method.THREAD, executor=ThreadPoolExecutor(1))


def test_unpicklable_argument_for_process_raises_at_call_time() -> None:
    with pytest.raises(par.PicklingError, match=r"square_in_process.*argument 'x'"):
        square_in_process(threading.Lock())


def test_unpicklable_function_for_process_raises_at_call_time() -> None:
    lock = threading.Lock()

    @parallelize(method=Method.PROCESS)
    def uses_lock() -> bool:
        return lock.locked()

    with pytest.raises(par.PicklingError, match="uses_lock"):
        uses_lock()


def test_remote_method_is_accepted_at_decoration() -> None:
    @parallelize(method=Method.REMOTE)
    def remote_task() -> int:
        return 1

    assert callable(remote_task)
