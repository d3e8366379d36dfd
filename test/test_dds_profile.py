"""`openvla-ros dds-profile` writes the large-frame Fast DDS profile the node benchmarks use."""
import xml.etree.ElementTree as ET

from openvla_ros.cli import main

NS = {"f": "http://www.eprosima.com"}


def test_profile_has_a_shared_memory_segment_for_four_large_frames(tmp_path, capsys):
    path = tmp_path / "large_frames.xml"
    assert main(["dds-profile", "--out", str(path), "--max-message-mib", "2"]) == 0
    assert "FASTDDS_DEFAULT_PROFILES_FILE=" in capsys.readouterr().out
    root = ET.parse(path).getroot()
    shm = next(t for t in root.iterfind(".//f:transport_descriptor", NS)
               if t.findtext("f:type", namespaces=NS) == "SHM")
    assert int(shm.findtext("f:maxMessageSize", namespaces=NS)) == 2 << 20
    assert int(shm.findtext("f:segment_size", namespaces=NS)) == 4 * (2 << 20)
    # 640x480 rgb8 (900 KiB) fits one message; UDP stays available for other hosts
    assert 640 * 480 * 3 < 2 << 20
    assert any(t.findtext("f:type", namespaces=NS) == "UDPv4" for t in root.iterfind(".//f:transport_descriptor", NS))


def test_bad_size_is_a_clear_error(tmp_path, capsys):
    assert main(["dds-profile", "--out", str(tmp_path / "p.xml"), "--max-message-mib", "0"]) == 2
    assert "expected > 0" in capsys.readouterr().err
