"""Timeouts for the request path that cost a dict insert, not a loop timer.

`asyncio.timeout` creates and cancels a loop timer each time (~6 us with uvloop), and the proxy needs
four per request (the body, the server limit, the upstream head, the JSON body or stream idle); a
stream's idle timeout was also re-armed on every chunk. Here every deadline of a worker's event loop is
checked by one shared timer that ticks every `TICK_S` while any deadline is open and stops when none
is: entering and leaving a deadline is ~1.6 us, and refreshing an idle deadline (`touch()`) is a
float store.

The price is precision: a deadline fires between 0 and `TICK_S` after it is due. Every timeout this
serves is a second or more (defaults of minutes), so 50 ms late changes nothing a client can see.
Expiry works like `asyncio.timeout`: the task is cancelled and leaving the block turns that cancellation
into `TimeoutError`; a cancellation from anyone else (e.g. the client-disconnect watcher) passes through.
`disarm()` is `asyncio.Timeout.reschedule(None)`: the server limit stops once a response has started.
"""

from __future__ import annotations

import asyncio
import weakref

TICK_S = 0.05

_wheels: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, _Wheel] = weakref.WeakKeyDictionary()
#: The wheel of the loop that entered a deadline last: a worker has one loop, so the weak dictionary
#: (a few hundred nanoseconds per lookup, three lookups per request) is consulted once per loop.
_last: _Wheel | None = None


class _Wheel:
    __slots__ = ("__weakref__", "armed", "entries", "loop")

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.entries: dict[int, Deadline] = {}
        self.armed = False

    def add(self, deadline: Deadline) -> None:
        self.entries[id(deadline)] = deadline
        if not self.armed:
            self.armed = True
            self.loop.call_later(TICK_S, self._tick)

    def _tick(self) -> None:
        now = self.loop.time()
        for d in list(self.entries.values()):
            if d.due <= now and not d.expired:
                d.expired = True
                d.task.cancel()
        if self.entries:
            self.loop.call_later(TICK_S, self._tick)
        else:
            self.armed = False


class Deadline:
    """`with Deadline(delay_s) as d:` (inside a task; `async with` works too) raises `TimeoutError` once
    `delay_s` passed since entering, or since the last `d.touch()` (an idle timeout)."""

    __slots__ = ("_cancelling", "_wheel", "delay_s", "due", "expired", "task")

    def __init__(self, delay_s: float) -> None:
        self.delay_s = delay_s
        self.expired = False

    def touch(self) -> None:
        """Start the delay again from now."""
        self.due = self._wheel.loop.time() + self.delay_s

    def shorten(self, delay_s: float) -> None:
        """Be due no later than `delay_s` from now (an entered deadline only)."""
        self.due = min(self.due, self._wheel.loop.time() + delay_s)

    def disarm(self) -> None:
        """Never expire from now on (an entered deadline only); leaving it stays as cheap as before."""
        self._wheel.entries.pop(id(self), None)
        self.due = float("inf")

    # Entering and leaving do no I/O, so a plain `with` serves (no coroutine per step, ~1 us less per
    # deadline on the request path); `async with` stays for callers that prefer it.
    def __enter__(self) -> Deadline:
        global _last
        loop = asyncio.get_running_loop()
        wheel = _last
        if wheel is None or wheel.loop is not loop:
            wheel = _wheels.get(loop)
            if wheel is None:
                wheel = _wheels[loop] = _Wheel(loop)
            _last = wheel
        task = asyncio.current_task(loop)
        assert task is not None, "a Deadline needs a task"
        self._wheel, self.task = wheel, task
        self._cancelling = task.cancelling()
        self.due = loop.time() + self.delay_s
        wheel.add(self)
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: object) -> None:
        self._wheel.entries.pop(id(self), None)
        if self.expired and self.task.uncancel() <= self._cancelling and exc_type is asyncio.CancelledError:
            raise TimeoutError from exc

    async def __aenter__(self) -> Deadline:
        return self.__enter__()

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: object) -> None:
        self.__exit__(exc_type, exc, tb)
