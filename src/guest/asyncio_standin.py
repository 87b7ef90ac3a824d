# Terrarium's asyncio, shared by the rustpython and wasm tiers: a single-threaded event loop with
# tasks, futures, timers and the common synchronisation primitives, and no sockets,
# pipes, subprocesses, signals or threads. Time passes through time.sleep, which the
# sandbox counts against the run's deadline.
#
# Provided: run, sleep, create_task, ensure_future, gather, wait_for, wait,
# as_completed, shield, timeout, Future, Task, Event, Lock, Semaphore,
# BoundedSemaphore, Condition, Queue (and LifoQueue, PriorityQueue), QueueEmpty,
# QueueFull, CancelledError, TimeoutError, InvalidStateError, get_event_loop,
# get_running_loop, new_event_loop, set_event_loop, iscoroutine,
# iscoroutinefunction, current_task, all_tasks, FIRST_COMPLETED, FIRST_EXCEPTION,
# ALL_COMPLETED.

import collections
import heapq
import time

__all__ = []


class CancelledError(BaseException):
    pass


TimeoutError = TimeoutError


class InvalidStateError(Exception):
    pass


class QueueEmpty(Exception):
    pass


class QueueFull(Exception):
    pass


FIRST_COMPLETED = "FIRST_COMPLETED"
FIRST_EXCEPTION = "FIRST_EXCEPTION"
ALL_COMPLETED = "ALL_COMPLETED"

_PENDING, _CANCELLED, _FINISHED = "PENDING", "CANCELLED", "FINISHED"
_running_loop = None
_current_task = None


class Handle:
    def __init__(self, callback, args, when=None):
        self._callback = callback
        self._args = args
        self._cancelled = False
        self.when = when

    def cancel(self):
        self._cancelled = True

    def cancelled(self):
        return self._cancelled

    def __lt__(self, other):
        return self.when < other.when

    def _run(self):
        if not self._cancelled:
            self._callback(*self._args)


TimerHandle = Handle


class Future:
    def __init__(self, *, loop=None):
        self._loop = loop or get_event_loop()
        self._state = _PENDING
        self._result = None
        self._exception = None
        self._callbacks = []

    def get_loop(self):
        return self._loop

    def done(self):
        return self._state != _PENDING

    def cancelled(self):
        return self._state == _CANCELLED

    def cancel(self, msg=None):
        if self._state != _PENDING:
            return False
        self._state = _CANCELLED
        self._exception = CancelledError(msg) if msg is not None else CancelledError()
        self._schedule_callbacks()
        return True

    def result(self):
        if self._state == _CANCELLED:
            raise self._exception
        if self._state != _FINISHED:
            raise InvalidStateError("Result is not ready.")
        if self._exception is not None:
            raise self._exception
        return self._result

    def exception(self):
        if self._state == _CANCELLED:
            raise self._exception
        if self._state != _FINISHED:
            raise InvalidStateError("Exception is not set.")
        return self._exception

    def set_result(self, result):
        if self._state != _PENDING:
            raise InvalidStateError("invalid state")
        self._result = result
        self._state = _FINISHED
        self._schedule_callbacks()

    def set_exception(self, exception):
        if self._state != _PENDING:
            raise InvalidStateError("invalid state")
        if isinstance(exception, type):
            exception = exception()
        self._exception = exception
        self._state = _FINISHED
        self._schedule_callbacks()

    def add_done_callback(self, fn, *, context=None):
        if self.done():
            self._loop.call_soon(fn, self)
        else:
            self._callbacks.append(fn)

    def remove_done_callback(self, fn):
        n = len(self._callbacks)
        self._callbacks = [cb for cb in self._callbacks if cb != fn]
        return n - len(self._callbacks)

    def _schedule_callbacks(self):
        callbacks, self._callbacks = self._callbacks, []
        for cb in callbacks:
            self._loop.call_soon(cb, self)

    def __await__(self):
        if not self.done():
            yield self
        return self.result()

    __iter__ = __await__


