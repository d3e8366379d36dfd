"""launch/sim.launch.py and config/bridge.yaml agree with the bridge node, checked without the ROS 2
`launch` packages (the venv has none): the launch file is parsed, not run."""
from __future__ import annotations

import ast

import pytest
import yaml

from conftest import REPO_ROOT
from openvla_ros.node_process import NODE_MODULES
from openvla_ros.sim.bridge_config import BridgeConfig, launch_overrides

LAUNCH_FILE = REPO_ROOT / "launch" / "sim.launch.py"
CONFIG_FILE = REPO_ROOT / "config" / "bridge.yaml"


@pytest.fixture(scope="module")
def launch_tree() -> ast.Module:
    return ast.parse(LAUNCH_FILE.read_text(), filename=str(LAUNCH_FILE))


def calls(tree: ast.AST, name: str) -> list[ast.Call]:
    return [n for n in ast.walk(tree) if isinstance(n, ast.Call) and getattr(n.func, "id", None) == name]


def keywords(call: ast.Call) -> dict[str, ast.AST]:
    return {k.arg: k.value for k in call.keywords}


def parameter_arguments(tree: ast.Module) -> dict[str, str]:
    for node in tree.body:
        if isinstance(node, ast.Assign) and getattr(node.targets[0], "id", None) == "PARAMETER_ARGUMENTS":
            return ast.literal_eval(node.value)
    raise AssertionError("PARAMETER_ARGUMENTS not found")


def test_launch_file_starts_the_bridge_with_params_file_and_overrides(launch_tree):
    (node,) = calls(launch_tree, "Node")
    kw = keywords(node)
    assert ast.literal_eval(kw["package"]) == "openvla_ros"
    assert ast.literal_eval(kw["executable"]) == "libero_bridge" and "libero_bridge" in NODE_MODULES
    assert [type(p).__name__ for p in kw["parameters"].elts] == ["Call", "Name"]  # params file, then overrides
    (remap,) = kw["remappings"].elts
    assert ast.literal_eval(remap.elts[0]) == "policy_step"
    names = [f.name for f in ast.walk(launch_tree) if isinstance(f, ast.FunctionDef)]
    assert "generate_launch_description" in names


def test_launch_arguments_name_bridge_parameters(launch_tree):
    overridable = parameter_arguments(launch_tree)
    assert set(overridable) <= set(BridgeConfig.names())
    assert {"task_suite", "task_id", "init_state_id", "mode", "max_steps", "record_video", "video_dir"} <= set(overridable)
    declared = {ast.literal_eval(c.args[0]): keywords(c) for c in calls(launch_tree, "DeclareLaunchArgument")
                if isinstance(c.args[0], ast.Constant)}
    assert {"params_file", "namespace", "node_name", "policy_step"} <= set(declared)
    # Without a remap the node calls policy_node/step; the launch file's default must agree.
    assert ast.literal_eval(declared["policy_step"]["default_value"]) == "policy_node/step"


def test_config_file_lists_every_parameter_with_the_node_defaults():
    document = yaml.safe_load(CONFIG_FILE.read_text())
    params = document["/**"]["ros__parameters"]
    assert set(params) == set(BridgeConfig.names())
    config = BridgeConfig.from_values(params).validate()
    assert config == BridgeConfig()


def test_launch_argument_strings_become_typed_overrides():
    overrides = launch_overrides({"task_suite": "libero_object", "task_id": "3", "record_video": "true",
                                  "mode": "", "video_dir": "/tmp/videos", "max_steps": ""})
    assert overrides == {"task_suite": "libero_object", "task_id": 3, "record_video": True, "video_dir": "/tmp/videos"}
    with pytest.raises(ValueError, match="task_id must be a int"):
        launch_overrides({"task_id": "three"})


def test_closed_loop_launch_test_uses_declared_arguments(launch_tree):
    """test_sim_in_the_loop.launch.py only runs on a ROS 2 install; here: it parses, and every
    argument it passes is one the included launch file declares."""
    tree = ast.parse((REPO_ROOT / "test" / "test_sim_in_the_loop.launch.py").read_text())
    includes = {}
    for call in calls(tree, "IncludeLaunchDescription"):
        argument_dict = keywords(call)["launch_arguments"].func.value  # {...}.items()
        includes[ast.unparse(call.args[0])] = {ast.literal_eval(key) for key in argument_dict.keys}
    (sim_args,) = [args for source, args in includes.items() if "sim.launch.py" in source]
    declared = set(parameter_arguments(launch_tree))
    assert sim_args <= declared, sim_args - declared
    (policy_args,) = [args for source, args in includes.items() if "policy.launch.py" in source]
    policy_launch = REPO_ROOT / "launch" / "policy.launch.py"
    if policy_launch.is_file():
        policy_tree = ast.parse(policy_launch.read_text())
        policy_declared = {ast.literal_eval(c.args[0]) for c in calls(policy_tree, "DeclareLaunchArgument")
                           if c.args and isinstance(c.args[0], ast.Constant)}
        assert policy_args <= policy_declared, policy_args - policy_declared
