"""The LIBERO bridge: `ros2 launch openvla_ros sim.launch.py task_suite:=libero_object task_id:=3`.

Parameters come from `params_file` (default: the package's config/bridge.yaml); any argument below
left empty keeps the file's value. The bridge's step-service client is remapped to `policy_step`
(default policy_node/step, the policy node's ~/step next to it).
"""
from launch import LaunchDescription
from launch.actions import DeclareLaunchArgument, OpaqueFunction
from launch.substitutions import LaunchConfiguration, PathJoinSubstitution
from launch_ros.actions import Node
from launch_ros.substitutions import FindPackageShare

from openvla_ros.sim.bridge_config import launch_overrides

# Launch arguments that override a bridge parameter when not empty.
PARAMETER_ARGUMENTS = {
    "task_suite": "libero_spatial | libero_object | libero_goal | libero_10 | libero_90",
    "task_id": "task index within the suite",
    "init_state_id": "index of the task's fixed initial state",
    "mode": "lockstep | realtime",
    "max_steps": "episode length; 0 = the suite's OpenVLA default",
    "camera_size": "image size in pixels",
    "call_policy_step": "lockstep: call the policy's step service per frame (true) or not (false)",
    "gripper_postprocess": "openvla | none",
    "record_video": "true: mp4 per episode",
    "video_dir": "where videos go",
}


def _bridge(context):
    overrides = launch_overrides({name: LaunchConfiguration(name).perform(context) for name in PARAMETER_ARGUMENTS})
    return [Node(
        package="openvla_ros",
        executable="libero_bridge",
        name=LaunchConfiguration("node_name"),
        namespace=LaunchConfiguration("namespace"),
        parameters=[LaunchConfiguration("params_file"), overrides],
        remappings=[("policy_step", LaunchConfiguration("policy_step"))],
        output="screen",
    )]


def generate_launch_description() -> LaunchDescription:
    default_params = PathJoinSubstitution([FindPackageShare("openvla_ros"), "config", "bridge.yaml"])
    arguments = [
        DeclareLaunchArgument("params_file", default_value=default_params, description="bridge parameters YAML"),
        DeclareLaunchArgument("namespace", default_value="", description="namespace of the bridge's topics"),
        DeclareLaunchArgument("node_name", default_value="libero_bridge"),
        DeclareLaunchArgument("policy_step", default_value="policy_node/step",
                              description="the policy's step service (lockstep with call_policy_step)"),
    ]
    arguments += [DeclareLaunchArgument(name, default_value="", description=f"{text} (empty: params file)")
                  for name, text in PARAMETER_ARGUMENTS.items()]
    return LaunchDescription([*arguments, OpaqueFunction(function=_bridge)])