class Task(Future):
    def __init__(self, coro, *, loop=None, name=None):
        super().__init__(loop=loop)
        if not iscoroutine(coro):
            raise TypeError("a coroutine was expected, got %r" % (coro,))
        self._coro = coro
        self._name = name or "Task-%d" % id(self)
        self._waiting_on = None
        self._must_cancel = False
        self._loop._tasks.add(self)
        self._loop.call_soon(self._step)

    def get_name(self):
        return self._name

    def set_name(self, name):
        self._name = str(name)

    def get_coro(self):
        return self._coro

    def cancel(self, msg=None):
        if self.done():
            return False
        if self._waiting_on is not None and self._waiting_on.cancel(msg):
            return True
        self._must_cancel = True
        return True

    def _step(self, exc=None):
        global _current_task
        if self.done():
            return
        if self._must_cancel:
            exc = CancelledError()
            self._must_cancel = False
        self._waiting_on = None
        prev, _current_task = _current_task, self
        try:
            if exc is None:
                yielded = self._coro.send(None)
            else:
                yielded = self._coro.throw(exc)
        except StopIteration as stop:
            self._loop._tasks.discard(self)
            Future.set_result(self, stop.value)
        except CancelledError:
            self._loop._tasks.discard(self)
            Future.cancel(self)
        except BaseException as e:
            self._loop._tasks.discard(self)
            Future.set_exception(self, e)
            if not isinstance(e, Exception):
                raise
        else:
            if isinstance(yielded, Future):
                self._waiting_on = yielded
                yielded.add_done_callback(self._wakeup)
            elif yielded is None:
                self._loop.call_soon(self._step)
            else:
                self._loop.call_soon(self._step, RuntimeError("Task got bad yield: %r" % (yielded,)))
        finally:
            _current_task = prev

    def _wakeup(self, fut):
        try:
            fut.result()
        except BaseException as e:
            self._step(e)
        else:
            self._step()


class AbstractEventLoop:
    pass


class EventLoop(AbstractEventLoop):
    def __init__(self):
        self._ready = collections.deque()
        self._scheduled = []
        self._tasks = set()
        self._running = False
        self._closed = False
        self._stopping = False

    def time(self):
        return time.monotonic()

    def call_soon(self, callback, *args, context=None):
        h = Handle(callback, args)
        self._ready.append(h)
        return h

    def call_later(self, delay, callback, *args, context=None):
        return self.call_at(self.time() + delay, callback, *args)

    def call_at(self, when, callback, *args, context=None):
        h = Handle(callback, args, when)
        heapq.heappush(self._scheduled, h)
        return h

    def create_future(self):
        return Future(loop=self)

    def create_task(self, coro, *, name=None, context=None):
        return Task(coro, loop=self, name=name)

    def is_running(self):
        return self._running

    def is_closed(self):
        return self._closed

    def stop(self):
        self._stopping = True

    def close(self):
        self._closed = True
        self._ready.clear()
        self._scheduled.clear()

    def get_debug(self):
        return False

    def set_debug(self, enabled):
        pass

    def _run_once(self):
        if not self._ready and self._scheduled:
            delay = self._scheduled[0].when - self.time()
            if delay > 0:
                time.sleep(delay)
        now = self.time()
        while self._scheduled and self._scheduled[0].when <= now:
            self._ready.append(heapq.heappop(self._scheduled))
        for _ in range(len(self._ready)):
            self._ready.popleft()._run()

    def run_until_complete(self, future):
        global _running_loop
        if self._running:
            raise RuntimeError("This event loop is already running")
        fut = ensure_future(future, loop=self)
        prev, _running_loop = _running_loop, self
        self._running = True
        try:
            while not fut.done():
                if not self._ready and not self._scheduled:
                    raise RuntimeError("Event loop stopped before Future completed: every task is waiting and nothing is scheduled")
                self._run_once()
        finally:
            self._running = False
            _running_loop = prev
        return fut.result()

    def run_forever(self):
        global _running_loop
        prev, _running_loop = _running_loop, self
        self._running = True
        self._stopping = False
        try:
            while not self._stopping and (self._ready or self._scheduled):
                self._run_once()
        finally:
            self._running = False
            _running_loop = prev

    async def shutdown_asyncgens(self):
        pass


BaseEventLoop = EventLoop
SelectorEventLoop = EventLoop
_default_loop = None


def new_event_loop():
    return EventLoop()


def set_event_loop(loop):
    global _default_loop
    _default_loop = loop


def get_event_loop():
    global _default_loop
    if _running_loop is not None:
        return _running_loop
    if _default_loop is None or _default_loop.is_closed():
        _default_loop = new_event_loop()
    return _default_loop


def get_running_loop():
    if _running_loop is None:
        raise RuntimeError("no running event loop")
    return _running_loop


def _get_running_loop():
    return _running_loop


def iscoroutine(obj):
    return type(obj).__name__ == "coroutine" or (hasattr(obj, "send") and hasattr(obj, "throw"))


def iscoroutinefunction(func):
    code = getattr(func, "__code__", None)
    return code is not None and bool(code.co_flags & 0x80)


def isfuture(obj):
    return isinstance(obj, Future)


def current_task(loop=None):
    return _current_task


def all_tasks(loop=None):
    loop = loop or get_running_loop()
    return {t for t in loop._tasks if not t.done()}


def ensure_future(obj, *, loop=None):
    if isinstance(obj, Future):
        return obj
    loop = loop or get_event_loop()
    if iscoroutine(obj):
        return loop.create_task(obj)
    if hasattr(obj, "__await__"):
        async def _wrap():
            return await obj
        return loop.create_task(_wrap())
    raise TypeError("An asyncio.Future, a coroutine or an awaitable is required")


