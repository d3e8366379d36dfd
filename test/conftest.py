"""Shared test setup: an isolated ROS 2 domain per test run, loopback-only discovery, and
paths to the shared official fixture (skipped with a reason when ../shared is absent)."""
from __future__ import annotations

import importlib.util
import os
import random
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED_FIXTURE = REPO_ROOT.parent / "shared" / "fixtures" / "openvla_official_tiny"
SHARED_OFT_FIXTURE = REPO_ROOT.parent / "shared" / "fixtures" / "openvla_oft_tiny"

# One domain per pytest run so parallel runs (CI next to a developer) never see each other's
# topics; set before any test process imports rclpy, and inherited by every node subprocess.
if "OPENVLA_TEST_DOMAIN_ID" not in os.environ:
    os.environ["OPENVLA_TEST_DOMAIN_ID"] = str(random.SystemRandom().randint(1, 100))
os.environ["ROS_DOMAIN_ID"] = os.environ["OPENVLA_TEST_DOMAIN_ID"]
os.environ.setdefault("ROS_AUTOMATIC_DISCOVERY_RANGE", "LOCALHOST")
os.environ.setdefault("RMW_IMPLEMENTATION", "rmw_fastrtps_cpp")
os.environ.setdefault("MUJOCO_GL", "egl")
os.environ.setdefault("PYOPENGL_PLATFORM", "egl")


@pytest.fixture(scope="session")
def official_fixture() -> Path:
    """The official-format tiny checkpoint made by the OpenVLA reference code."""
    if not (SHARED_FIXTURE / "reference.json").is_file():
        pytest.skip(f"official fixture not present at {SHARED_FIXTURE} (../shared is absent)")
    return SHARED_FIXTURE


@pytest.fixture(scope="session")
def official_oft_fixture() -> Path:
    """The OpenVLA-OFT tiny checkpoint made and run by the official OFT code."""
    if not (SHARED_OFT_FIXTURE / "reference.json").is_file():
        pytest.skip(f"official OFT fixture not present at {SHARED_OFT_FIXTURE} (../shared is absent)")
    return SHARED_OFT_FIXTURE


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory) -> Path:
    """A random test-size OpenVLA checkpoint in the official format (`openvla-ros make-tiny`, seed 0)."""
    from openvla_ros.model.tiny import write_tiny_checkpoint

    return write_tiny_checkpoint(tmp_path_factory.mktemp("tiny_checkpoint") / "openvla-tiny", seed=0, size="tiny")


@pytest.fixture(scope="session")
def tiny_oft_checkpoint(tmp_path_factory) -> Path:
    """A random test-size OpenVLA-OFT checkpoint (`make-tiny --oft`, seed 0: LIBERO's 7-D actions, 8-D proprio)."""
    from openvla_ros.model.tiny_oft import write_tiny_oft_checkpoint

    return write_tiny_oft_checkpoint(tmp_path_factory.mktemp("tiny_oft") / "oft-tiny", seed=0)


@pytest.fixture(scope="session")
def small_checkpoint(tmp_path_factory) -> Path:
    """A random benchmark-size OpenVLA checkpoint (`make-tiny --size small`, seed 0)."""
    from openvla_ros.model.tiny import write_tiny_checkpoint

    return write_tiny_checkpoint(tmp_path_factory.mktemp("small_checkpoint") / "openvla-small", seed=0, size="small")


class _LaunchTestWithoutLaunchTesting(pytest.Module):
    def collect(self):
        pytest.skip("launch_testing is not installed: run this closed-loop launch test on a ROS 2 install "
                    "(`launch_test` or colcon test); the same loop runs in test_bridge_node.py without it")


def pytest_pycollect_makemodule(module_path, parent):
    # launch_testing's own pytest plugin collects `*.launch.py` tests; without it pytest cannot even
    # import such a file (the dot in its name), so report it as skipped with the reason instead.
    if module_path.name.endswith(".launch.py") and importlib.util.find_spec("launch_testing") is None:
        return _LaunchTestWithoutLaunchTesting.from_parent(parent, path=module_path)
    return None


@pytest.fixture(scope="session")
def tiny_onnx_export(tiny_checkpoint, tmp_path_factory) -> Path:
    """`tiny_checkpoint` exported to the five ONNX graphs + manifest (fp32, default layout)."""
    from openvla_ros.export import export_onnx

    return export_onnx(tiny_checkpoint, tmp_path_factory.mktemp("tiny_onnx") / "export", progress=None)


@pytest.fixture(scope="session")
def tiny_oft_onnx_export(tiny_oft_checkpoint, tmp_path_factory) -> Path:
    """`tiny_oft_checkpoint` exported to the OFT graphs + manifest (fp32, default layout)."""
    from openvla_ros.export import export_onnx

    return export_onnx(tiny_oft_checkpoint, tmp_path_factory.mktemp("tiny_oft_onnx") / "export", progress=None)


@pytest.fixture(scope="session")
def small_onnx_export(small_checkpoint, tmp_path_factory) -> Path:
    """`small_checkpoint` exported to the five ONNX graphs + manifest (fp32, default layout)."""
    from openvla_ros.export import export_onnx

    return export_onnx(small_checkpoint, tmp_path_factory.mktemp("small_onnx") / "export", progress=None)


@pytest.fixture(scope="session")
def demo_model() -> Path:
    """The demo model (`openvla-ros make-demo --out models/demo --skip-if-exists`): built once, in a
    few minutes, and reused by later runs and by `make demo`. Holds checkpoint/, onnx/ and
    training_report.json."""
    import subprocess
    import sys

    out = REPO_ROOT / "models" / "demo"
    subprocess.run([sys.executable, "-m", "openvla_ros.cli", "make-demo", "--out", str(out), "--skip-if-exists"],
                   check=True, cwd=REPO_ROOT)
    return out


@pytest.fixture(scope="session")
def tiny_onnx_export_fp16(tiny_checkpoint, tmp_path_factory) -> Path:
    """`tiny_checkpoint` exported in fp16 (what `convert-om` accepts without --allow-fp32)."""
    from openvla_ros.export import export_onnx

    return export_onnx(tiny_checkpoint, tmp_path_factory.mktemp("tiny_onnx_fp16") / "export", dtype="fp16",
                       progress=None)


@pytest.fixture()
def pyacl(monkeypatch):
    """A fresh strict pyACL contract double (test/pyacl_double.py) installed as the `acl` module, so
    `AclGraphs` / `load_policy("om", ...)` run on it in this process. Yields the double; its
    `outstanding()`, `copies`, `calls`, `executions` and `violations` are what tests assert on."""
    import sys

    from pyacl_double import PyAclDouble

    double = PyAclDouble()
    monkeypatch.setitem(sys.modules, "acl", double)
    yield double


@pytest.fixture(scope="session")
def tiny_om_export(tiny_onnx_export, tmp_path_factory) -> Path:
    """`tiny_onnx_export` converted by convert_onnx_to_om.sh with the double's stand-in atc
    (fp32, so --allow-fp32): .om stand-ins + manifest + processor files, for the `pyacl` fixture."""
    from om_stand_in import convert_with_stand_in_atc

    return convert_with_stand_in_atc(tiny_onnx_export, tmp_path_factory.mktemp("tiny_om") / "om", "--allow-fp32")


@pytest.fixture(scope="session")
def small_om_export(small_onnx_export, tmp_path_factory) -> Path:
    """`small_onnx_export` converted like `tiny_om_export`."""
    from om_stand_in import convert_with_stand_in_atc

    return convert_with_stand_in_atc(small_onnx_export, tmp_path_factory.mktemp("small_om") / "om", "--allow-fp32")
