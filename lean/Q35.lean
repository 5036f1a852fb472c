/-
Formal model of the Q35 format (docs/FORMAT.md) and of its quantizer and fused kernel.
Core Lean 4 only. Every theorem here is cross-checked against the shipped Fortran kernels by a
Python test that names it (tests/test_lean_traceability.py enforces that).
-/
import Q35.Code
import Q35.Block
import Q35.Grid
import Q35.Fused
import Q35.Accumulator
import Q35.Rotation
import Q35.GroupParams
