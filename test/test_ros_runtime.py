"""The ROS 2 runtime works: two rclpy nodes in separate processes exchange an Image over DDS."""
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np

SCRIPTS = Path(__file__).parent / "ros_scripts"


def test_image_crosses_dds_between_processes():
    env = dict(os.environ)
    listener = subprocess.Popen([sys.executable, str(SCRIPTS / "image_listener.py"), "30"],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    talker = subprocess.Popen([sys.executable, str(SCRIPTS / "image_talker.py"), "30"],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    try:
        out, err = listener.communicate(timeout=60)
    finally:
        talker.kill()
        talker.wait()
    assert listener.returncode == 0, f"listener received nothing; stderr:\n{err}"
    got = json.loads(out.strip().splitlines()[-1])
    assert (got["height"], got["width"], got["encoding"], got["step"]) == (4, 5, "rgb8", 15)
    expected = np.arange(4 * 5 * 3, dtype=np.uint8).tolist()
    assert got["data"] == expected
    assert got["frame_id"].startswith("seq")


def test_domain_is_isolated_per_run():
    domain = int(os.environ["ROS_DOMAIN_ID"])
    assert 1 <= domain <= 100
    assert os.environ["ROS_AUTOMATIC_DISCOVERY_RANGE"] == "LOCALHOST"
