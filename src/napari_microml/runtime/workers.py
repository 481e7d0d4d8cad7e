"""Generator-style cores and the typed messages a widget's job sends to its dock.

Every long core function has a generator twin (``*_iter``) that yields
``("progress", done, total, message)`` tuples (made by :func:`progress`) and *returns* its
result; the plain API function drains the generator. A widget runs the generator inside a
napari generator worker, so ``worker.quit()`` is honoured at every yield (between tiles,
frames, epochs or steps).

Between a job and its dock the messages are typed: :class:`Progress`, :class:`Loss` (a point
of a training curve) and :class:`Partial` (a result to show while the job goes on).
:func:`as_message` turns a core's tuple into one of them, in one place.
"""

from __future__ import annotations

from collections.abc import Generator, Mapping
from dataclasses import dataclass, field
from typing import Any, TypeVar

T = TypeVar("T")


@dataclass(frozen=True)
class Progress:
    """``done`` of ``total`` steps (tiles, frames, epochs…) and a sentence for the status line."""

    done: int
    total: int
    text: str = ""


@dataclass(frozen=True)
class Loss:
    """One point of a training curve: ``values`` (e.g. ``{"loss": 0.3, "val_f1": 0.8}``) after
    ``step`` of ``total`` steps; it also counts as progress."""

    step: int
    total: int
    values: Mapping[str, float | None] = field(default_factory=dict)
    text: str = ""


@dataclass(frozen=True)
class Partial:
    """A result to put on screen while the job goes on (e.g. one active-learning step), with
    the progress it stands for."""

    value: Any
    progress: Progress | None = None


Message = Progress | Loss | Partial


def progress(done: int, total: int, message: str = "") -> tuple:
    """The one progress message shape every core yields."""
    return ("progress", int(done), int(total), str(message))


def as_message(raw: Any) -> Message:
    """A message a core or job yielded → :class:`Progress`, :class:`Loss` or :class:`Partial`.

    Accepts the typed messages themselves, ``("progress", done, total[, text])``,
    ``("progress", done, total, text, {"loss": …})`` (a progress step that carries a loss) and
    ``("loss", step, total, {name: value})``; anything else is a bug in the job (TypeError).
    """
    if isinstance(raw, Progress | Loss | Partial):
        return raw
    if isinstance(raw, tuple) and len(raw) >= 3 and raw[0] in ("progress", "loss"):
        kind, done, total = raw[0], int(raw[1]), int(raw[2])
        rest = raw[3:]
        if kind == "loss":
            values = dict(rest[0]) if rest and isinstance(rest[0], Mapping) else {}
            return Loss(done, total, values)
        text = str(rest[0]) if rest else ""
        if len(rest) > 1 and isinstance(rest[1], Mapping) and "loss" in rest[1]:
            values = {k: v for k, v in rest[1].items() if k != "epoch"}
            return Loss(done, total, values, text)
        return Progress(done, total, text)
    raise TypeError(f"A job yielded {raw!r}, which is not a Progress, Loss or Partial message.")


def typed(gen: Generator[Any, Any, T]) -> Generator[Message, None, T]:
    """Re-yield a generator's messages as typed messages; return its result."""
    try:
        while True:
            try:
                raw = next(gen)
            except StopIteration as stop:
                return stop.value
            yield as_message(raw)
    finally:
        gen.close()


def drain(gen: Generator[Any, Any, T]) -> T:
    """Run a generator-style core to the end and return its result."""
    while True:
        try:
            next(gen)
        except StopIteration as stop:
            return stop.value


def collect(gen: Generator[Any, Any, T]) -> tuple[list, T]:
    """Run a generator-style core to the end; return the messages it yielded and its result."""
    messages = []
    while True:
        try:
            messages.append(next(gen))
        except StopIteration as stop:
            return messages, stop.value


def relabel(gen: Generator[tuple, Any, T], prefix: str) -> Generator[tuple, None, T]:
    """Re-yield a single-frame core's progress as ``prefix`` + the last part of its message
    ("tile k/n"), for a core run inside another; return its result."""
    while True:
        try:
            kind, done, total, message = next(gen)
        except StopIteration as stop:
            return stop.value
        yield kind, done, total, prefix + message.rsplit(": ", 1)[-1]
