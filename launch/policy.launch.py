"""The policy node, driven to active: `ros2 launch openvla_ros policy.launch.py backend:=onnxruntime
model_dir:=/models/openvla-7b-onnx unnorm_key:=bridge_orig image_topic:=/camera/color/image_raw`.

Parameters come from `params_file` (default: the package's config/policy.yaml); any argument below
left empty keeps the file's value. The node is a lifecycle node: this file emits `configure` on
start and `activate` once it first reaches inactive (so `autostart` is forced off here); after that,
`ros2 lifecycle set` drives it.
"""
import lifecycle_msgs.msg
from launch import LaunchDescription
from launch.actions import DeclareLaunchArgument, EmitEvent, OpaqueFunction, RegisterEventHandler
from launch.events import matches_action
from launch.substitutions import LaunchConfiguration, PathJoinSubstitution
from launch_ros.actions import LifecycleNode
from launch_ros.event_handlers import OnStateTransition
from launch_ros.events.lifecycle import ChangeState
from launch_ros.substitutions import FindPackageShare

from openvla_ros.nodes.policy_params import launch_overrides

# Launch arguments that override the node parameter of the same name when not empty.
PARAMETER_ARGUMENTS = {
    "backend": "torch | onnxruntime | om",
    "model_dir": "torch: HF-format checkpoint; onnxruntime/om: export directory",
    "unnorm_key": "norm stats key",
    "mode": "continuous | trigger",
    "center_crop_scale": "centre crop area before the model's resize, LIBERO fine-tunes: 0.9",
}


def _policy_node(context):
    # A bad value stops the launch here with the reason (argument, value, what it accepts).
    overrides = launch_overrides({name: LaunchConfiguration(name).perform(context) for name in PARAMETER_ARGUMENTS})
    overrides["autostart"] = False
    node = LifecycleNode(
        package="openvla_ros",
        executable="policy_node",
        name=LaunchConfiguration("node_name"),
        namespace=LaunchConfiguration("namespace"),
        parameters=[LaunchConfiguration("params_file"), overrides],
        remappings=[("image", LaunchConfiguration("image_topic")),
                    ("image/compressed", [LaunchConfiguration("image_topic"), "/compressed"]),
                    ("instruction", LaunchConfiguration("instruction_topic"))],
        output="screen",
    )
    configure = EmitEvent(event=ChangeState(lifecycle_node_matcher=matches_action(node),
                                            transition_id=lifecycle_msgs.msg.Transition.TRANSITION_CONFIGURE))
    # Once: after start-up the lifecycle is the operator's (`ros2 lifecycle set`); a later configure
    # must leave the node inactive, not have this file activate it behind their back.
    activate_when_inactive = RegisterEventHandler(OnStateTransition(
        target_lifecycle_node=node, start_state="configuring", goal_state="inactive", handle_once=True,
        entities=[EmitEvent(event=ChangeState(lifecycle_node_matcher=matches_action(node),
                                              transition_id=lifecycle_msgs.msg.Transition.TRANSITION_ACTIVATE))]))
    return [activate_when_inactive, node, configure]


def generate_launch_description() -> LaunchDescription:
    default_params = PathJoinSubstitution([FindPackageShare("openvla_ros"), "config", "policy.yaml"])
    arguments = [
        DeclareLaunchArgument("params_file", default_value=default_params, description="policy node parameters YAML"),
        DeclareLaunchArgument("namespace", default_value="", description="namespace of the node and its topics"),
        DeclareLaunchArgument("node_name", default_value="policy_node", description="the node's name"),
        DeclareLaunchArgument("image_topic", default_value="image",
                              description="camera topic (its /compressed sibling with use_compressed)"),
        DeclareLaunchArgument("instruction_topic", default_value="instruction",
                              description="language instruction topic (std_msgs/String, latched)"),
    ]
    arguments += [DeclareLaunchArgument(name, default_value="", description=f"{text} (empty: params file)")
                  for name, text in PARAMETER_ARGUMENTS.items()]
    return LaunchDescription([*arguments, OpaqueFunction(function=_policy_node)])
