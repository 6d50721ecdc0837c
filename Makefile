# Two entry points: `make demo` and `make test`. Each installs what it needs into .venv.
# Also: `make test-fast` (the unit tier, under 2 minutes) and `make lint` (ruff and mypy; `make test` runs it first).
VENV ?= .venv
PY := $(VENV)/bin/python
TORCH := torch==2.13.0

.PHONY: install demo test test-fast lint plan bench clean gpu-wheels gpu-check

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip setuptools wheel
	# the CPU build of torch lies on this machine's disk; pinning it first keeps pip off CUDA builds
	$(PY) -m pip install --quiet $(TORCH)
	# deepspeed's setup.py imports torch: build it against the torch above, not an isolated copy
	$(PY) -m pip install --quiet --no-build-isolation "deepspeed>=0.17,<0.20"
	$(PY) -m pip install --quiet --no-build-isolation -e '.[test]'
	# DeepSpeed JIT-compiles its CPU ops (shm comm, CPU Adam) on first use: done once here on a machine without CUDA
	$(PY) -m launcher.backends.prebuild --cpu-machine
	touch $@

demo: install
	$(VENV)/bin/launch recipes/demo_tiny.yaml output.overwrite=true
	# training prompts answered before and after tuning, beside the answers the data taught
	$(PY) -m launcher.infer.demo recipes/demo_tiny.yaml

test: install lint
	# sshd, SLURM and munge for the services tier: installed here (as root, when missing), never in a fixture
	.ci/services.sh
	# two workers, a file to each at a time (its module fixtures run once): docs/architecture.md
	$(PY) -m pytest -q -n 2 --dist loadfile --durations=25 tests

# the unit tier: no training ranks, no DeepSpeed, no services (pyproject.toml's markers, one per test)
test-fast: install
	$(PY) -m pytest -q -m unit tests

# ruff's lint rules and its formatter, then mypy over launcher/, all configured in pyproject.toml
# (`ruff format .` fixes the second)
lint: install
	$(PY) -m pip install --quiet "ruff>=0.17,<0.18" "mypy>=2.4,<3"
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy

bench: install
	$(PY) bench/overhead.py
	$(PY) bench/startup.py
	$(PY) bench/methods.py
	$(PY) bench/data.py

clean:
	rm -rf $(VENV) outputs

# the GPU check's wheels (bench/wheels/, gitignored), prepared here with internet; the GPU machine is offline
gpu-wheels: install
	$(PY) bench/gpu_check.py --prepare --dry-run

# on one H100/H200 (docs/benchmarks.md, "GPU check"): install the wheels, pytest -m gpu, throughput
gpu-check:
	python3 bench/gpu_check.py
