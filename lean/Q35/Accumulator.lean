/-
Accumulator safety of an integer GEMV: with int8 activations x ∈ [-128, 127] and 4-bit levels
l ∈ [0, 15] (l = n1 + 8, FORMAT.md §2), a 32-bit signed accumulator of Σ x·l over K terms
cannot overflow for K ≤ 1118481, and that bound is tight.

Each product lies in [-1920, 1905] (−128·15 and 127·15), so the sum lies in
[-1920·K, 1905·K]. The int32 range is [-2^31, 2^31 − 1] = [-2147483648, 2147483647]:
  1920 · 1118481 = 2147483520 ≤ 2^31        (and 1905 · 1118481 = 2130706305 < 2^31 − 1)
  1920 · 1118482 = 2147485440 > 2^31.
So K = 1118481 is the largest K for which every input is safe; the 3-bit levels of the odd
weights (0 … 7) have smaller products and change nothing. No shipped kernel accumulates int8
activations (the GEMV accumulates float32); this bounds a future integer kernel.
-/

namespace Q35

/-- Σ x·l over (activation, level) pairs, exactly. -/
def accum : List (Int × Int) → Int
  | [] => 0
  | (x, l) :: ps => x * l + accum ps

/-- An int8 activation and a 4-bit level. -/
def Int8Level4 (p : Int × Int) : Prop := -128 ≤ p.1 ∧ p.1 ≤ 127 ∧ 0 ≤ p.2 ∧ p.2 ≤ 15

/-- One product of an int8 activation and a 4-bit level lies in [-1920, 1905]. -/
theorem term_bound (x l : Int) (hx : -128 ≤ x ∧ x ≤ 127) (hl : 0 ≤ l ∧ l ≤ 15) :
    -1920 ≤ x * l ∧ x * l ≤ 1905 := by
  first
    | (have h : l = 0 ∨ l = 1 ∨ l = 2 ∨ l = 3 ∨ l = 4 ∨ l = 5 ∨ l = 6 ∨ l = 7 ∨
           l = 8 ∨ l = 9 ∨ l = 10 ∨ l = 11 ∨ l = 12 ∨ l = 13 ∨ l = 14 ∨ l = 15 := by
         omega
       rcases h with rfl | rfl | rfl | rfl | rfl | rfl | rfl | rfl |
         rfl | rfl | rfl | rfl | rfl | rfl | rfl | rfl <;> omega)
    | (have a := Int.mul_nonneg (show 0 ≤ x + 128 by omega) hl.1
       have b := Int.mul_nonneg (show 0 ≤ 127 - x by omega) hl.1
       have c := Int.add_mul x 128 l
       have d := Int.sub_mul 127 x l
       omega)

/-- A sum of K such products lies in [-1920·K, 1905·K]. -/
theorem accum_bound : ∀ ps : List (Int × Int), (∀ p ∈ ps, Int8Level4 p) →
    -1920 * (ps.length : Int) ≤ accum ps ∧ accum ps ≤ 1905 * (ps.length : Int) := by
  intro ps
  induction ps with
  | nil =>
    intro _
    first
      | decide
      | (simp only [accum, List.length_nil] <;> omega)
      | simp [accum]
  | cons p ps ih =>
    intro h
    obtain ⟨x, l⟩ := p
    have hp : -128 ≤ x ∧ x ≤ 127 ∧ 0 ≤ l ∧ l ≤ 15 := h (x, l) (by simp)
    have hps : ∀ q ∈ ps, Int8Level4 q := fun q hq => h q (by simp [hq])
    have hr := ih hps
    have ht := term_bound x l ⟨hp.1, hp.2.1⟩ ⟨hp.2.2.1, hp.2.2.2⟩
    first
      | (simp only [accum, List.length_cons] <;> omega)
      | (simp only [accum, List.length_cons, Int.natCast_add] <;> omega)
      | (simp [accum] <;> omega)

/-- With int8 activations and 4-bit levels, an int32 accumulator cannot overflow for K ≤ 1118481 terms. -/
theorem accumulator_fits_int32 (ps : List (Int × Int)) (h : ∀ p ∈ ps, Int8Level4 p)
    (hK : ps.length ≤ 1118481) : -2147483648 ≤ accum ps ∧ accum ps ≤ 2147483647 := by
  have hb := accum_bound ps h
  omega

/-- K copies of the most negative product (−128 · 15) sum to −1920·K. -/
theorem accum_replicate_extreme : ∀ n : Nat,
    accum (List.replicate n ((-128 : Int), (15 : Int))) = -1920 * (n : Int) := by
  intro n
  induction n with
  | zero =>
    first
      | decide
      | rfl
      | simp [accum]
  | succ n ih =>
    first
      | (simp only [List.replicate_succ, accum, ih] <;> omega)
      | (simp [List.replicate_succ, accum, ih] <;> omega)

/-- The bound is tight: 1118482 int8·level products (−128 · 15 each) sum below −2^31. -/
theorem accumulator_bound_tight :
    Int8Level4 ((-128 : Int), (15 : Int)) ∧
      accum (List.replicate 1118482 ((-128 : Int), (15 : Int))) < -2147483648 := by
  constructor
  · unfold Int8Level4
    first
      | decide
      | (simp only [] <;> omega)
  · rw [accum_replicate_extreme]
    first
      | omega
      | decide

end Q35
