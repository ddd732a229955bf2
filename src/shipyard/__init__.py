"""shipyard: turn a trained model into a fast, compact, versioned service."""

import os

# PyTorch's OpenMP threads busy-wait after every parallel section (libgomp's default). When the
# cores are shared (a server's event loop, ONNX Runtime, other processes), a waiting thread burns
# the time slice the thread it waits for needs: on 2 shared cores a BERT forward at 2 threads took
# 180-680 ms spinning vs 48-80 ms sleeping. ONNX Runtime sessions here do not spin either
# (RuntimeOptions.spin). Read once when torch loads libgomp; a value the user set is kept.
if "OMP_WAIT_POLICY" not in os.environ and "GOMP_SPINCOUNT" not in os.environ:
    os.environ["OMP_WAIT_POLICY"] = "PASSIVE"

__version__ = "0.1.0"
