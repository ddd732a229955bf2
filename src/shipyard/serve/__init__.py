"""The protocol-neutral serving core: model manager, dynamic batcher, data plane; channels on top."""
