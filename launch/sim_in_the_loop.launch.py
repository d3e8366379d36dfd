"""Bring-up: the LIBERO bridge and the policy node in lockstep, one episode per launch.

    ros2 launch openvla_ros sim_in_the_loop.launch.py backend:=onnxruntime model_dir:=models/demo/onnx \
        unnorm_key:=libero_demo task_suite:=libero_object task_id:=0

It includes sim.launch.py (the bridge: lockstep, calling the policy's ~/step per frame) and
policy.launch.py (the policy node: config/policy_sim.yaml, driven to active by that file's event
handlers). Each include runs in its own scope that receives only the arguments listed here:
launch 3.x's IncludeLaunchDescription does not scope launch arguments, so both files' `node_name`
and `params_file` would otherwise reach the other one.
"""
from launch import LaunchDescription
from launch.actions import DeclareLaunchArgument, GroupAction, IncludeLaunchDescription
from launch.launch_description_sources import PythonLaunchDescriptionSource
from launch.substitutions import LaunchConfiguration, PathJoinSubstitution
from launch_ros.substitutions import FindPackageShare

PACKAGE = "openvla_ros"
POLICY_NODE = "policy_node"

# Bring-up argument -> (default, description); "" keeps the included file's own default.
POLICY_ARGUMENTS = {
    "backend": ("", "torch | onnxruntime | om (empty: params file)"),
    "model_dir": ("", "torch: HF-format checkpoint; onnxruntime/om: export directory"),
    "unnorm_key": ("", "norm stats key (empty: the model's only one)"),
    "center_crop_scale": ("", "centre crop area before the model's resize, LIBERO fine-tunes: 0.9"),
    "instruction_topic": ("instruction", "the policy's instruction input: the bridge's task language "
                                         "(instruction) or a topic of your own"),
}
BRIDGE_ARGUMENTS = {
    "task_suite": ("", "libero_spatial | libero_object | libero_goal | libero_10 | libero_90"),
    "task_id": ("", "task index within the suite"),
    "init_state_id": ("", "index of the task's fixed initial state"),
    "max_steps": ("", "episode length; 0 = the suite's OpenVLA default"),
    "camera_size": ("", "image size in pixels"),
    "record_video": ("", "true: mp4 per episode"),
    "video_dir": ("", "where videos go"),
}


def _share(*parts: str) -> PathJoinSubstitution:
    return PathJoinSubstitution([FindPackageShare(PACKAGE), *parts])


def _scoped_include(launch_file: str, arguments: dict) -> GroupAction:
    # forwarding=False: the included file sees exactly `arguments`, none of this file's other ones.
    return GroupAction([IncludeLaunchDescription(PythonLaunchDescriptionSource(_share("launch", launch_file)))],
                       scoped=True, forwarding=False, launch_configurations=arguments)


def generate_launch_description() -> LaunchDescription:
    arguments = [
        DeclareLaunchArgument("policy_params_file", default_value=_share("config", "policy_sim.yaml"),
                              description="policy node parameters YAML"),
        DeclareLaunchArgument("bridge_params_file", default_value=_share("config", "bridge.yaml"),
                              description="bridge parameters YAML"),
    ]
    arguments += [DeclareLaunchArgument(name, default_value=default, description=text)
                  for name, (default, text) in {**POLICY_ARGUMENTS, **BRIDGE_ARGUMENTS}.items()]
    bridge = _scoped_include("sim.launch.py", {
        "params_file": LaunchConfiguration("bridge_params_file"),
        "mode": "lockstep", "call_policy_step": "true", "policy_step": f"{POLICY_NODE}/step",
        **{name: LaunchConfiguration(name) for name in BRIDGE_ARGUMENTS},
    })
    policy = _scoped_include("policy.launch.py", {
        "params_file": LaunchConfiguration("policy_params_file"), "node_name": POLICY_NODE,
        **{name: LaunchConfiguration(name) for name in POLICY_ARGUMENTS},
    })
    return LaunchDescription([*arguments, bridge, policy])
