"""The drift benchmark's tables (export/drift_benchmark.py): runs that never fired are never hidden behind the median of those that did."""

from __future__ import annotations

from export.drift_benchmark import censored_summary, markdown


def run(delay: int | None, streamed: int = 5000) -> dict:
    if delay is None:
        return {"delay": None, "streamed_after_onset": streamed, "warmup_alarms": 0}
    return {"delay": delay, "unseen_seen": delay // 20, "statistic": "novelty_rate:embedding", "warmup_alarms": 0}


def test_every_run_fired_median_and_range() -> None:
    assert censored_summary([run(856), run(760), run(900)]) == "856 (760–900)"


def test_misses_are_counted_and_the_median_is_a_bound_when_they_reach_the_middle() -> None:
    # 3 of 5 never fired within 4,800-5,100 images: the median is beyond 4,800, not the 3,456 of the two that fired
    cell = censored_summary([run(3656), run(3256), run(None, 5000), run(None, 5100), run(None, 4800)])
    assert cell == ">4,800 (3,256–>5,100); 3/5 did not fire"
    # 2 of 5 missed, both after every alarm: the median (the 3rd value) is exact, the maximum is not
    assert censored_summary([run(3656), run(3256), run(4056), run(None, 5000), run(None, 5100)]) == "4,056 (3,256–>5,100); 2/5 did not fire"
    # a miss that stopped early sorts below the middle: the median is only a lower bound
    assert censored_summary([run(3656), run(3256), run(4056), run(None, 2000), run(None, 5100)]).startswith(">3,656 ")


def test_markdown_shows_misses_and_the_new_scenes_rate_beside_the_stable_one() -> None:
    fa = [{"bundle": "all", "stream": "all families + real", "fake_share": 0.5, "distinct": 8000, "orders": 2, "streamed": 16000, "alarms": 1, "by": {}}]
    det = [
        {"bundle": "without-d", "unseen": "d", "share": 0.05, "warmup": 1000, "runs": [run(3656), run(3256), run(None), run(None), run(None)]},
        {"bundle": "without-d", "unseen": "d", "share": 0.2, "warmup": 1000, "runs": [run(None, 7000), run(None, 6900)]},
    ]
    content = {"stream": "new scenes", "distinct": 2000, "orders": 2, "streamed": 4000, "alarms": 8, "by": {}, "first": [{"at": 320, "statistic": "s:x"}, None]}
    md = markdown(fa, det, content, {"window_images": 1000}, "intro")
    assert "| d | >5,000 (3,256–>5,000); 3/5 did not fire; 172 unseen in those that fired | 2/2 did not fire in 6,900+ images |" in md
    assert "3,456" not in md  # the median of the two runs that fired is not shown
    assert "**0.62 per 10,000 images** (one-sided 95% Poisson upper bound 2.96;" in md and "the rate is **20.00 per 10,000**" in md
    assert "first alarm after 320 images (s:x); 1 order(s) without one" in md
    assert "new crops of the *training photographs*" in md
