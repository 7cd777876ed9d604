"""Turn a step-callback run into an iterator, so a UI handler can simply ``yield`` previews.

The run executes in a worker thread; its :class:`~pipelines.events.StepEvent` objects and its
final result come back through a queue. Closing the iterator (the consumer went away) sets
the cancel flag, so the worker stops within one step.
"""
from __future__ import annotations

import queue
import threading
from dataclasses import dataclass
from typing import Any, Callable, Generic, Iterator, TypeVar, Union

from .events import CancelFlag, StepCallback, StepEvent

R = TypeVar("R")


@dataclass(frozen=True)
class Finished(Generic[R]):
    result: R


_ERROR = object()


def iterate_steps(run: Callable[[StepCallback], R], cancel: CancelFlag) -> Iterator[Union[StepEvent, Finished[R]]]:
    """Yield each StepEvent of ``run(on_step)`` as it happens, then ``Finished(result)``.

    Exceptions of the run (``ValueError``, ``GenerationCancelled``, ...) are re-raised in
    the consumer's thread.
    """
    events: "queue.Queue[tuple[Any, Any]]" = queue.Queue()

    def worker() -> None:
        try:
            result = run(lambda event: events.put((StepEvent, event)))
        except BaseException as exc:  # handed to the consumer, which re-raises it
            events.put((_ERROR, exc))
        else:
            events.put((Finished, result))

    thread = threading.Thread(target=worker, name="studio-run", daemon=True)
    thread.start()
    try:
        while True:
            kind, payload = events.get()
            if kind is StepEvent:
                yield payload
            elif kind is Finished:
                yield Finished(payload)
                return
            else:
                raise payload
    finally:
        cancel.cancel()  # no-op when the run already finished; stops it when abandoned
        thread.join()
