"""Training callbacks shipped as ``lit_unitscale.callbacks``."""
