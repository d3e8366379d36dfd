"""The package installs where ROS 2 tools look: share/ data files, ament index marker, and console
scripts in lib/openvla_ros (what `ros2 run` / `ros2 launch` resolve after `colcon build`)."""
import shutil
import subprocess
import sys
import xml.etree.ElementTree as ET
import zipfile
from pathlib import Path

import pytest

from conftest import REPO_ROOT

PKG = "openvla_ros"
SCRIPTS = {"policy_node", "libero_bridge", "openvla-ros"}
SOURCES = ["setup.py", "setup.cfg", "package.xml", "resource", PKG, "launch", "config", "scripts"]


def _expected_share_files() -> set[str]:
    files = {f"share/ament_index/resource_index/packages/{PKG}", f"share/{PKG}/package.xml"}
    files |= {f"share/{PKG}/launch/{p.name}" for p in (REPO_ROOT / "launch").glob("*.launch.py")}
    files |= {f"share/{PKG}/config/{p.name}" for p in (REPO_ROOT / "config").glob("*.yaml")}
    files.add(f"share/{PKG}/scripts/convert_onnx_to_om.sh")
    return files


@pytest.fixture(scope="module")
def source_copy(tmp_path_factory) -> Path:
    """A copy of the package sources, so building never writes into the working tree."""
    dst = tmp_path_factory.mktemp("src")
    for name in SOURCES:
        src = REPO_ROOT / name
        if not src.exists():
            continue
        if src.is_dir():
            shutil.copytree(src, dst / name, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy2(src, dst / name)
    return dst


def test_wheel_carries_share_files_and_console_scripts(source_copy, tmp_path):
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation",
                    str(source_copy), "-w", str(tmp_path)], check=True, capture_output=True)
    wheel = next(tmp_path.glob(f"{PKG}-*.whl"))
    with zipfile.ZipFile(wheel) as zf:
        names = zf.namelist()
        data_prefix = next(n.split("/data/")[0] for n in names if ".data/data/" in n) + "/data/"
        data_files = {n[len(data_prefix):] for n in names if n.startswith(data_prefix)}
        entry_points = zf.read(next(n for n in names if n.endswith("entry_points.txt"))).decode()
    assert _expected_share_files() <= data_files
    assert any(f.startswith(f"share/{PKG}/launch/") for f in data_files), "no launch files installed"
    for script in SCRIPTS:
        assert f"{script} = " in entry_points


def test_colcon_style_install_puts_scripts_in_lib_package_dir(source_copy, tmp_path):
    # colcon's ament_python build runs `setup.py install --prefix ... --record ...`; setup.cfg must
    # send the scripts to lib/<pkg> where `ros2 run` finds them.
    prefix = tmp_path / "install"
    subprocess.run([sys.executable, "setup.py", "-q", "install", "--prefix", str(prefix),
                    "--single-version-externally-managed", "--record", str(tmp_path / "rec.txt")],
                   cwd=source_copy, check=True, capture_output=True)
    installed = {str(p.relative_to(prefix)) for p in prefix.rglob("*") if p.is_file()}
    assert _expected_share_files() <= installed
    assert {f"lib/{PKG}/{s}" for s in SCRIPTS} <= installed


def test_package_xml_declares_ros_dependencies():
    root = ET.parse(REPO_ROOT / "package.xml").getroot()
    assert root.get("format") == "3"
    assert root.findtext("name") == PKG
    assert root.find("export/build_type").text == "ament_python"
    exec_deps = {e.text for e in root.findall("exec_depend")}
    assert {"rclpy", "sensor_msgs", "std_msgs", "geometry_msgs", "std_srvs", "diagnostic_msgs",
            "cv_bridge", "launch", "launch_ros"} <= exec_deps
    test_deps = {e.text for e in root.findall("test_depend")}
    assert {"launch_testing", "launch_testing_ros", "python3-pytest"} <= test_deps
