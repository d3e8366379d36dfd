"""Shared test setup: an isolated ROS 2 domain per test run, loopback-only discovery, paths to
the shared official fixture (skipped with a reason when ../shared is absent), and the ROS 2
tooling the launch tests need (test/launch_tests/: collected, counted and run when it is there,
skipped with the reason when not), and no node outliving the test that started it."""
from __future__ import annotations

import filecmp
import gc
import importlib.util
import os
import random
import subprocess
import sys
from functools import cache
from pathlib import Path

import pytest

from openvla_ros.node_process import live_processes, stop_processes

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED_FIXTURE = REPO_ROOT.parent / "shared" / "fixtures" / "openvla_official_tiny"
SHARED_OFT_FIXTURE = REPO_ROOT.parent / "shared" / "fixtures" / "openvla_oft_tiny"
LAUNCH_TESTS_DIR = REPO_ROOT / "test" / "launch_tests"
# Where `make setup` colcon-builds the package (--symlink-install, linked to this checkout).
COLCON_PREFIX = REPO_ROOT / "install" / "openvla_ros"
ROS2_TOOLING = ("launch", "launch_ros", "launch_testing", "launch_testing_ros", "ros2cli")


def _add_path(variable: str, entry: Path, *, first: bool) -> None:
    parts = [p for p in os.environ.get(variable, "").split(os.pathsep) if p and p != str(entry)]
    os.environ[variable] = os.pathsep.join([str(entry), *parts] if first else [*parts, str(entry)])


# Every node a test starts (directly, or by a launch file through lib/openvla_ros) runs this
# checkout's code, whatever else the environment has installed.
_add_path("PYTHONPATH", REPO_ROOT, first=True)
# ROS 2 tools (ros2 launch/run, launch_ros) find packages through the ament index: this checkout's
# colcon prefix first, the venv's ROS wheels (message packages) last.
if (Path(sys.prefix) / "share" / "ament_index").is_dir():
    _add_path("AMENT_PREFIX_PATH", Path(sys.prefix), first=False)
if (COLCON_PREFIX / "share" / "ament_index" / "resource_index" / "packages" / "openvla_ros").is_file():
    _add_path("AMENT_PREFIX_PATH", COLCON_PREFIX, first=True)

# One domain per pytest run so parallel runs (CI next to a developer) never see each other's
# topics; set before any test process imports rclpy, and inherited by every node subprocess.
if "OPENVLA_TEST_DOMAIN_ID" not in os.environ:
    os.environ["OPENVLA_TEST_DOMAIN_ID"] = str(random.SystemRandom().randint(1, 100))
os.environ["ROS_DOMAIN_ID"] = os.environ["OPENVLA_TEST_DOMAIN_ID"]
os.environ.setdefault("ROS_AUTOMATIC_DISCOVERY_RANGE", "LOCALHOST")
os.environ.setdefault("RMW_IMPLEMENTATION", "rmw_fastrtps_cpp")
os.environ.setdefault("MUJOCO_GL", "egl")
os.environ.setdefault("PYOPENGL_PLATFORM", "egl")


@pytest.hookimpl(trylast=True)
def pytest_unconfigure(config) -> None:
    """The run is over: freeze the heap out of the garbage collector's reach before the interpreter
    exits. On these machines a full collection costs about 6 us per object (0.6 M plain objects:
    3.9 s; after `import torch` alone 3.4 s) and the exit runs several over everything the suite
    loaded: after a loaded run of the whole suite pytest spent over 12 minutes in them (gdb:
    Py_FinalizeEx -> finalize_modules -> gc_collect_main); after test_official_fixture.py alone
    the exit took 24-32 s, frozen 0.9-2.3 s.
    Frozen objects are still freed by reference count; cycles among them are left to the OS."""
    gc.freeze()


@pytest.fixture(autouse=True)
def no_node_outlives_its_test():
    """Stops the nodes a test started and left running, and fails the test for it. A node left by a
    failed assertion would otherwise live until the run ends and answer, under the same name, the
    next module's services and diagnostics (seen under load: a later module's probe got another
    node's lifecycle responses). Nodes of module and session fixtures start before this snapshot."""
    before = set(live_processes())
    yield
    left = [process for process in live_processes() if process not in before]
    if left:
        stop_processes(left)
        pytest.fail(f"the test left {len(left)} node(s) running (stopped now): "
                    + ", ".join(f"{p.name} (pid {p.pid})" for p in left), pytrace=False)


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


@cache
def ros2_tooling_problem() -> str | None:
    """Why the launch tests and `ros2` commands cannot run here, or None: the ROS 2 launch tooling
    must be importable and the ament index must give this checkout's launch and config files."""
    missing = [name for name in ROS2_TOOLING if importlib.util.find_spec(name) is None]
    if missing:
        return (f"ROS 2 {', '.join(missing)} not installed: `make setup` installs them when ../shared/ros2_launch "
                "is present; on a ROS 2 install they come with the distribution (package.xml test_depend)")
    from ament_index_python.packages import PackageNotFoundError, get_package_share_directory

    try:
        share = Path(get_package_share_directory("openvla_ros"))
    except (PackageNotFoundError, OSError):
        return ("openvla_ros is not in the ament index (AMENT_PREFIX_PATH): `make setup` colcon-builds it into "
                "install/; in a ROS 2 workspace, `colcon build` and source install/setup.bash")
    sources = [*REPO_ROOT.glob("launch/*.launch.py"), *REPO_ROOT.glob("config/*.yaml")]
    stale = [str(f.relative_to(REPO_ROOT)) for f in sources
             if not (share / f.parent.name / f.name).is_file()
             or not filecmp.cmp(f, share / f.parent.name / f.name, shallow=False)]
    if stale:
        return f"the ament index's openvla_ros ({share}) differs from this checkout in {stale}: re-run `make setup`"
    return None


