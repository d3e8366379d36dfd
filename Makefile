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

.PHONY: setup apt test test-loaded demo bench clean-models help

help:
	@echo "make demo   - set up, build the demo model once, run bridge + policy node in LIBERO sim"
	@echo "make test   - set up and run every test"
	@echo "make test-loaded - every test while a busy loop occupies every core (scripts/cpu_hog.py)"
	@echo "make setup  - create $(VENV) with ROS 2 wheels, ML deps and the simulator"
	@echo "make bench  - backend benchmark (JSON) on a generated small checkpoint"

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

# The suite on a loaded machine: timing-sensitive tests must reason about steps, stamps and states.
test-loaded: setup
	$(PY) scripts/cpu_hog.py -- $(PY) -m pytest test $(PYTEST_ARGS)

demo: setup
	$(PY) -m openvla_ros.cli make-demo --out models/demo --skip-if-exists
	$(PY) -m openvla_ros.cli run-demo --model-dir models/demo --out models/demo/run

bench: setup
	$(PY) -m openvla_ros.cli make-tiny --size small --out models/small --skip-if-exists
	$(PY) -m openvla_ros.cli bench --checkpoint models/small --out models/small/bench.json

clean-models:
	rm -rf models/*/
