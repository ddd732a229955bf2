"""Channels: one thin adapter per protocol over the data plane."""
