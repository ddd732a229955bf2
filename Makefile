# Everything a fresh machine needs is set up by these targets.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: setup demo test lint bench-rest clean lock

setup: $(STAMP)

# torch is installed first, on its own and pinned, so that nothing resolves a CUDA build.
$(STAMP): pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet torch==2.13.0
	$(BIN)/pip install --quiet -c constraints.txt -e '.[dev]'
	touch $(STAMP)

demo: setup
	$(BIN)/shipyard demo

test: setup
	$(BIN)/python -m pytest -q

lint: setup
	$(BIN)/ruff check src tests bench

bench-rest: setup
	$(BIN)/python bench/serve_rest.py

# Regenerate the constraints file from the current environment.
lock:
	$(BIN)/pip freeze --exclude-editable | grep -v '^shipyard' > constraints.txt

clean:
	rm -rf $(VENV) build dist src/*.egg-info

bench-generate: setup
	$(BIN)/python bench/generate.py

# llama.cpp for bench/generate.py: llama-cpp-python built from source (CPU only, ~15 min) in its own
# virtual environment, and its source package kept for llama.cpp's GGUF converter.
LLAMA_WORK := bench/.work
LLAMA_CPP_PYTHON := llama-cpp-python==0.3.36
.PHONY: bench-llama-setup
bench-llama-setup: setup
	test -x $(LLAMA_WORK)/llama-venv/bin/python || $(PYTHON) -m venv $(LLAMA_WORK)/llama-venv
	CMAKE_ARGS="-DLLAMA_CURL=OFF -DLLAMA_USE_PREBUILT_UI=OFF -DGGML_NATIVE=ON" \
		$(LLAMA_WORK)/llama-venv/bin/pip install '$(LLAMA_CPP_PYTHON)[server]'
	mkdir -p $(LLAMA_WORK)/llama-src
	$(BIN)/pip download --no-deps --no-binary :all: '$(LLAMA_CPP_PYTHON)' -d $(LLAMA_WORK)/llama-src
	cd $(LLAMA_WORK)/llama-src && tar xzf llama_cpp_python-*.tar.gz

# Regenerate the gRPC V2 Python modules from our .proto files (committed; run after editing them).
PROTO_DIR := src/shipyard/protocol
.PHONY: proto
proto:
	$(BIN)/python -m grpc_tools.protoc -Isrc --python_out=src --pyi_out=src --grpc_python_out=src \
		$(PROTO_DIR)/messages.proto $(PROTO_DIR)/service.proto
	rm -f $(PROTO_DIR)/messages_pb2_grpc.py

.PHONY: bench-grpc
bench-grpc: setup
	$(BIN)/python bench/serve_grpc.py
