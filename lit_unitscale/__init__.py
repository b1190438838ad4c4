"""lit_unitscale: unit-scaled (u-μP) Transformers trained with Lightning from YAML recipes."""

__version__ = "0.1.0"
