"""Triton model-repository helpers: signatures, config.pbtxt rendering, repository layout, a local tritonserver (never imports torch)."""
