# Set-up and entry points. Everything installs into a local virtualenv (.venv).
#   make demo   install, prepare ARM emulation, then run the main job
#               (classification recipe on digits: prune, QAT, distill, int8, bench, bundles)
#   make test   install (Python and system packages), then run the test suite
#               (tests/unit, tests/integration and the doctests of tfedge/)
#   make test-unit  only the tests that train nothing, and the doctests
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.tfedge-installed
# The suite runs in one pytest-xdist worker per core (at most 4: each worker holds
# TensorFlow, about 3 GB at its peak), a test file per worker so that module
# fixtures are built once. TensorFlow's own threads leave much of each test
# single-threaded (tracing, conversion, emulation), so 2 workers on 2 cores halve
# the wall time. PARALLEL= runs it serially.
PARALLEL ?= -n auto --maxprocesses 4 --dist loadfile
# System packages: qemu-user runs LiteRT's aarch64 build for the ARM benchmark
# harness; a C/C++ compiler builds its qemu plugin and checks micro bundles;
# chromium renders the HTML report in its headless test.
APT_PACKAGES := qemu-user gcc g++ make chromium

.PHONY: install system-deps arm-emulation demo test test-unit test-fast clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev,recipes]'
	touch $(STAMP)

install: $(STAMP)

system-deps:
	@if command -v qemu-aarch64 >/dev/null && command -v gcc >/dev/null && command -v g++ >/dev/null \
			&& command -v chromium >/dev/null; then \
		echo "system packages present"; \
	elif [ "$$(id -u)" = 0 ]; then \
		DEBIAN_FRONTEND=noninteractive apt-get update -qq && \
		DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $(APT_PACKAGES); \
	else \
		echo "Missing system packages; run: sudo apt-get install -y $(APT_PACKAGES)" >&2; exit 1; \
	fi

# LiteRT's aarch64 build, an arm64 sysroot and the qemu plugin, cached under
# ~/.cache/tfedge/arm (about 15-40 s the first time, then instant).
arm-emulation: install system-deps
	@if [ "$$(id -u)" = 0 ]; then \
		$(BIN)/python -m tfedge.arm > /dev/null && echo "ARM emulation ready"; \
	else \
		echo "Not root: ARM emulation uses an existing cache; to prepare it run as root: $(BIN)/python -m tfedge.arm"; \
	fi

# Emulation is prepared as for `make test`; without root or qemu the job says
# which command enables it.
demo: install
	@$(MAKE) --no-print-directory system-deps arm-emulation || \
		echo "ARM emulation not prepared: the main job will say how to enable it."
	$(BIN)/python -m recipes.classifier

test: install system-deps arm-emulation
	$(BIN)/python -m pytest $(PARALLEL)

test-unit: install
	$(BIN)/python -m pytest tests/unit tfedge

test-fast: install
	$(BIN)/python -m pytest $(PARALLEL) -m "not slow"

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache
