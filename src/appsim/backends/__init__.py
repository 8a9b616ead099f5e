"""Implementations of the small interfaces: index backends, event stores, text encoders."""
