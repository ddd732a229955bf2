# Everything a fresh machine needs is set up by these targets.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: setup demo test bench-rest clean lock

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

bench-rest: setup
	$(BIN)/python bench/serve_rest.py

# Regenerate the constraints file from the current environment.
lock:
	$(BIN)/pip freeze --exclude-editable | grep -v '^shipyard' > constraints.txt

clean:
	rm -rf $(VENV) build dist src/*.egg-info

bench-generate: setup
	$(BIN)/python bench/generate.py

# Regenerate the gRPC V2 Python modules from our .proto files (committed; run after editing them).
PROTO_DIR := src/shipyard/serve/channels/grpc_v2/protocol
.PHONY: proto
proto:
	$(BIN)/python -m grpc_tools.protoc -Isrc --python_out=src --pyi_out=src --grpc_python_out=src \
		$(PROTO_DIR)/messages.proto $(PROTO_DIR)/service.proto
	rm -f $(PROTO_DIR)/messages_pb2_grpc.py

.PHONY: bench-grpc
bench-grpc: setup
	$(BIN)/python bench/serve_grpc.py
