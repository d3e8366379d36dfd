"""ament_python package definition; also installable with plain pip into a venv."""
from glob import glob

from setuptools import find_packages, setup

PACKAGE = "openvla_ros"

setup(
    name=PACKAGE,
    version="0.1.0",
    packages=find_packages(exclude=["test", "test.*"]),
    data_files=[
        ("share/ament_index/resource_index/packages", [f"resource/{PACKAGE}"]),
        (f"share/{PACKAGE}", ["package.xml"]),
        (f"share/{PACKAGE}/launch", glob("launch/*.launch.py")),
        (f"share/{PACKAGE}/config", glob("config/*.yaml")),
        (f"share/{PACKAGE}/scripts", ["scripts/convert_onnx_to_om.sh"]),
    ],
    # ROS dependencies come from rosdep (package.xml) or the ROS wheels in requirements-ros.txt;
    # the ML and simulator dependencies are pinned in requirements*.txt.
    install_requires=["setuptools"],
    # `colcon test` runs pytest (rather than unittest) for a package that lists it here.
    extras_require={"test": ["pytest", "ruff"]},
    zip_safe=True,
    maintainer="openvla_ros maintainers",
    maintainer_email="maintainers@openvla-ros.dev",
    description="OpenVLA vision-language-action policy node and LIBERO bridge for ROS 2",
    license="MIT",
    python_requires=">=3.10",
    entry_points={
        "console_scripts": [
            f"policy_node = {PACKAGE}.nodes.policy_node:main",
            f"libero_bridge = {PACKAGE}.nodes.libero_bridge:main",
            f"openvla-ros = {PACKAGE}.cli:main",
        ],
    },
)
