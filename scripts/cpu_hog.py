"""Keep every core busy while a command runs: `python scripts/cpu_hog.py [--cores N] [-- CMD ...]`.

One busy-looping process per core (`--cores`, default: all), so the command competes for the CPU
the way it does on a loaded robot computer or CI machine. Without a command it hogs until it gets
SIGINT or SIGTERM. The exit status is the command's; the command gets OPENVLA_CPU_HOG=<busy
processes> in its environment, so a test that brings its own hog knows one is running already.
Each hog also ends when this script is gone, however it ends (it spins on its parent's pid), so
none is ever left behind.
"""
from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys

HOG = "import os\nparent = os.getppid()\nwhile os.getppid() == parent:\n    pass\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cores", type=int, default=os.cpu_count() or 1, help="busy processes (default: %(default)s)")
    parser.add_argument("command", nargs=argparse.REMAINDER, help="-- then the command to run under load")
    args = parser.parse_args(argv)
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    if args.cores < 1:
        parser.error("--cores must be >= 1")

    def stop(signum, frame) -> None:
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, stop)
    hogs = [subprocess.Popen([sys.executable, "-c", HOG]) for _ in range(args.cores)]
    print(f"cpu_hog: {args.cores} busy processes", file=sys.stderr, flush=True)
    try:
        if command:
            return subprocess.call(command, env={**os.environ, "OPENVLA_CPU_HOG": str(args.cores)})
        signal.pause()
        return 0
    except KeyboardInterrupt:
        return 130
    finally:
        for hog in hogs:
            hog.kill()
            hog.wait()


if __name__ == "__main__":
    sys.exit(main())
