"""Layer 1, the network and its numerics, with no MPI and no files: the losses (`losses`), the random
streams and mask kinds (`masks`), W and a and the plain forward pass (`model`), the numba kernels of
a local step and of the evaluation (`kernels`; numba lives only there), the paper's instruments
(`theory`)."""
