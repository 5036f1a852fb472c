/-
The input rotation of FORMAT.md §9, in exact integer arithmetic: per group of n = 2^k inputs,
R = D H / sqrt(n), H Sylvester's Hadamard matrix applied as k passes of butterflies
(a, b) -> (a + b, a - b) over pairs of entries, D the columns' signs (each +1 or -1).

What makes R orthogonal, R R^T = D H H D / n = I, is H H = n I and D D = I. Proven here: a
butterfly pass applied twice doubles every entry of its pairs (so a pass is its own inverse up
to a factor 2, and k passes twice give 2^k = n times the input once the passes, which act on
disjoint pairings, are rearranged), and a sign squares to one. The rearrangement of passes is
not proven here; tests/kernels/test_rotation.py checks the whole statement (R R^T = I) against
the explicit matrices and the Fortran transform on every group size.
-/

namespace Q35

/-- One butterfly of the fast Walsh-Hadamard transform: the pair (a, b) becomes (a + b, a - b). -/
def butterfly (p : Int × Int) : Int × Int := (p.1 + p.2, p.1 - p.2)

/-- One pass of the transform over a list of disjoint pairs. -/
def butterflyPass (ps : List (Int × Int)) : List (Int × Int) := ps.map butterfly

/-- A butterfly applied twice doubles both entries of its pair. -/
theorem butterfly_twice (a b : Int) : butterfly (butterfly (a, b)) = (2 * a, 2 * b) := by
  show ((a + b) + (a - b), (a + b) - (a - b)) = (2 * a, 2 * b)
  rw [show (a + b) + (a - b) = 2 * a by omega, show (a + b) - (a - b) = 2 * b by omega]

/-- A butterfly pass applied twice doubles every entry: each pass is its own inverse up to 2. -/
theorem butterflyPass_twice (ps : List (Int × Int)) :
    butterflyPass (butterflyPass ps) = ps.map (fun p => (2 * p.1, 2 * p.2)) := by
  induction ps with
  | nil => rfl
  | cons p ps ih =>
    cases p with
    | mk a b =>
      simp only [butterflyPass, List.map_cons] at ih ⊢
      rw [ih, butterfly_twice]

/-- A column sign squares to one, so D D = I. -/
theorem sign_mul_self (s : Int) (h : s = 1 ∨ s = -1) : s * s = 1 := by
  rcases h with h | h <;> subst h <;> decide

end Q35
