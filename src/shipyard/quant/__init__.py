"""Quantized layers and the files that hold them, for every layer above to use.

`weight_only` (int8/int4 Linear layers and their kernels), `lm_folder` (the weight-only causal-LM
folder format) and `cpu` (the CPU features that pick between int8 kernels). The runtimes read
these when they load a model; `shipyard.optimize` writes them. Nothing here imports either.
"""