def create_task(coro, *, name=None, context=None):
    return get_running_loop().create_task(coro, name=name)


def run(main, *, debug=None, loop_factory=None):
    if _running_loop is not None:
        raise RuntimeError("asyncio.run() cannot be called from a running event loop")
    loop = (loop_factory or new_event_loop)()
    try:
        return loop.run_until_complete(main)
    finally:
        for task in list(loop._tasks):
            task.cancel()
        if loop._tasks:
            try:
                loop.run_until_complete(gather(*loop._tasks, return_exceptions=True))
            except RuntimeError:
                pass
        loop.close()


class _Yield:
    def __await__(self):
        yield


async def sleep(delay, result=None):
    if delay <= 0:
        await _Yield()
        return result
    loop = get_running_loop()
    fut = loop.create_future()
    h = loop.call_later(delay, lambda: fut.done() or fut.set_result(result))
    try:
        return await fut
    finally:
        h.cancel()


def gather(*aws, return_exceptions=False):
    loop = get_event_loop()
    children = [ensure_future(a, loop=loop) for a in aws]
    outer = loop.create_future()
    if not children:
        outer.set_result([])
        return outer
    remaining = [len(children)]

    def done(child):
        if outer.done():
            return
        if not return_exceptions:
            if child.cancelled():
                outer.set_exception(CancelledError())
                return
            if child.exception() is not None:
                outer.set_exception(child.exception())
                return
        remaining[0] -= 1
        if remaining[0] == 0:
            results = []
            for c in children:
                if c.cancelled():
                    results.append(CancelledError())
                elif c.exception() is not None:
                    results.append(c.exception())
                else:
                    results.append(c.result())
            outer.set_result(results)

    for c in children:
        c.add_done_callback(done)
    return outer


async def wait_for(aw, timeout):
    fut = ensure_future(aw)
    if timeout is None:
        return await fut
    loop = get_running_loop()
    timed_out = [False]

    def expire():
        if not fut.done():
            timed_out[0] = True
            fut.cancel()

    h = loop.call_later(timeout, expire)
    try:
        return await fut
    except CancelledError:
        if timed_out[0]:
            raise TimeoutError() from None
        raise
    finally:
        h.cancel()


async def wait(fs, *, timeout=None, return_when=ALL_COMPLETED):
    loop = get_running_loop()
    fs = {ensure_future(f, loop=loop) for f in fs}
    if not fs:
        raise ValueError("Set of Tasks/Futures is empty.")
    waiter = loop.create_future()

    def check(_=None):
        if waiter.done():
            return
        done = [f for f in fs if f.done()]
        if return_when == FIRST_COMPLETED and done:
            waiter.set_result(None)
        elif return_when == FIRST_EXCEPTION and any(not f.cancelled() and f.exception() for f in done):
            waiter.set_result(None)
        elif len(done) == len(fs):
            waiter.set_result(None)

    for f in fs:
        f.add_done_callback(check)
    h = loop.call_later(timeout, lambda: waiter.done() or waiter.set_result(None)) if timeout is not None else None
    check()
    try:
        await waiter
    finally:
        if h is not None:
            h.cancel()
    done = {f for f in fs if f.done()}
    return done, fs - done


def as_completed(fs, *, timeout=None):
    loop = get_event_loop()
    todo = [ensure_future(f, loop=loop) for f in fs]
    results = collections.deque()
    waiters = collections.deque()

    def on_done(f):
        if waiters:
            waiters.popleft().set_result(f)
        else:
            results.append(f)

    for f in todo:
        f.add_done_callback(on_done)

    async def next_done():
        if results:
            return await results.popleft()
        w = loop.create_future()
        waiters.append(w)
        f = await w
        return await f

    return [next_done() for _ in todo]


def shield(arg):
    inner = ensure_future(arg)
    loop = inner.get_loop()
    outer = loop.create_future()

    def copy(f):
        if outer.done():
            return
        if f.cancelled():
            outer.cancel()
        elif f.exception() is not None:
            outer.set_exception(f.exception())
        else:
            outer.set_result(f.result())

    inner.add_done_callback(copy)
    return outer


class timeout:
    def __init__(self, delay):
        self._delay = delay
        self._handle = None
        self._expired = False

    async def __aenter__(self):
        task = current_task()
        if self._delay is not None and task is not None:
            def expire():
                self._expired = True
                task.cancel()
            self._handle = get_running_loop().call_later(self._delay, expire)
        return self

    async def __aexit__(self, exc_type, exc, tb):
        if self._handle is not None:
            self._handle.cancel()
        if self._expired and exc_type is CancelledError:
            raise TimeoutError()
        return False

    def expired(self):
        return self._expired


