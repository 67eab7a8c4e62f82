# Thin wrapper over CMake so a newcomer types `make demo` / `make test`.
BUILD ?= build
SAN_BUILD ?= build-asan
JOBS ?= $(shell nproc)

.PHONY: all build test test-asan demo fuzz venv clean

all: build

build:
	@cmake -S . -B $(BUILD) -DCMAKE_BUILD_TYPE=Release >/dev/null
	@cmake --build $(BUILD) -j $(JOBS)

test: build
	cd $(BUILD) && ctest --output-on-failure -j $(JOBS)

# The test oracles (transformers, PEFT, tokenizers, torch, ...) pinned in requirements.txt,
# in a virtualenv that CMake picks up for the Python tests. Re-run after requirements.txt changes.
PYTHON ?= python3
venv: .venv/.installed
.venv/.installed: requirements.txt
	$(PYTHON) -m venv .venv
	.venv/bin/pip install -q --disable-pip-version-check --no-deps -r requirements.txt
	touch $@

# The whole suite again under AddressSanitizer + UndefinedBehaviorSanitizer.
test-asan:
	@cmake -S . -B $(SAN_BUILD) -DCMAKE_BUILD_TYPE=Debug -DPEFT_SANITIZE=ON >/dev/null
	@cmake --build $(SAN_BUILD) -j $(JOBS)
	cd $(SAN_BUILD) && ASAN_OPTIONS=detect_leaks=1 ctest --output-on-failure -j $(JOBS)

demo: build
	bash tools/demo.sh $(BUILD)/peft

# Every libFuzzer target for FUZZ_SECONDS each (fuzz/README.md).
FUZZ_SECONDS ?= 60
fuzz:
	bash fuzz/run.sh $(FUZZ_SECONDS)

clean:
	rm -rf $(BUILD) $(SAN_BUILD)
