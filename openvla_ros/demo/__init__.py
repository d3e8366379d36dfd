"""The demo model: a tiny OpenVLA-architecture checkpoint fine-tuned on LIBERO frames to follow
"move the gripper up/down/left/right/forward/backward" and "open/close the gripper"."""
