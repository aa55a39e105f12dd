"""The headless run summary: a sink rate only where the run has one."""

from streamer.pipeline.report import format_summary


def _stats(packets: int, rate: float) -> dict:
    return {"tuples": 2000, "packets": packets, "mean_rate_tuples_s": rate, "latency_ms": {}, "gaps": 0,
            "duplicates": 0, "rejected": 0, "rejected_by_reason": {}, "resent": 0, "workers_lost": 0}


def test_summary_gives_the_sink_rate_of_a_run_of_several_packets():
    assert "2,063 frames/s at the sink" in format_summary(_stats(20, 2063.4), unit="frames")


def test_summary_says_no_rate_for_two_packets_instead_of_zero():
    text = format_summary(_stats(2, 0.0), unit="frames")
    assert "0 frames/s" not in text and "n/a at the sink (2 packets" in text
