# Two commands for a new user: `make demo` (set up + run the demo in LIBERO sim) and `make test`.
# `make setup` is idempotent: it reinstalls only when a requirements file changed.
PYTHON_BOOT ?= python3.11
VENV        ?= .venv
PY          := $(VENV)/bin/python
PIP         := $(PY) -m pip --disable-pip-version-check
STAMP       := $(VENV)/.openvla_ros-installed
APT_PKGS    := libegl1 libgl1-mesa-dri libegl-mesa0
REQS        := requirements.txt requirements-ros.txt requirements-nodeps.txt setup.py
PYTEST_ARGS ?=
# ROS 2 launch tooling (launch, launch_testing, ros2cli, colcon) for the venv, when this folder is
# beside the clone (development machines, CI); see ../shared/ros2_launch/README.md.
ROS2_LAUNCH ?= ../shared/ros2_launch
ROS2_STAMP  := $(VENV)/.ros2_launch-installed
# `colcon build --symlink-install` of this package into install/ (ament index, lib/openvla_ros,
# share/openvla_ros), linked to this clone's sources; `source install/setup.sh` to use it.
COLCON_STAMP := build/.openvla_ros-colcon-built
ifneq ($(wildcard $(ROS2_LAUNCH)/install.sh),)
ROS2_TARGETS := $(ROS2_STAMP) $(COLCON_STAMP)
endif
export MUJOCO_GL ?= egl
export PYOPENGL_PLATFORM ?= egl

.PHONY: setup apt test test-loaded demo bench bench-export soak bench-eval-memory tf-check clean-models help

help:
	@echo "make demo   - set up, build the demo model once, run bridge + policy node in LIBERO sim"
	@echo "make test   - set up and run every test"
	@echo "make test-loaded - every test while a busy loop occupies every core (scripts/cpu_hog.py)"
	@echo "make setup  - create $(VENV) with ROS 2 wheels, ML deps and the simulator"
	@echo "make bench  - backend benchmark (JSON) on a generated small checkpoint"
	@echo "              with ../shared/ros2_launch: setup also colcon-builds install/ (ros2 launch/run)"
	@echo "make bench-export - peak RSS of an fp16 export at OpenVLA-7B's widths, 2 LLM layers (JSON, ~3 GB disk)"
	@echo "make tf-check - OpenVLA's LIBERO image path against TensorFlow itself (own venv, ~300 MB once)"
	@echo "make soak   - 30-minute closed-loop soak with the demo model (JSON + PNG)"
	@echo "make bench-eval-memory - 100 LIBERO episodes on 2 workers must stay under 8 GB in total"

setup: apt $(STAMP) $(ROS2_TARGETS)

# The EGL renderer needs Mesa's EGL; install it only when missing (root or sudo).
apt:
	@missing=$$(for p in $(APT_PKGS); do dpkg-query -W -f='$${Status}\n' $$p 2>/dev/null | grep -q "install ok installed" || echo $$p; done); \
	if [ -n "$$missing" ]; then \
	  echo "installing Debian packages: $$missing"; \
	  SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq $$missing; \
	fi

$(STAMP): $(REQS)
	test -x $(PY) || $(PYTHON_BOOT) -m venv $(VENV)
	$(PIP) install -q "torch==2.13.0"
	$(PIP) install -q -r requirements.txt -r requirements-ros.txt
	$(PIP) install -q --no-deps -r requirements-nodeps.txt
	$(PIP) install -q --no-deps --no-build-isolation -e .
	touch $(STAMP)

$(ROS2_STAMP): $(STAMP) $(ROS2_LAUNCH)/install.sh $(wildcard $(ROS2_LAUNCH)/wheels/*.whl)
	$(ROS2_LAUNCH)/install.sh $(VENV) --colcon
	touch $(ROS2_STAMP)

# Rebuilt when a file it installs is added or changed (the sources themselves are linked).
$(COLCON_STAMP): $(ROS2_STAMP) setup.py setup.cfg package.xml resource/openvla_ros \
		$(wildcard launch/*.launch.py config/*.yaml scripts/*.sh)
	$(VENV)/bin/colcon build --symlink-install --base-paths . --packages-select openvla_ros \
		--event-handlers console_direct-
	touch $(COLCON_STAMP)

test: setup
	$(PY) -m pytest test $(PYTEST_ARGS)

# The suite on a loaded machine: timing-sensitive tests must reason about steps, stamps and states.
test-loaded: setup
	$(PY) scripts/cpu_hog.py -- $(PY) -m pytest test $(PYTEST_ARGS)

demo: setup
	$(PY) -m openvla_ros.cli make-demo --out models/demo --skip-if-exists
	$(PY) -m openvla_ros.cli run-demo --model-dir models/demo --out models/demo/run

bench: setup
	$(PY) -m openvla_ros.cli make-tiny --size small --out models/small --skip-if-exists
	$(PY) -m openvla_ros.cli bench --checkpoint models/small --out models/small/bench.json

# Export memory: bytes of peak RSS per parameter must stay <= 2.5 (<= 19 GB for the 7.5 B of OpenVLA-7B).
bench-export: setup
	$(PY) -m openvla_ros.cli make-tiny --size 7b-widths --llm-layers 2 --out models/7b-widths-2l --skip-if-exists
	$(PY) -m openvla_ros.cli bench-export --checkpoint models/7b-widths-2l --dtype fp16 \
		--out models/7b-widths-2l/bench-export.json --max-bytes-per-parameter 2.5

# TensorFlow only serves as the reference for the image path (openvla_ros/tf_image.py); it lives in
# its own venv, made once, so neither the project venv nor CI downloads it.
TF_VENV ?= /tmp/openvla_ros-tf-venv
tf-check: setup
	test -x $(TF_VENV)/bin/python || $(PYTHON_BOOT) -m venv $(TF_VENV)
	$(TF_VENV)/bin/python -c "import tensorflow" 2>/dev/null || \
	  $(TF_VENV)/bin/python -m pip --disable-pip-version-check install -q "tensorflow-cpu==2.21.0" numpy
	OPENVLA_TF_PYTHON=$(TF_VENV)/bin/python $(PY) -m pytest test/test_tf_image.py $(PYTEST_ARGS)

soak: setup
	$(PY) -m openvla_ros.cli make-demo --out models/demo --skip-if-exists
	$(PY) -m openvla_ros.cli soak --minutes 30 --out models/demo/soak

bench-eval-memory: setup
	$(PY) -m openvla_ros.cli make-demo --out models/demo --skip-if-exists
	$(PY) -m openvla_ros.cli eval-libero --suite libero_object --tasks 0,1 --episodes-per-task 50 --workers 2 \
	    --model-dir models/demo/onnx --no-video --no-progress --max-steps 10 --camera-size 128 \
	    --memory-budget-mb 8192 --out models/demo/eval-memory

clean-models:
	rm -rf models/*/
