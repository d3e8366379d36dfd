"""The LIBERO simulator wrapper (OpenVLA's gripper rule, upright frames, base-frame EE pose that
follows the commanded deltas, deterministic resets, clear errors) and the bridge's ROS-free parts."""
from __future__ import annotations

import threading
import time

import numpy as np
import pytest
from scipy.spatial.transform import Rotation

from openvla_ros.actions import POSE_LABELS
from openvla_ros.sim.action_inbox import ActionInbox, parse_action
from openvla_ros.sim.bridge_config import BridgeConfig
from openvla_ros.sim.episode import Episode
from openvla_ros.sim.libero_env import ENV_HORIZON, MAX_STEPS, LiberoEnv, check_action, postprocess_gripper
from openvla_ros.sim.video import EpisodeVideo, episode_video_path


def test_max_steps_follow_openvla_libero_eval():
    assert MAX_STEPS == {"libero_spatial": 220, "libero_object": 280, "libero_goal": 300,
                         "libero_10": 520, "libero_90": 400}
    assert all(steps + 10 < ENV_HORIZON for steps in MAX_STEPS.values())


@pytest.mark.parametrize("policy_gripper, env_gripper", [
    (1.0, -1.0),   # policy "open" -> LIBERO open
    (0.0, 1.0),    # policy "closed" -> LIBERO close
    (0.8, -1.0),
    (0.3, 1.0),
    (0.5, 0.0),    # exactly half-way: sign(0) = 0, as the reference rule gives
])
def test_openvla_gripper_rule(policy_gripper, env_gripper):
    action = [0.1, -0.2, 0.3, -0.01, 0.02, -0.03, policy_gripper]
    out = postprocess_gripper(action, "openvla")
    assert out.dtype == np.float64
    np.testing.assert_array_equal(out[:6], action[:6])
    assert out[6] == env_gripper
    assert action[6] == policy_gripper  # input untouched


def test_no_postprocess_keeps_action():
    action = np.array([0.1, -0.2, 0.3, -0.01, 0.02, -0.03, 0.42])
    out = postprocess_gripper(action, "none")
    np.testing.assert_array_equal(out, action)
    assert out is not action


@pytest.mark.parametrize("bad, message", [
    ([0.0] * 6, "7 values"),
    ([0.0] * 8, "7 values"),
    ([[0.0] * 7], "7 values"),
    ([0.0] * 6 + [float("nan")], "finite"),
    ([float("inf")] + [0.0] * 6, "finite"),
])
def test_malformed_actions_are_rejected(bad, message):
    with pytest.raises(ValueError, match=message):
        check_action(bad)
    with pytest.raises(ValueError, match=message):
        postprocess_gripper(bad)


def test_unknown_gripper_mode_is_rejected():
    with pytest.raises(ValueError, match="openvla"):
        postprocess_gripper([0.0] * 7, "binary")


def test_unknown_suite_is_rejected():
    with pytest.raises(ValueError, match="libero_spatial"):
        LiberoEnv("libero_100", 0)


@pytest.mark.sim
def test_task_id_out_of_range_is_rejected():
    with pytest.raises(ValueError, match=r"0\.\.9"):
        LiberoEnv("libero_spatial", 10)


@pytest.fixture(scope="module")
def env():
    sim = LiberoEnv("libero_spatial", 0, camera_size=128, seed=0)
    yield sim
    sim.close()


