"""The compute kernels: Fortran 2008 (fortran/, wrapped by f2py as q35f._kernels) behind validated
wrappers (fortran.py), the pure-numpy oracle they are tested against (reference.py), and the
quantized tensor a linear layer owns (tensor.py). Imports q35f.format only."""
