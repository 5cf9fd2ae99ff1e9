"""The server's fair micro-batcher: requests that wait share a call, a large request is cut into
batches, a small one rides in the next batch, failures reach exactly the requests they hit."""

from __future__ import annotations

import asyncio
import threading

import pytest
from routers import tfidf_folder  # noqa: F401  (fixture)

from routelet.serving.batcher import MicroBatcher
from routelet.serving.runtime import Router


@pytest.fixture(scope="module")
def router(tfidf_folder) -> Router:
    return Router.load(tfidf_folder)


def run_batcher(route, requests: list[tuple[list[str], int]], release: threading.Event, max_texts: int = 4,
                share: int = 1, stagger: float = 0.0):
    """Send `requests` to a one-worker MicroBatcher while its first call is held until all are queued
    (`stagger` seconds between them); returns each request's Routed or exception."""
    async def main():
        batcher = MicroBatcher(route, workers=1, max_texts=max_texts, share=share)
        tasks = []
        for texts, k in requests:
            tasks.append(asyncio.create_task(batcher.route(texts, k)))
            await asyncio.sleep(stagger)
        await asyncio.sleep(0.05)
        release.set()
        return await asyncio.gather(*tasks, return_exceptions=True)
    return asyncio.run(main())


def recording(router, calls: list, release: threading.Event, fail_on: str | None = None):
    failed = []

    def route(texts, top_k):
        calls.append(list(texts))
        release.wait(5)
        if fail_on in texts and not failed:
            failed.append(texts)
            raise RuntimeError("inference failed")
        return router.route(texts, top_k)
    return route


def test_requests_that_wait_share_a_call(router):
    calls, release = [], threading.Event()
    requests = [(["my balance"], 1), (["a flight"], 2), (["send money", "joke"], 3), (["airport"], 1),
                (["funds"], 2), ([], 3)]
    routed = run_batcher(recording(router, calls, release), requests, release)
    # The first runs alone; then one text of each waiting request in turn, up to 4; then what is left.
    assert calls == [["my balance"], ["a flight", "send money", "airport", "funds"], ["joke"]]
    assert [r.results for r in routed] == [router.route(texts, k) for texts, k in requests]
    assert all(r.queue_ms >= 0 for r in routed) and routed[-1] == ([], 0.0)


def test_a_small_request_rides_in_the_next_batch_not_after_a_large_one(router):
    calls, release = [], threading.Event()
    large = [f"my account balance {i}" for i in range(40)]
    other = [f"wire money to payee {i}" for i in range(30)]
    requests = [(["flight"], 1), (large, 3), (other, 3), (["airport"], 2)]
    routed = run_batcher(recording(router, calls, release), requests, release, max_texts=8, share=2, stagger=0.01)
    assert calls[0] == ["flight"]
    # Turns of 2 texts per request: large 0-1, other 0-1, airport, then large 2-3, other 2 fill the 8.
    assert calls[1] == large[:2] + other[:2] + ["airport"] + large[2:4] + other[2:3]
    assert max(map(len, calls)) == 8 and sum(map(len, calls)) == 1 + 40 + 30 + 1
    assert [r.results for r in routed] == [router.route(texts, k) for texts, k in requests]
    # Both first ran in call 1; the small one arrived later, so it waited less.
    assert 0 < routed[3].queue_ms < routed[1].queue_ms


def test_a_failure_reaches_the_requests_in_that_batch_and_it_keeps_serving(router):
    calls, release = [], threading.Event()
    route = recording(router, calls, release, fail_on="boom")
    routed = run_batcher(route, [(["balance"], 1), (["boom"], 1), (["flight"], 1), (["airport"], 1)], release)
    assert routed[0].results == router.route(["balance"], 1)
    assert all(isinstance(r, RuntimeError) for r in routed[1:])
    assert calls[1] == ["boom", "flight", "airport"]
    assert run_batcher(route, [(["boom"], 1)], threading.Event())[0].results[0]["route"] == "oos"


def test_a_failed_large_request_is_not_run_further(router):
    calls, release = [], threading.Event()
    texts = ["boom"] + [f"balance {i}" for i in range(20)]
    routed = run_batcher(recording(router, calls, release, fail_on="boom"), [(["flight"], 1), (texts, 1)], release,
                         max_texts=4, share=4)
    assert isinstance(routed[1], RuntimeError)
    assert calls == [["flight"], texts[:4]]  # the rest of the failed request never ran


def test_bad_settings_are_refused(router):
    with pytest.raises(ValueError, match="share >= 1"):
        MicroBatcher(router.route, workers=1, max_texts=4, share=0)


def test_an_inline_request_alone_runs_on_the_loop_and_a_burst_still_goes_to_the_threads(router):
    calls, threads = [], []

    def route(texts, top_k):
        calls.append(list(texts))
        threads.append(threading.current_thread())
        return router.route(texts, top_k)

    async def main():
        batcher = MicroBatcher(route, workers=1, max_texts=4, share=1)
        alone = await batcher.route(["my balance"], 2, inline=True)
        burst = await asyncio.gather(*(batcher.route([text], 1, inline=True) for text in ("flight", "funds", "airport")))
        return alone, burst

    alone, burst = asyncio.run(main())
    assert alone.results == router.route(["my balance"], 2) and alone.queue_ms >= 0
    assert [r.results for r in burst] == [router.route([text], 1) for text in ("flight", "funds", "airport")]
    # The lone request ran on the event loop's own thread; the burst did not queue behind one another
    # on the loop: the first gave the others a turn, they went to the worker and it followed them.
    assert threads[0] is threading.main_thread()
    assert all(thread is not threading.main_thread() for thread in threads[1:])
    assert calls[1:] == [["funds"], ["airport", "flight"]]
