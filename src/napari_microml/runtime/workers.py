"""Helpers for generator-style cores.

Every long core function has a generator twin (``*_iter``) that yields
``("progress", done, total, message)`` tuples and *returns* its result. The widget runs the
generator inside a napari generator worker, so ``worker.quit()`` is honoured at every yield
(between tiles, frames, epochs or steps). The plain API function drains the generator.
"""

from __future__ import annotations

from collections.abc import Generator
from typing import TypeVar

T = TypeVar("T")


def progress(done: int, total: int, message: str = "") -> tuple:
    """The one progress message shape every core yields."""
    return ("progress", int(done), int(total), str(message))


def drain(gen: Generator[tuple, None, T]) -> T:
    """Run a generator-style core to the end and return its result."""
    while True:
        try:
            next(gen)
        except StopIteration as stop:
            return stop.value


def collect(gen: Generator[tuple, None, T]) -> tuple[list, T]:
    """Run a generator-style core to the end; return the messages it yielded and its result."""
    messages = []
    while True:
        try:
            messages.append(next(gen))
        except StopIteration as stop:
            return messages, stop.value


def relabel(gen: Generator[tuple, None, T], prefix: str) -> Generator[tuple, None, T]:
    """Re-yield a single-frame core's progress as ``prefix`` + the last part of its message
    ("tile k/n"), for a core run inside another; return its result."""
    while True:
        try:
            kind, done, total, message = next(gen)
        except StopIteration as stop:
            return stop.value
        yield kind, done, total, prefix + message.rsplit(": ", 1)[-1]
