"""The policy node, driven to active: `ros2 launch openvla_ros policy.launch.py backend:=onnxruntime
model_dir:=/models/openvla-7b-onnx unnorm_key:=bridge_orig image_topic:=/camera/color/image_raw`.

Parameters come from `params_file` (default: the package's config/policy.yaml); any argument below
left empty keeps the file's value. The node is a lifecycle node: this file emits `configure` on
start and `activate` once it reaches inactive (so `autostart` is forced off here).
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

# Launch arguments that override the node parameter of the same name when not empty -> its type.
PARAMETER_ARGUMENTS = {"backend": str, "model_dir": str, "unnorm_key": str, "mode": str, "center_crop_scale": float}


def _policy_node(context):
    overrides = {"autostart": False}
    for name, kind in PARAMETER_ARGUMENTS.items():
        value = LaunchConfiguration(name).perform(context)
        if value:
            overrides[name] = kind(value)
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
    activate_when_inactive = RegisterEventHandler(OnStateTransition(
        target_lifecycle_node=node, start_state="configuring", goal_state="inactive",
        entities=[EmitEvent(event=ChangeState(lifecycle_node_matcher=matches_action(node),
                                              transition_id=lifecycle_msgs.msg.Transition.TRANSITION_ACTIVATE))]))
    return [activate_when_inactive, node, configure]


def generate_launch_description() -> LaunchDescription:
    default_params = PathJoinSubstitution([FindPackageShare("openvla_ros"), "config", "policy.yaml"])
    arguments = [
        DeclareLaunchArgument("params_file", default_value=default_params, description="policy node parameters YAML"),
        DeclareLaunchArgument("namespace", default_value="", description="namespace of the node and its topics"),
        DeclareLaunchArgument("node_name", default_value="policy_node"),
        DeclareLaunchArgument("image_topic", default_value="image",
                              description="camera topic (its /compressed sibling with use_compressed)"),
        DeclareLaunchArgument("instruction_topic", default_value="instruction"),
        DeclareLaunchArgument("backend", default_value="", description="torch | onnxruntime | om (empty: params file)"),
        DeclareLaunchArgument("model_dir", default_value="",
                              description="torch: HF-format checkpoint; onnxruntime/om: export directory "
                                          "(empty: params file)"),
        DeclareLaunchArgument("unnorm_key", default_value="", description="norm stats key (empty: params file)"),
        DeclareLaunchArgument("mode", default_value="", description="continuous | trigger (empty: params file)"),
        DeclareLaunchArgument("center_crop_scale", default_value="",
                              description="centre crop area before the model's resize, LIBERO fine-tunes: 0.9 "
                                          "(empty: params file)"),
    ]
    return LaunchDescription([*arguments, OpaqueFunction(function=_policy_node)])
