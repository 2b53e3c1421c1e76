# The two commands a newcomer needs: `make demo` and `make test`. Both run `make setup` first,
# which is idempotent: a second run checks hashes and returns in about a second.

PYTHON ?= python3
TORCH := 2.4.0
TORCHVISION := 0.19.0

.PHONY: setup demo test

# libtorch comes from PyPI's torch wheel (rust-bert 0.23 -> tch 0.17 -> libtorch 2.4.0 exactly);
# torchvision is the reference the vision parity tests compare against. Then the offline kit.
setup:
	@$(PYTHON) -c "import sys, torch, torchvision; sys.exit(torch.__version__.split('+')[0] != '$(TORCH)')" 2>/dev/null \
		|| $(PYTHON) -m pip install --quiet --disable-pip-version-check torch==$(TORCH) torchvision==$(TORCHVISION)
	@$(PYTHON) models/setup.py install

demo: setup
	cargo run --quiet -- demo

test: setup
	cargo test
