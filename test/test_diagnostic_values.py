"""The key/value statuses decode to what their encoders wrote: the bridge's episode status, the
policy node's ~/timing and its /diagnostics report (the nodes themselves are checked end to end in
test_bridge_node.py and test_policy_node.py, whose readers use these decoders)."""
from __future__ import annotations

import pytest

pytest.importorskip("diagnostic_msgs")

from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus  # noqa: E402
from std_msgs.msg import Header  # noqa: E402

from openvla_ros.diagnostic_values import decode, encode  # noqa: E402
from openvla_ros.nodes.policy_diagnostics import policy_report  # noqa: E402
from openvla_ros.nodes.timing import timing_message, timing_values  # noqa: E402
from openvla_ros.sim.episode import Episode, EpisodeStatus  # noqa: E402


def _sent(values: dict[str, str]) -> dict[str, str]:
    """Through a DiagnosticStatus, as a reader receives it."""
    return decode(DiagnosticStatus(name="s", values=encode(values)))


def test_episode_status_decodes_what_the_bridge_encodes():
    episode = Episode(episode=3, task_suite="libero_object", task_id=2, init_state_id=7, max_steps=2,
                      instruction="pick up the ketchup, then: stop")
    fresh = EpisodeStatus.from_values(_sent(episode.values()))
    assert (fresh.episode, fresh.task_suite, fresh.task_id, fresh.init_state_id) == (3, "libero_object", 2, 7)
    assert (fresh.step, fresh.max_steps, fresh.success, fresh.done) == (0, 2, False, False)
    assert fresh.instruction == episode.instruction and fresh.actions_rejected == 0
    assert fresh.action_latency_ms is None and fresh.action_latency_ms_mean is None

    episode.record_step(False, action_latency_s=0.010)
    episode.actions_rejected = 4
    episode.record_step(True, action_latency_s=0.030)
    done = EpisodeStatus.from_values(_sent(episode.values()))
    assert (done.step, done.success, done.done, done.actions_rejected) == (2, True, True, 4)
    assert done.action_latency_ms == pytest.approx(30.0) and done.action_latency_ms_mean == pytest.approx(20.0)


@pytest.mark.parametrize("change, problem", [
    ({"step": None}, "no 'step' value"),
    ({"task_id": "two"}, "task_id='two': expected int"),
    ({"done": "yes"}, "done='yes': expected true or false"),
    ({"action_latency_ms": "fast"}, "action_latency_ms='fast': expected float"),
])
def test_a_malformed_episode_status_names_the_key(change, problem):
    values = Episode(1, "libero_object", 0, 0, 10, "x").values()
    for key, value in change.items():
        if value is None:
            del values[key]
        else:
            values[key] = value
    with pytest.raises(ValueError, match=problem):
        EpisodeStatus.from_values(values)


def test_timing_values_decode_the_timing_message():
    msg = timing_message(Header(frame_id="f"), "/policy_node", backend_ms=12.34567, frame_received_unix_ns=1_000,
                         inference_start_unix_ns=2_000, action_published_unix_ns=3_000, crop_ms=0.5)
    values = timing_values(msg)
    assert values == {"backend_ms": 12.3457, "crop_ms": 0.5, "frame_received_unix_ns": 1000.0,
                      "inference_start_unix_ns": 2000.0, "action_published_unix_ns": 3000.0}
    msg.status[0].values[0].value = "n/a"
    with pytest.raises(ValueError, match="backend_ms='n/a' is not a number"):
        timing_values(msg)


def test_policy_report_is_the_named_nodes_status():
    other = DiagnosticStatus(name="/other/policy_node", level=DiagnosticStatus.OK, message="acting")
    own = DiagnosticStatus(name="/policy_node", level=DiagnosticStatus.ERROR, message="backend failed",
                           values=encode({"state": "active", "errors": "3", "inference_latency_p50_ms": "",
                                          "inference_latency_p95_ms": "41.500"}))
    msg = DiagnosticArray(status=[other, own])
    report = policy_report(msg, "/policy_node")
    assert report.error and report.message == "backend failed" and report.values["state"] == "active"
    assert report.count("errors") == 3 and report.count("frames_received") is None
    assert report.milliseconds("inference_latency_p50_ms") is None
    assert report.milliseconds("inference_latency_p95_ms") == 41.5
    assert not policy_report(msg, "/other/policy_node").error
    assert policy_report(msg, "/policy") is None
