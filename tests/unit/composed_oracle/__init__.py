"""Today's composition of unit scaling, kept as the oracle for the fused kernels.

A frozen copy of the package's functional ops, modules and models as they stood before every
constant scale moved into the kernel that runs anyway (each scale here is its own
``scale_fwd``/``scale_bwd`` pass). Tests build a model from these classes, load the package
model's weights and compare outputs and gradients; nothing in the package imports this.
"""