@pytest.mark.sim
@pytest.mark.slow
def test_reset_observation(env):
    obs = env.reset(0, num_steps_wait=10)
    assert env.instruction == "pick up the black bowl between the plate and the ramekin and place it on the plate"
    assert env.num_init_states == 50
    for image in (obs.agentview, obs.wrist):
        assert image.shape == (128, 128, 3) and image.dtype == np.uint8 and image.flags["C_CONTIGUOUS"]
    assert obs.joint_names == tuple(f"robot0_joint{i}" for i in range(1, 8)) + (
        "gripper0_finger_joint1", "gripper0_finger_joint2")
    assert obs.joint_positions.shape == (9,)
    np.testing.assert_array_equal(obs.joint_positions[7:], obs.gripper_qpos)
    assert obs.gripper_qpos[0] > 0.03  # fingers open after the no-op (gripper open) wait steps
    assert abs(np.linalg.norm(obs.ee_quaternion) - 1.0) < 1e-9
    # Base frame: the hand starts in front of the base and above it, near the mid plane.
    assert 0.2 < obs.ee_position[0] < 0.7 and abs(obs.ee_position[1]) < 0.2 and 0.1 < obs.ee_position[2] < 0.5
    assert obs.success is False
    # OFT's state: world-frame eef position, its orientation as a rotation vector, the finger qpos.
    # Checked against the sim's own eef site and hand body (robosuite's observables are taken just
    # before the last physics update of a step, hence the small tolerances).
    robot, data = env._env.robots[0], env._env.sim.data
    assert obs.state.shape == (8,)
    np.testing.assert_allclose(obs.state[:3], data.site_xpos[robot.eef_site_id], atol=1e-4)
    np.testing.assert_allclose(Rotation.from_rotvec(obs.state[3:6]).as_matrix(),
                               data.get_body_xmat(robot.robot_model.eef_name), atol=1e-3)
    np.testing.assert_array_equal(obs.state[6:], obs.gripper_qpos)
    # Upright wrist view: the gripper's dark fingers are at the bottom of the frame, the table above.
    gray = obs.wrist.astype(np.float64).mean(axis=2)
    assert gray[-16:].mean() < 0.6 * gray[:16].mean()


@pytest.mark.sim
@pytest.mark.slow
@pytest.mark.parametrize("axis", [1, 2])
def test_ee_follows_delta_actions_in_base_frame(env, axis):
    start = env.reset(0, num_steps_wait=0).ee_position
    action = np.zeros(7)
    action[axis] = 0.5
    action[6] = -1.0
    for _ in range(10):
        obs = env.step(action)
    moved = obs.ee_position - start
    assert moved[axis] > 0.03, moved
    others = np.delete(moved, axis)
    assert np.all(np.abs(others) < 0.3 * moved[axis]), moved


@pytest.mark.sim
@pytest.mark.slow
def test_reset_is_deterministic(env):
    actions = np.random.default_rng(7).uniform(-0.5, 0.5, size=(5, 7))
    actions[:, 6] = [1.0, 1.0, 0.0, 0.0, 1.0]  # policy gripper: open, then close, then open

    def rollout(init_state_id):
        first = env.reset(init_state_id, num_steps_wait=3)
        frames = [first]
        frames += [env.step(postprocess_gripper(a)) for a in actions]
        return frames

    run_a, run_b = rollout(1), rollout(1)
    for a, b in zip(run_a, run_b):
        np.testing.assert_array_equal(a.ee_position, b.ee_position)
        np.testing.assert_array_equal(a.joint_positions, b.joint_positions)
        np.testing.assert_array_equal(a.agentview, b.agentview)
    other = env.reset(2, num_steps_wait=3)
    assert not np.array_equal(other.agentview, run_a[0].agentview)


@pytest.mark.sim
@pytest.mark.slow
def test_openvla_reset_rng_places_fixtures_as_openvlas_evaluation():
    """OpenVLA's evaluation seeds a task's env once and resets it for episode 0, 1, 2, ...: where a
    reset puts libero_goal's fixtures (stove, cabinet, rack) depends on how many resets came
    before, and the fixed initial state does not set them."""
    import numpy.random

    def fixtures(sim: LiberoEnv) -> np.ndarray:
        return np.array(sim._env.sim.model.body_pos)

    with LiberoEnv("libero_goal", 2, camera_size=64, seed=0) as sim:
        official = []
        sim._env.seed(0)  # run_libero_eval.py: env.seed(0) once, then per episode env.reset()
        for episode in range(3):
            sim._env.reset()
            sim._env.set_init_state(sim._init_states[episode])
            official.append(fixtures(sim))
        assert not np.array_equal(official[0], official[2])  # the RNG matters here
        numpy.random.seed(123)  # whatever ran before must not matter
        for episode in (2, 0, 1, 2):  # out of order: jumps replay resets, repeats restore the state
            sim.reset(episode, num_steps_wait=0, reset_rng="openvla")
            np.testing.assert_array_equal(fixtures(sim), official[episode])
        sim.reset(2, num_steps_wait=0, reset_rng="reseed")
        assert not np.array_equal(fixtures(sim), official[2])  # seeding every reset is not the protocol


@pytest.mark.sim
def test_init_state_out_of_range_is_rejected(env):
    with pytest.raises(ValueError, match=r"0\.\.49"):
        env.reset(50)


# ----- the bridge's ROS-free parts: parameters, action checks, the action inbox, episodes, video -----

