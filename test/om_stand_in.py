"""Convert an export with the real `scripts/convert_onnx_to_om.sh` and a stand-in `atc` that writes
the pyACL double's stand-in `.om` files (see pyacl_double.py). The stand-in resolves `--model`
against its working directory, so a conversion that does not run atc from the graph's folder
produces OM files naming graphs that do not exist, and loading them fails. It records the shape
gears (`--input_shape`, `--dynamic_dims`, `--input_format`) and, like ATC, refuses inconsistent
ones (the conversion then fails)."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

TEST_DIR = Path(__file__).resolve().parent
SCRIPT = TEST_DIR.parent / "scripts" / "convert_onnx_to_om.sh"
STAND_IN_ATC = f"""#!{sys.executable}
import sys
sys.path.insert(0, {str(TEST_DIR)!r})
from pyacl_double import write_om_stand_in
args = dict(a.split("=", 1) for a in sys.argv[1:] if a.startswith("--") and "=" in a)
write_om_stand_in(args["--model"], args["--output"] + ".om", args.get("--input_shape"),
                  args.get("--dynamic_dims"), args.get("--input_format"))
"""


def stand_in_atc_env(bin_dir: Path) -> dict[str, str]:
    """os.environ with a directory holding only the stand-in `atc` first on PATH."""
    bin_dir.mkdir(parents=True, exist_ok=True)
    (bin_dir / "atc").write_text(STAND_IN_ATC)
    (bin_dir / "atc").chmod(0o755)
    return {**os.environ, "PATH": f"{bin_dir}:/usr/bin:/bin"}


def convert_with_stand_in_atc(onnx_dir: Path, out_dir: Path, *args: str) -> Path:
    """`convert_onnx_to_om.sh --onnx onnx_dir --out out_dir *args` with the stand-in atc on PATH."""
    env = stand_in_atc_env(out_dir.parent / f"{out_dir.name}_atc_bin")
    proc = subprocess.run(["/bin/bash", str(SCRIPT), "--onnx", str(onnx_dir), "--out", str(out_dir), *args],
                          env=env, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"convert_onnx_to_om.sh failed ({proc.returncode}): {proc.stderr}")
    return out_dir


def acl_shim_dir(directory: Path) -> Path:
    """A directory holding an `acl.py` that installs a fresh pyACL double as the `acl` module, for
    child processes (bench workers, the policy node): put it first on their PYTHONPATH."""
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "acl.py").write_text(
        "import sys\n"
        f"sys.path.insert(0, {str(TEST_DIR)!r})\n"
        "import pyacl_double\n"
        "sys.modules[__name__] = pyacl_double.PyAclDouble()  # `import acl` yields the double\n")
    return directory


def shim_env(directory: Path) -> dict[str, str]:
    """os.environ with `acl_shim_dir(directory)` first on PYTHONPATH."""
    path = [str(acl_shim_dir(directory))] + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]
    return {**os.environ, "PYTHONPATH": os.pathsep.join(path)}
