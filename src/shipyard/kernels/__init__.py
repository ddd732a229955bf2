"""shipyard's own CPU kernels (C, built on the machine that runs them): see `native`."""