def test_bridge_config_defaults_and_suite_lengths():
    config = BridgeConfig().validate()
    assert config.episode_steps == 220 and config.mode == "lockstep" and config.camera_size == 256
    assert BridgeConfig(task_suite="libero_10").episode_steps == 520
    assert BridgeConfig(task_suite="libero_10", max_steps=15).episode_steps == 15


@pytest.mark.parametrize("field, value, message", [
    ("task_suite", "libero_100", "task_suite must be one of"),
    ("task_id", -1, "task_id must be >= 0"),
    ("init_state_id", -2, "init_state_id must be >= 0"),
    ("camera_size", 0, "camera_size must be > 0"),
    ("image_preprocess", "jpeg", "image_preprocess must be one of"),
    ("reset_rng", "seeded", "reset_rng must be one of"),
    ("mode", "fast", "mode must be one of"),
    ("control_rate_hz", 0.0, "control_rate_hz must be > 0"),
    ("action_timeout_s", -1.0, "action_timeout_s must be > 0"),
    ("num_steps_wait", -1, "num_steps_wait must be >= 0"),
    ("max_steps", -5, "max_steps must be >= 0"),
    ("gripper_postprocess", "binary", "gripper_postprocess must be one of"),
    ("max_steps", 995, "env horizon"),
])
def test_bridge_config_rejects_bad_values(field, value, message):
    with pytest.raises(ValueError, match=message):
        BridgeConfig(**{field: value}).validate()


def test_bridge_config_from_parameter_values():
    config = BridgeConfig.from_values({"control_rate_hz": 10, "task_id": 3})
    assert config.control_rate_hz == 10.0 and isinstance(config.control_rate_hz, float) and config.task_id == 3
    with pytest.raises(ValueError, match="task_id must be a int"):
        BridgeConfig.from_values({"task_id": 1.5})
    with pytest.raises(ValueError, match="record_video must be a bool"):
        BridgeConfig.from_values({"record_video": 1})
    with pytest.raises(ValueError, match="unknown bridge parameters"):
        BridgeConfig.from_values({"task": 1})
    with pytest.raises(ValueError, match="video_dir"):
        BridgeConfig(record_video=True, video_dir="").validate()


@pytest.mark.parametrize("chunks", [False, True])
def test_parse_action_accepts_labelled_or_unlabelled_single_point(chunks):
    values = [0.1, 0.2, 0.3, 0.0, 0.0, 0.0, 1.0]
    np.testing.assert_array_equal(parse_action(list(POSE_LABELS), [values], chunks), [values])
    np.testing.assert_array_equal(parse_action([], [values], chunks), [values])


def test_parse_action_accepts_a_chunk_only_where_chunks_are_executed():
    chunk = np.arange(8 * 7, dtype=np.float64).reshape(8, 7) / 100.0
    np.testing.assert_array_equal(parse_action(list(POSE_LABELS), chunk.tolist(), chunks=True), chunk)
    with pytest.raises(ValueError, match=r"exactly one trajectory point, got 8 \(an action chunk is executed in "
                                         r"lockstep mode only\)"):
        parse_action([], chunk.tolist(), chunks=False)


@pytest.mark.parametrize("labels, points, chunks, message", [
    ([], [], False, "exactly one trajectory point, got 0"),
    ([], [], True, "at least one trajectory point, got 0"),
    ([], [[0.0] * 7, [0.0] * 7], False, "exactly one trajectory point, got 2"),
    (["x", "y", "z", "roll", "pitch", "yaw", "grip"], [[0.0] * 7], False, "joint_names must be"),
    ([], [[0.0] * 6], False, "expected 7 positions, got 6"),
    ([], [[0.0] * 6 + [float("-inf")]], False, "finite"),
    ([], [[0.0] * 7, [0.0] * 7, [0.0] * 6], True, "point 2: expected 7 positions, got 6"),
    ([], [[0.0] * 7, [float("nan")] * 7], True, "point 1: action must be finite"),
])
def test_parse_action_rejects_malformed(labels, points, chunks, message):
    with pytest.raises(ValueError, match=message):
        parse_action(labels, points, chunks)


