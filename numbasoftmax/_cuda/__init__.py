"""GPU path: numba.cuda kernels behind the public functions (see ``api.dispatch``).

Nothing here is imported by ``import numbasoftmax``; the first GPU call imports numba.cuda
and compiles the kernels it needs (cached per specialization for the process).
"""
