"""The generation engine of a service: one thread steps every piece in flight together.

Requests arrive from many threads; their pieces join the engine's `Stream` between two steps and
leave it when done, so a request never waits for another one's pieces to finish (continuous
batching), and 32 clients cost about what one batch of 32 pieces costs. A step is a few small matrix
products, so the engine runs them on one BLAS thread and leaves the other cores to the requests'
own work (decoding, MIDI, metrics, the log).
"""

from __future__ import annotations

import logging
import threading
from concurrent.futures import Future

import numpy as np

from pianola.errors import PianolaError
from pianola.generation.generate import Stream, piece_rng
from pianola.generation.sampling import Sampling
from pianola.models.bundle import Bundle

log = logging.getLogger(__name__)


class EngineClosed(PianolaError):
    """The engine stops taking requests (its model version was swapped out)."""


class Ticket:
    """One request's pieces: the future resolved with their (n, length) ids once all are done."""

    def __init__(self, n: int, length: int) -> None:
        self.future: Future = Future()
        self.ids = np.zeros((n, length), dtype=np.int32)
        self.left = n
        self.cancelled = False


class Engine:
    """Generates the pieces of every submitted request, stepping all of them together."""

    def __init__(self, bundle: Bundle, max_rows: int = 64) -> None:
        self.stream = Stream(bundle)
        self.max_rows = max_rows  # pieces in one step; more wait their turn
        self.waiting: list[tuple[Ticket, np.ndarray, int, Sampling, int]] = []
        self.lock = threading.Condition()
        self.closing = False
        self.steps = 0
        self.thread = threading.Thread(target=self._run, name="pianola-engine", daemon=True)
        self.thread.start()

    def submit(self, primers: np.ndarray, length: int, sampling: Sampling, seed: int) -> Ticket:
        """Generate len(primers) pieces of `length` tokens; piece i draws from piece_rng(seed, i), as
        `pianola generate` does, so a seed gives the same piece here and there."""
        ticket = Ticket(len(primers), length)
        with self.lock:
            if self.closing:
                raise EngineClosed("the engine is shutting down")
            self.waiting.append((ticket, np.asarray(primers, dtype=np.int32), length, sampling, seed))
            self.lock.notify()
        return ticket

    def cancel(self, ticket: Ticket) -> None:
        """Stop generating `ticket`'s pieces (a request that timed out)."""
        ticket.cancelled = True

    def in_flight(self) -> int:
        with self.lock:
            return len(self.stream.rows) + sum(len(primers) for _, primers, *_ in self.waiting)

    def close(self, wait: bool = True) -> None:
        """Finish the pieces in flight and waiting (when `wait`), then stop the thread."""
        with self.lock:
            self.closing = True
            self.lock.notify()
        if wait:
            self.thread.join()

    def _admit(self) -> None:
        """Move waiting requests into the stream, whole, while they fit (a request larger than max_rows alone)."""
        while self.waiting:
            ticket, primers, length, sampling, seed = self.waiting[0]
            if self.stream.rows and len(self.stream.rows) + len(primers) > self.max_rows:
                return
            self.waiting.pop(0)
            if ticket.cancelled:
                continue
            self.stream.add(primers, [length] * len(primers), [sampling] * len(primers),
                            [piece_rng(seed, i) for i in range(len(primers))], [(ticket, i) for i in range(len(primers))])

    def _run(self) -> None:
        from threadpoolctl import threadpool_limits

        with threadpool_limits(limits=1, user_api="blas"):
            while True:
                with self.lock:
                    while not self.waiting and not self.stream.rows and not self.closing:
                        self.lock.wait()
                    if self.closing and not self.waiting and not self.stream.rows:
                        return
                    self._admit()
                self._step()

    def _step(self) -> None:
        stream = self.stream
        if any(row.tag[0].cancelled for row in stream.rows):
            stream.drop([not row.tag[0].cancelled for row in stream.rows])
        try:
            finished = stream.step()
            self.steps += 1
        except Exception as e:  # noqa: BLE001 - every request in flight learns of it; the engine lives on
            log.exception("generation step failed")
            for ticket in {row.tag[0] for row in stream.rows}:
                if not ticket.future.done():
                    ticket.future.set_exception(e)
            stream.drop([False] * len(stream.rows))
            return
        for row in finished:
            ticket, index = row.tag
            ticket.ids[index] = row.out
            ticket.left -= 1
            if ticket.left == 0 and not ticket.future.done():
                ticket.future.set_result(ticket.ids)
