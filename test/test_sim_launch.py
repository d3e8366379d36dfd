"""launch/sim.launch.py, sim_in_the_loop.launch.py and config/bridge.yaml agree with the bridge node,
checked without the ROS 2 `launch` packages: the launch files are parsed, not run (they run in
test/launch_tests/)."""
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
    assert {"task_suite", "task_id", "init_state_id", "mode", "max_steps", "record_video",
            "video_dir"} <= set(overridable)
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


def declared_arguments(path) -> set[str]:
    """Names of a launch file's arguments: DeclareLaunchArgument("name", ...) and the keys of its
    *_ARGUMENTS tables that it declares in a loop."""
    tree = ast.parse(path.read_text())
    names = {ast.literal_eval(c.args[0]) for c in calls(tree, "DeclareLaunchArgument")
             if c.args and isinstance(c.args[0], ast.Constant)}
    for node in tree.body:
        if isinstance(node, ast.Assign) and getattr(node.targets[0], "id", "").endswith("_ARGUMENTS"):
            names |= {ast.literal_eval(key) for key in node.value.keys}
    return names


def test_bring_up_passes_each_include_only_arguments_it_declares():
    """sim_in_the_loop.launch.py scopes each include to the arguments it lists; every one of them
    must be an argument of the included file (a misspelt one would be ignored silently)."""
    bringup = REPO_ROOT / "launch" / "sim_in_the_loop.launch.py"
    tree = ast.parse(bringup.read_text())
    tables = {node.targets[0].id: ast.literal_eval(node.value) for node in tree.body
              if isinstance(node, ast.Assign) and getattr(node.targets[0], "id", "").endswith("_ARGUMENTS")}
    includes = {}
    for call in calls(tree, "_scoped_include"):
        launch_file, arguments = ast.literal_eval(call.args[0]), call.args[1]
        fixed = {ast.literal_eval(k) for k in arguments.keys if k is not None}
        forwarded = {name for v in arguments.values if isinstance(v, ast.DictComp)
                     for name in tables[v.generators[0].iter.id]}
        includes[launch_file] = fixed | forwarded
    assert set(includes) == {"sim.launch.py", "policy.launch.py"}
    for launch_file, passed in includes.items():
        declared = declared_arguments(REPO_ROOT / "launch" / launch_file)
        assert passed <= declared, (launch_file, passed - declared)
    assert {"task_suite", "task_id", "max_steps", "mode", "call_policy_step",
            "policy_step"} <= includes["sim.launch.py"]
    assert {"backend", "model_dir", "unnorm_key", "instruction_topic", "params_file"} <= includes["policy.launch.py"]
