"""transforms: Numba kernels over arrays — the expression compiler, physics kernels, event
generators and the checking of scientists' transforms. It knows arrays, not files or HTTP,
and imports neither ``vdata`` nor ``service``."""