# Launch test file name -> "collected" or why it was skipped; reported after collection.
_launch_test_files: dict[str, str] = {}


class _SkippedLaunchTest(pytest.Module):
    def collect(self):
        pytest.skip(ros2_tooling_problem())


def pytest_pycollect_makemodule(module_path, parent):
    if module_path.parent != LAUNCH_TESTS_DIR:
        # Only test/launch_tests/ holds launch tests; every other module is collected the plain way.
        # launch_testing's plugin would import it inside this hook, where a module-level skip
        # (pytest.importorskip, pytest.skip) ends the collection of the whole directory.
        return pytest.Module.from_parent(parent, path=module_path)
    # Without the tooling a launch test cannot even be imported: report it skipped with the reason.
    # With it, launch_testing's pytest plugin collects the file (one item per launch test).
    problem = ros2_tooling_problem()
    _launch_test_files[module_path.name] = f"skipped: {problem}" if problem else "collected"
    if problem:
        return _SkippedLaunchTest.from_parent(parent, path=module_path)
    return None


def pytest_collection_modifyitems(config, items):
    # A launch test file that launch_testing did not take (no @pytest.mark.launch_test on its
    # generate_test_description) would run as plain unittest cases with nothing launched.
    plain = sorted({item.path.name for item in items
                    if item.path.parent == LAUNCH_TESTS_DIR and type(item).__name__ != "LaunchTestItem"})
    if plain:
        raise pytest.UsageError(f"test/launch_tests/{', '.join(plain)}: not collected as launch tests; mark "
                                "generate_test_description with @pytest.mark.launch_test")


def pytest_report_collectionfinish(config, start_path, items):
    if not _launch_test_files:
        return []
    collected = sorted(item.path.name for item in items if item.path.parent == LAUNCH_TESTS_DIR)
    lines = [f"launch tests: {len(collected)} collected ({', '.join(collected) or 'none'})"]
    lines += [f"launch tests: {name} {state}" for name, state in sorted(_launch_test_files.items())
              if state != "collected"]
    return lines


def ensure_demo_model() -> Path:
    """The demo model (`openvla-ros make-demo --out models/demo --skip-if-exists`): built once, in a
    few minutes, and reused by later runs and by `make demo`. Holds checkpoint/, onnx/ and
    training_report.json."""
    out = REPO_ROOT / "models" / "demo"
    subprocess.run([sys.executable, "-m", "openvla_ros.cli", "make-demo", "--out", str(out), "--skip-if-exists"],
                   check=True, cwd=REPO_ROOT)
    return out


@pytest.fixture(scope="session")
def tiny_onnx_export(tiny_checkpoint, tmp_path_factory) -> Path:
    """`tiny_checkpoint` exported to the ONNX graphs + manifest (fp32, default layout)."""
    from openvla_ros.export import export_onnx

    return export_onnx(tiny_checkpoint, tmp_path_factory.mktemp("tiny_onnx") / "export", progress=None)


@pytest.fixture(scope="session")
def tiny_oft_onnx_export(tiny_oft_checkpoint, tmp_path_factory) -> Path:
    """`tiny_oft_checkpoint` exported to the OFT graphs + manifest (fp32, default layout)."""
    from openvla_ros.export import export_onnx

    return export_onnx(tiny_oft_checkpoint, tmp_path_factory.mktemp("tiny_oft_onnx") / "export", progress=None)


@pytest.fixture(scope="session")
def official_oft_onnx_export(official_oft_fixture, tmp_path_factory) -> Path:
    """The official OFT fixture's checkpoint exported to the OFT graphs + manifest (fp32, default layout)."""
    from openvla_ros.export import export_onnx

    return export_onnx(official_oft_fixture / "ckpt", tmp_path_factory.mktemp("official_oft") / "onnx", progress=None)


@pytest.fixture(scope="session")
def official_oft_onnx_policy(official_oft_onnx_export):
    """`official_oft_onnx_export` loaded on ONNX Runtime in the test process: what the chunks a
    policy node publishes are compared with."""
    from openvla_ros.policy import load_policy

    policy = load_policy("onnxruntime", official_oft_onnx_export)
    yield policy
    policy.close()


@pytest.fixture(scope="session")
def small_onnx_export(small_checkpoint, tmp_path_factory) -> Path:
    """`small_checkpoint` exported to the ONNX graphs + manifest (fp32, default layout)."""
    from openvla_ros.export import export_onnx

    return export_onnx(small_checkpoint, tmp_path_factory.mktemp("small_onnx") / "export", progress=None)


@pytest.fixture(scope="session")
def demo_model() -> Path:
    """The demo model, built once (see ensure_demo_model)."""
    return ensure_demo_model()


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
