"""launch/policy.launch.py and config/policy.yaml agree with the policy node, checked by parsing the
launch file (it runs in test/launch_tests/ where the ROS 2 launch tooling is installed)."""
from __future__ import annotations

import ast
import importlib.util

import pytest
import yaml

from conftest import REPO_ROOT
from openvla_ros.node_process import NODE_MODULES

policy_params = pytest.importorskip("openvla_ros.nodes.policy_params", reason="rclpy message packages missing")

LAUNCH_FILE = REPO_ROOT / "launch" / "policy.launch.py"
CONFIG_FILE = REPO_ROOT / "config" / "policy.yaml"
REQUIRED_ARGUMENTS = {"backend", "model_dir", "unnorm_key", "namespace", "params_file", "image_topic"}


@pytest.fixture(scope="module")
def tree() -> ast.Module:
    return ast.parse(LAUNCH_FILE.read_text(), filename=str(LAUNCH_FILE))


def calls(tree: ast.AST, name: str) -> list[ast.Call]:
    return [n for n in ast.walk(tree) if isinstance(n, ast.Call) and getattr(n.func, "id", None) == name]


def test_launch_file_declares_its_arguments(tree):
    overridable = next(n for n in tree.body if isinstance(n, ast.Assign)
                       and getattr(n.targets[0], "id", None) == "PARAMETER_ARGUMENTS")
    names = {ast.literal_eval(k) for k in overridable.value.keys}
    # Named arguments, plus one declared per PARAMETER_ARGUMENTS entry.
    declared = {ast.literal_eval(c.args[0]) for c in calls(tree, "DeclareLaunchArgument")
                if isinstance(c.args[0], ast.Constant)} | names
    assert REQUIRED_ARGUMENTS <= declared
    assert names <= set(policy_params.PARAMS)


def test_launch_argument_strings_become_checked_overrides():
    overrides = policy_params.launch_overrides({"backend": "om", "model_dir": "/models/x", "unnorm_key": "",
                                                "mode": "trigger", "center_crop_scale": "0.9"})
    assert overrides == {"backend": "om", "model_dir": "/models/x", "mode": "trigger", "center_crop_scale": 0.9}
    for argument, reason in [({"backend": "tensorflow"}, "backend:=tensorflow: backend 'tensorflow' is unknown"),
                             ({"mode": "sometimes"}, "mode:=sometimes: mode 'sometimes' is unknown"),
                             ({"center_crop_scale": "big"}, "center_crop_scale:=big: expected a number"),
                             ({"center_crop_scale": "1.5"},
                              r"center_crop_scale:=1.5: expected a value in \[0.01, 1.0\]")]:
        with pytest.raises(ValueError, match=reason):
            policy_params.launch_overrides(argument)


def test_launch_file_starts_the_lifecycle_node_and_drives_it_to_active(tree):
    (node,) = calls(tree, "LifecycleNode")
    kw = {k.arg: k.value for k in node.keywords}
    assert ast.literal_eval(kw["executable"]) == "policy_node" and "policy_node" in NODE_MODULES
    remapped = {ast.literal_eval(r.elts[0]) for r in kw["remappings"].elts}
    assert {"image", "image/compressed", "instruction"} <= remapped
    transitions = {a.attr for a in ast.walk(tree) if isinstance(a, ast.Attribute) and a.attr.startswith("TRANSITION_")}
    assert transitions == {"TRANSITION_CONFIGURE", "TRANSITION_ACTIVATE"}
    assert calls(tree, "OnStateTransition"), "activate must follow a successful configure"


def test_config_file_lists_every_parameter_with_the_node_defaults():
    params = yaml.safe_load(CONFIG_FILE.read_text())["/**"]["ros__parameters"]
    assert set(params) == set(policy_params.PARAMS)
    for name, spec in policy_params.PARAMS.items():
        assert params[name] == spec.default, name
        policy_params.check_value(name, params[name])


def test_launch_file_runs_on_a_ros2_install():
    if importlib.util.find_spec("launch") is None or importlib.util.find_spec("launch_ros") is None:
        pytest.skip("the ROS 2 launch packages are not installed (`make setup` installs them when "
                    "../shared/ros2_launch is present); the launch file was checked by parsing above")
    from launch.actions import DeclareLaunchArgument

    spec = importlib.util.spec_from_file_location("policy_launch", LAUNCH_FILE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    description = module.generate_launch_description()
    names = {e.name for e in description.entities if isinstance(e, DeclareLaunchArgument)}
    assert REQUIRED_ARGUMENTS <= names
