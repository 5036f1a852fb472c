/-
The fused group dot product of the GEMV kernel (fortran/q35_matmul.f90):

    Σ_k x_k · w_k  =  s · Σ_even x·(n1 + 8)  +  (15s/7) · Σ_odd x·(n2 + 4)  +  offset · Σ_k x_k

where w are the dequantized weights of FORMAT.md §4 (even: offset + s·(n1 + 8), odd:
offset + (15s/7)·(n2 + 4)), n1, n2 the signed codes and 8, 4 the biases that make them levels.
The kernel sums level·x per grid in the inner loop and applies the group's parameters once.

Exact arithmetic, denominators cleared: both sides are multiplied by 7, so the odd step 15s/7
becomes 15s. Activations, offset and scale are integers in a common unit (rationals over a
common denominator), which loses nothing since both sides are linear in each of them.
-/

namespace Q35

/-- One pair of a group: the activations of its even and odd weight and the pair's signed codes. -/
structure Pair where
  xe : Int
  xo : Int
  n1 : Int
  n2 : Int

/-- 7 × Σ x·w over a group, w the dequantized weights: even `o + s·(n1 + 8)`, odd `o + (15s/7)·(n2 + 4)`. -/
def dot7 (o s : Int) : List Pair → Int
  | [] => 0
  | p :: ps =>
    p.xe * (7 * o + 7 * s * (p.n1 + 8)) + p.xo * (7 * o + 15 * s * (p.n2 + 4)) + dot7 o s ps

/-- Σ x over a group (both weights of every pair). -/
def sumX : List Pair → Int
  | [] => 0
  | p :: ps => p.xe + p.xo + sumX ps

/-- Σ x·(n1 + 8) over the even weights of a group: the kernel's `acc_even`. -/
def sumEven : List Pair → Int
  | [] => 0
  | p :: ps => p.xe * (p.n1 + 8) + sumEven ps

/-- Σ x·(n2 + 4) over the odd weights of a group: the kernel's `acc_odd`. -/
def sumOdd : List Pair → Int
  | [] => 0
  | p :: ps => p.xo * (p.n2 + 4) + sumOdd ps

/-- 7 × the fused form `s·acc_even + (15s/7)·acc_odd + o·Σx`. -/
def fused7 (o s : Int) (ps : List Pair) : Int :=
  7 * s * sumEven ps + 15 * s * sumOdd ps + 7 * o * sumX ps

/-- The fused integer form of a group dot product equals the dot product with the dequantized weights, exactly. -/
theorem fused_eq_dot (o s : Int) : ∀ ps : List Pair, fused7 o s ps = dot7 o s ps := by
  intro ps
  induction ps with
  | nil =>
    simp only [fused7, sumEven, sumOdd, sumX, dot7] <;> omega
  | cons p ps ih =>
    simp only [fused7] at ih
    simp only [fused7, sumEven, sumOdd, sumX, dot7]
    have f1 := Int.mul_add (7 * s) (p.xe * (p.n1 + 8)) (sumEven ps)
    have f2 := Int.mul_add (15 * s) (p.xo * (p.n2 + 4)) (sumOdd ps)
    have f3 := Int.mul_add (7 * o) (p.xe + p.xo) (sumX ps)
    have f4 := Int.mul_add (7 * o) p.xe p.xo
    have f5 := Int.mul_add p.xe (7 * o) (7 * s * (p.n1 + 8))
    have f6 := Int.mul_add p.xo (7 * o) (15 * s * (p.n2 + 4))
    have f7 := Int.mul_comm p.xe (7 * o)
    have f8 := Int.mul_comm p.xo (7 * o)
    have f9 := Int.mul_left_comm p.xe (7 * s) (p.n1 + 8)
    have f10 := Int.mul_left_comm p.xo (15 * s) (p.n2 + 4)
    first
      | omega
      | (simp only [Int.mul_add, Int.add_mul, Int.mul_assoc, Int.mul_comm, Int.mul_left_comm]
           at ih ⊢
         omega)

end Q35