class Event:
    def __init__(self):
        self._set = False
        self._waiters = []

    def is_set(self):
        return self._set

    def set(self):
        if not self._set:
            self._set = True
            waiters, self._waiters = self._waiters, []
            for w in waiters:
                if not w.done():
                    w.set_result(True)

    def clear(self):
        self._set = False

    async def wait(self):
        if self._set:
            return True
        fut = get_running_loop().create_future()
        self._waiters.append(fut)
        return await fut


class Semaphore:
    def __init__(self, value=1):
        if value < 0:
            raise ValueError("Semaphore initial value must be >= 0")
        self._value = value
        self._waiters = collections.deque()

    def locked(self):
        return self._value == 0

    async def acquire(self):
        while self._value <= 0:
            fut = get_running_loop().create_future()
            self._waiters.append(fut)
            await fut
        self._value -= 1
        return True

    def release(self):
        self._value += 1
        while self._waiters:
            w = self._waiters.popleft()
            if not w.done():
                w.set_result(True)
                break

    async def __aenter__(self):
        await self.acquire()
        return None

    async def __aexit__(self, *exc):
        self.release()
        return False


class Lock(Semaphore):
    def __init__(self):
        super().__init__(1)

    def release(self):
        if not self.locked():
            raise RuntimeError("Lock is not acquired.")
        super().release()


class BoundedSemaphore(Semaphore):
    def __init__(self, value=1):
        self._bound = value
        super().__init__(value)

    def release(self):
        if self._value >= self._bound:
            raise ValueError("BoundedSemaphore released too many times")
        super().release()


class Condition:
    def __init__(self, lock=None):
        self._lock = lock or Lock()
        self._waiters = collections.deque()

    def locked(self):
        return self._lock.locked()

    async def acquire(self):
        return await self._lock.acquire()

    def release(self):
        self._lock.release()

    async def __aenter__(self):
        await self._lock.acquire()
        return None

    async def __aexit__(self, *exc):
        self._lock.release()
        return False

    async def wait(self):
        self._lock.release()
        fut = get_running_loop().create_future()
        self._waiters.append(fut)
        try:
            await fut
            return True
        finally:
            await self._lock.acquire()

    async def wait_for(self, predicate):
        result = predicate()
        while not result:
            await self.wait()
            result = predicate()
        return result

    def notify(self, n=1):
        for _ in range(n):
            if not self._waiters:
                break
            w = self._waiters.popleft()
            if not w.done():
                w.set_result(False)

    def notify_all(self):
        self.notify(len(self._waiters))


class Queue:
    def __init__(self, maxsize=0):
        self._maxsize = maxsize
        self._init()
        self._getters = collections.deque()
        self._putters = collections.deque()
        self._unfinished = 0
        self._finished = Event()
        self._finished.set()

    def _init(self):
        self._queue = collections.deque()

    def _put(self, item):
        self._queue.append(item)

    def _get(self):
        return self._queue.popleft()

    @property
    def maxsize(self):
        return self._maxsize

    def qsize(self):
        return len(self._queue)

    def empty(self):
        return not self._queue

    def full(self):
        return 0 < self._maxsize <= self.qsize()

    @staticmethod
    def _wake(waiters):
        while waiters:
            w = waiters.popleft()
            if not w.done():
                w.set_result(None)
                break

    def put_nowait(self, item):
        if self.full():
            raise QueueFull
        self._put(item)
        self._unfinished += 1
        self._finished.clear()
        self._wake(self._getters)

    async def put(self, item):
        while self.full():
            fut = get_running_loop().create_future()
            self._putters.append(fut)
            await fut
        self.put_nowait(item)

    def get_nowait(self):
        if self.empty():
            raise QueueEmpty
        item = self._get()
        self._wake(self._putters)
        return item

    async def get(self):
        while self.empty():
            fut = get_running_loop().create_future()
            self._getters.append(fut)
            await fut
        return self.get_nowait()

    def task_done(self):
        if self._unfinished <= 0:
            raise ValueError("task_done() called too many times")
        self._unfinished -= 1
        if self._unfinished == 0:
            self._finished.set()

    async def join(self):
        if self._unfinished > 0:
            await self._finished.wait()


class LifoQueue(Queue):
    def _init(self):
        self._queue = []

    def _put(self, item):
        self._queue.append(item)

    def _get(self):
        return self._queue.pop()


class PriorityQueue(Queue):
    def _init(self):
        self._queue = []

    def _put(self, item):
        heapq.heappush(self._queue, item)

    def _get(self):
        return heapq.heappop(self._queue)


__all__ = [n for n in list(globals()) if not n.startswith("_") and n not in ("collections", "heapq", "time")]
