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
export MUJOCO_GL ?= egl
export PYOPENGL_PLATFORM ?= egl

.PHONY: setup apt test demo bench soak bench-eval-memory clean-models help

help:
	@echo "make demo   - set up, build the demo model once, run bridge + policy node in LIBERO sim"
	@echo "make test   - set up and run every test"
	@echo "make setup  - create $(VENV) with ROS 2 wheels, ML deps and the simulator"
	@echo "make bench  - backend benchmark (JSON) on a generated small checkpoint"
	@echo "make soak   - 30-minute closed-loop soak with the demo model (JSON + PNG)"
	@echo "make bench-eval-memory - 100 LIBERO episodes on 2 workers must stay under 8 GB in total"

setup: apt $(STAMP)

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

test: setup
	$(PY) -m pytest test $(PYTEST_ARGS)

demo: setup
	$(PY) -m openvla_ros.cli make-demo --out models/demo --skip-if-exists
	$(PY) -m openvla_ros.cli run-demo --model-dir models/demo --out models/demo/run

bench: setup
	$(PY) -m openvla_ros.cli make-tiny --size small --out models/small --skip-if-exists
	$(PY) -m openvla_ros.cli bench --checkpoint models/small --out models/small/bench.json

soak: setup
	$(PY) -m openvla_ros.cli make-demo --out models/demo --skip-if-exists
	$(PY) -m openvla_ros.cli soak --minutes 30 --out models/demo/soak

bench-eval-memory: setup
	$(PY) -m openvla_ros.cli make-demo --out models/demo --skip-if-exists
	$(PY) -m openvla_ros.cli eval-libero --suite libero_object --tasks 0,1 --episodes-per-task 50 --workers 2 \
	    --model-dir models/demo/onnx --no-video --memory-budget-mb 8192 --out models/demo/eval-memory

clean-models:
	rm -rf models/*/
