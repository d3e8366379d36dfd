"""A Fast DDS profile for camera frames larger than the default shared-memory segment.

Fast DDS's default shared-memory segment is 512 KiB; a bigger sample (a 640x480 rgb8 frame is
900 KiB) falls back to fragmented UDP, where a best-effort reader (sensor-data QoS) loses the whole
sample as soon as one fragment is dropped, and on loopback that is nearly every frame. This profile
keeps SHM + UDPv4 (the defaults) but with a segment large enough for such frames. It applies to a
process through FASTDDS_DEFAULT_PROFILES_FILE, read once when its first participant is created,
so it must be set for the frame publisher (and the node) before rclpy starts.
"""
from __future__ import annotations

import os
from pathlib import Path

PROFILE_ENV = "FASTDDS_DEFAULT_PROFILES_FILE"

_TEMPLATE = """<?xml version="1.0" encoding="UTF-8" ?>
<profiles xmlns="http://www.eprosima.com">
  <transport_descriptors>
    <transport_descriptor>
      <transport_id>shm_large_frames</transport_id>
      <type>SHM</type>
      <segment_size>{segment}</segment_size>
      <maxMessageSize>{message}</maxMessageSize>
    </transport_descriptor>
    <transport_descriptor>
      <transport_id>udp</transport_id>
      <type>UDPv4</type>
    </transport_descriptor>
  </transport_descriptors>
  <participant profile_name="large_frames" is_default_profile="true">
    <rtps>
      <userTransports>
        <transport_id>shm_large_frames</transport_id>
        <transport_id>udp</transport_id>
      </userTransports>
      <useBuiltinTransports>false</useBuiltinTransports>
    </rtps>
  </participant>
</profiles>
"""


def write_large_frames_profile(path: Path, max_message_bytes: int = 4 << 20) -> Path:
    """Write the profile; the segment holds four messages so a writer never waits for a free one."""
    if max_message_bytes <= 0:
        raise ValueError(f"max_message_bytes is {max_message_bytes}; expected > 0")
    path = Path(path)
    path.write_text(_TEMPLATE.format(segment=4 * max_message_bytes, message=max_message_bytes))
    return path


def large_frames_env(directory: Path) -> dict[str, str]:
    """Environment for a process that sends or receives large frames (an existing profile is kept)."""
    if os.environ.get(PROFILE_ENV):
        return {PROFILE_ENV: os.environ[PROFILE_ENV]}
    return {PROFILE_ENV: str(write_large_frames_profile(Path(directory) / "fastdds_large_frames.xml"))}
