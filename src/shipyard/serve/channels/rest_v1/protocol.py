"""Wire facts of the TF Serving / KServe V1 REST predict API.

Row format:      {"instances": [row, ...]}      -> {"predictions": [row, ...]}
Columnar format: {"inputs": value | {name: value}} -> {"outputs": value | {name: value}}
A row is a value when the model has one input, else {input_name: value}; answers mirror that for
outputs. BYTES values may be strings or {"b64": "..."}. Errors are {"error": "..."}.
"""

from __future__ import annotations

INSTANCES = "instances"
INPUTS = "inputs"
PREDICTIONS = "predictions"
OUTPUTS = "outputs"
B64 = "b64"

# KServe V1's server liveness: GET / -> {"status": "alive"}.
LIVENESS = "/"

# TF Serving's model status states (GetModelStatus), by shipyard's load states.
STATE = {"READY": "AVAILABLE", "LOADING": "LOADING", "UNAVAILABLE": "END"}
