"""shipyard: turn a trained model into a fast, compact, versioned service."""

import os

# PyTorch's OpenMP threads busy-wait after every parallel section before they sleep. libgomp's
# default wait (GOMP_SPINCOUNT 300000, ~10 ms here) burns the time slice that the thread it waits
# for needs when the cores are shared (a server's event loop, ONNX Runtime, other processes): on 2
# shared cores a BERT forward at 2 threads took 180-680 ms spinning vs 48-80 ms sleeping. Never
# spinning (OMP_WAIT_POLICY=PASSIVE) costs a futex wake-up per parallel section instead, and a
# decode step runs hundreds of short ones: through the server, PASSIVE gave GPT-2-small int8 60
# tok/s at 1 stream and 219 at 16, a spin of 30000 (~1 ms) 77-88 and 274-318 (bench/generate.py
# model, A/B runs). So threads spin briefly, then sleep. Read once, when torch loads libgomp; a
# value the user set (either variable) is kept.
if "OMP_WAIT_POLICY" not in os.environ and "GOMP_SPINCOUNT" not in os.environ:
    os.environ["GOMP_SPINCOUNT"] = "30000"

__version__ = "0.1.0"
