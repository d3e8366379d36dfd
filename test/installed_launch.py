"""The package's launch files as ROS 2 tools find them (through the ament index), for the launch tests."""
from __future__ import annotations

from pathlib import Path

from ament_index_python.packages import get_package_share_directory
from launch.actions import IncludeLaunchDescription
from launch.launch_description_sources import PythonLaunchDescriptionSource


def installed_launch_file(name: str) -> Path:
    return Path(get_package_share_directory("openvla_ros")) / "launch" / name


def include_installed(name: str, arguments: dict[str, str]) -> IncludeLaunchDescription:
    """`name` from share/openvla_ros/launch, with these launch arguments."""
    return IncludeLaunchDescription(PythonLaunchDescriptionSource(str(installed_launch_file(name))),
                                    launch_arguments=arguments.items())