def test_inbox_matches_only_the_awaited_stamp():
    inbox = ActionInbox()
    inbox.expect(200)
    assert not inbox.put(np.zeros(7), 100)  # stale frame
    assert inbox.wait_matched(0.01) is None
    assert inbox.put(np.ones(7), 200)
    assert not inbox.put(np.full(7, 2.0), 200)  # a second answer for the same frame does not replace the first
    np.testing.assert_array_equal(inbox.wait_matched(0.0).values, np.ones(7))
    assert inbox.latest().stamp_ns == 200 and inbox.latest().values[0] == 2.0
    inbox.expect(300)  # next frame: the old match is gone
    assert inbox.wait_matched(0.01) is None
    inbox.clear()
    assert inbox.latest() is None


def test_inbox_takes_an_answer_to_any_send_of_the_awaited_frame():
    inbox = ActionInbox()
    inbox.expect(200)
    inbox.also_expect(260)  # the same observation re-sent: the answer to the first send arrives late
    assert inbox.put(np.ones(7), 200)
    np.testing.assert_array_equal(inbox.wait_matched(0.0).values, np.ones(7))
    inbox.also_expect(320)  # a re-send after the match keeps it
    assert inbox.wait_matched(0.0).stamp_ns == 200
    inbox.expect(400)  # the next observation: answers to the last one's sends are stale
    assert not inbox.put(np.ones(7), 260) and not inbox.put(np.ones(7), 320)
    assert inbox.wait_matched(0.01) is None


def test_inbox_wakes_a_waiter_on_match_and_on_interrupt():
    inbox = ActionInbox()
    inbox.expect(5)
    threading.Timer(0.1, inbox.put, args=(np.ones(7), 5)).start()
    started = time.monotonic()
    assert inbox.wait_matched(10.0).stamp_ns == 5
    inbox.expect(6)
    threading.Timer(0.1, inbox.interrupt).start()
    assert inbox.wait_matched(10.0) is None
    assert time.monotonic() - started < 5.0  # woken, not timed out


def test_episode_ends_at_max_steps_or_success():
    episode = Episode(1, "libero_goal", 4, 7, max_steps=2, instruction="open the drawer")
    assert (episode.done, episode.outcome) == (False, "running")
    episode.record_step(False)
    episode.record_step(False)
    assert (episode.done, episode.outcome, episode.step) == (True, "max_steps", 2)
    with pytest.raises(RuntimeError, match="reset before stepping"):
        episode.record_step(True)
    assert episode.values()["action_latency_ms"] == ""  # no lockstep latency recorded
    won = Episode(2, "libero_goal", 4, 7, max_steps=3, instruction="open the drawer")
    won.record_step(False, action_latency_s=0.25)
    won.record_step(True, action_latency_s=0.0625)
    assert won.values() == {
        "episode": "2", "task_suite": "libero_goal", "task_id": "4", "init_state_id": "7", "step": "2",
        "max_steps": "3", "success": "true", "done": "true", "instruction": "open the drawer",
        "actions_rejected": "0", "action_latency_ms": "62.500", "action_latency_ms_mean": "156.250"}
    # an action chunk: its first step has the action's latency, the points after it none of their own
    chunked = Episode(3, "libero_goal", 4, 7, max_steps=5, instruction="open the drawer")
    for latency in (0.5, None, None):
        chunked.record_step(False, action_latency_s=latency)
    assert chunked.values()["action_latency_ms"] == "" and chunked.values()["action_latency_ms_mean"] == "500.000"
    chunked.record_step(False, action_latency_s=0.25)
    values = chunked.values()
    assert values["action_latency_ms"] == "250.000" and values["action_latency_ms_mean"] == "375.000"


def test_episode_video_writes_every_frame(tmp_path):
    path = episode_video_path(tmp_path, "libero_object", 3, 12, 7)
    assert path.name == "libero_object_task03_init12_ep0007.mp4"
    video = EpisodeVideo(path, fps=20)
    frames = [np.full((64, 64, 3), 40 * i, np.uint8) for i in range(5)]
    for frame in frames:
        video.add(frame)
    with pytest.raises(ValueError, match="uint8 HxWx3"):
        video.add(np.zeros((64, 64), np.uint8))
    assert video.close() == path
    decoded = decode_video(path)
    assert len(decoded) == 5 and decoded[0].shape == (64, 64, 3)
    assert abs(float(decoded[3].mean()) - 120.0) < 4.0  # lossy, but the content is there


def decode_video(path) -> list[np.ndarray]:
    import imageio_ffmpeg

    frames = imageio_ffmpeg.read_frames(str(path))
    width, height = next(frames)["size"]
    return [np.frombuffer(raw, np.uint8).reshape(height, width, 3) for raw in frames]
