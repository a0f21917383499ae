"""Run independent requests a few at a time; stop starting new ones after a failure.

A resync's writes need no source order (the index moves only once they all
succeeded, and the resync marker covers a crash in between), so they go out
several at a time.  :func:`run_bounded` keeps at most ``limit`` in flight,
and after the first failure starts no more: it waits for those in flight,
then fails with that first error (not Twisted's ``FirstError`` wrapper).
"""

from typing import Callable, Iterable, List, Optional

from twisted.internet import defer
from twisted.python.failure import Failure


def run_bounded(jobs: Iterable[Callable[[], defer.Deferred]], limit: int) -> defer.Deferred:
    """Call each job, at most ``limit`` at a time; fires with None once all succeeded."""
    pending = iter(jobs)
    done: defer.Deferred = defer.Deferred()
    state = {"running": 0, "finished": False}
    failures: List[Failure] = []

    def start_next() -> None:
        while not failures and state["running"] < limit:
            job: Optional[Callable[[], defer.Deferred]] = next(pending, None)
            if job is None:
                break
            state["running"] += 1
            d = defer.maybeDeferred(job)
            d.addCallbacks(finished, failed)
        if state["running"] == 0 and not state["finished"]:
            state["finished"] = True
            if failures:
                done.errback(failures[0])
            else:
                done.callback(None)

    def finished(_: object) -> None:
        state["running"] -= 1
        start_next()

    def failed(failure: Failure) -> None:
        failures.append(failure)
        state["running"] -= 1
        start_next()

    start_next()
    return done
