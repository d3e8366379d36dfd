"""OpenVLA vision-language-action policy for ROS 2.

Data flow: message -> image array -> pixel values / token ids -> backend -> action tokens ->
action -> message. The runtime path (policy node, ONNX Runtime and OM backends) never imports
torch; torch is used only for the reference backend, export and training.
"""

__version__ = "0.1.0"
