/-
FORMAT.md §4: the two grids of a group and round-to-nearest with clamping.

Both grids start at the group's `offset` and span `[offset, offset + 15·scale]`:
  even weights: 16 levels, step `s = scale`;
  odd weights:   8 levels, step `15·s/7`.
A level is `clamp(floor((w − offset)/step + 1/2), 0, L − 1)`.

Exact arithmetic over the integers, denominators cleared:
* `x = w − offset` and `s` are integers in a common unit. Any rational `w`, `offset`, `s` can be
  put over a common denominator, and the rounding rule and every statement below are unchanged
  when `x` and `s` are scaled by the same positive factor, so nothing is lost.
* `floor(x/d + 1/2) = floor((2x + d) / (2d))` for `d > 0` (`Int` division is floor division
  for a positive divisor).
* The odd grid is measured in a unit 7 times finer: `x` becomes `7x` and its step `15s/7`
  becomes `15s`.
* A statement `|e| ≤ d/2` is written `-d ≤ 2e ∧ 2e ≤ d`.
The float32/float16 rounding of the kernels is outside this model; the kernel tests allow for it.
-/

namespace Q35

/-- `floor(x/d + 1/2)` over the integers: `(2x + d) / (2d)`. -/
def roundLevel (x d : Int) : Int := (2 * x + d) / (2 * d)

/-- `clamp(t, 0, top)`. -/
def clampLevel (t top : Int) : Int := max 0 (min top t)

/-- Level of an even weight: `x = w − offset`, step `s` (the group's scale), levels 0 … 15. -/
def level4 (x s : Int) : Int := clampLevel (roundLevel x s) 15

/-- Level of an odd weight: step `15s/7`, levels 0 … 7 (in units 7 times finer: `7x`, step `15s`). -/
def level3 (x s : Int) : Int := clampLevel (roundLevel (7 * x) (15 * s)) 7

/-- The rounded level t of x on a grid of step d > 0 is the nearest one: 2d·t ≤ 2x + d < 2d·t + 2d. -/
theorem round_bounds (x d : Int) (hd : 0 < d) :
    2 * (d * roundLevel x d) ≤ 2 * x + d ∧ 2 * x + d < 2 * (d * roundLevel x d) + 2 * d := by
  have h3 := Int.mul_assoc 2 d ((2 * x + d) / (2 * d))
  unfold roundLevel
  first
    | (have h1 := Int.mul_ediv_self_le (x := 2 * x + d) (k := 2 * d) (by omega)
       have h2 := Int.lt_mul_ediv_self_add (x := 2 * x + d) (k := 2 * d) (by omega)
       omega)
    | (have h1 := Int.emod_add_ediv (2 * x + d) (2 * d)
       have h2 := Int.emod_nonneg (2 * x + d) (show 2 * d ≠ 0 by omega)
       have h4 := Int.emod_lt_of_pos (2 * x + d) (show 0 < 2 * d by omega)
       omega)

/-- An even weight in its group's range dequantizes within half a 4-bit step: |x − s·l| ≤ s/2. -/
theorem even_error_half_step (x s : Int) (hs : 0 < s) (h0 : 0 ≤ x) (h1 : x ≤ 15 * s) :
    -s ≤ 2 * (x - s * level4 x s) ∧ 2 * (x - s * level4 x s) ≤ s := by
  have hb := round_bounds x s hs
  have hq0 : 0 ≤ roundLevel x s := by
    unfold roundLevel
    first
      | exact Int.ediv_nonneg (by omega) (by omega)
      | exact Int.le_ediv_of_mul_le (by omega) (by omega)
  have hq1 : roundLevel x s < 16 := by
    unfold roundLevel
    first
      | exact Int.ediv_lt_of_lt_mul (by omega) (by omega)
      | exact (Int.ediv_lt_iff_lt_mul (by omega)).mpr (by omega)
  have hl : level4 x s = roundLevel x s := by
    unfold level4 clampLevel
    first
      | omega
      | (rw [Int.min_def, Int.max_def]
         split <;> split <;> omega)
  rw [hl]
  omega

/-- An odd weight in its group's range dequantizes within half a 3-bit step: |x − (15s/7)·l| ≤ (15s/7)/2. -/
theorem odd_error_half_step (x s : Int) (hs : 0 < s) (h0 : 0 ≤ x) (h1 : x ≤ 15 * s) :
    -(15 * s) ≤ 2 * (7 * x - 15 * s * level3 x s) ∧
      2 * (7 * x - 15 * s * level3 x s) ≤ 15 * s := by
  have hb := round_bounds (7 * x) (15 * s) (by omega)
  have hq0 : 0 ≤ roundLevel (7 * x) (15 * s) := by
    unfold roundLevel
    first
      | exact Int.ediv_nonneg (by omega) (by omega)
      | exact Int.le_ediv_of_mul_le (by omega) (by omega)
  have hq1 : roundLevel (7 * x) (15 * s) < 8 := by
    unfold roundLevel
    first
      | exact Int.ediv_lt_of_lt_mul (by omega) (by omega)
      | exact (Int.ediv_lt_iff_lt_mul (by omega)).mpr (by omega)
  have hl : level3 x s = roundLevel (7 * x) (15 * s) := by
    unfold level3 clampLevel
    first
      | omega
      | (rw [Int.min_def, Int.max_def]
         split <;> split <;> omega)
  rw [hl]
  omega

/-- Out of range, an even weight clamps to the nearest end (level 0 or 15): its error is exactly the distance to the range. -/
theorem even_clamp (x s : Int) (hs : 0 < s) :
    (x < 0 → level4 x s = 0) ∧ (15 * s < x → level4 x s = 15) := by
  constructor
  · intro hx
    have hq : roundLevel x s < 1 := by
      unfold roundLevel
      first
        | exact Int.ediv_lt_of_lt_mul (by omega) (by omega)
        | exact (Int.ediv_lt_iff_lt_mul (by omega)).mpr (by omega)
    unfold level4 clampLevel
    first
      | omega
      | (rw [Int.min_def, Int.max_def]
         split <;> split <;> omega)
  · intro hx
    have hq : 15 ≤ roundLevel x s := by
      unfold roundLevel
      first
        | exact Int.le_ediv_of_mul_le (by omega) (by omega)
        | exact (Int.le_ediv_iff_mul_le (by omega)).mpr (by omega)
    unfold level4 clampLevel
    first
      | omega
      | (rw [Int.min_def, Int.max_def]
         split <;> split <;> omega)

/-- Out of range, an odd weight clamps to the nearest end (level 0 or 7): its error is exactly the distance to the range. -/
theorem odd_clamp (x s : Int) (hs : 0 < s) :
    (x < 0 → level3 x s = 0) ∧ (15 * s < x → level3 x s = 7) := by
  constructor
  · intro hx
    have hq : roundLevel (7 * x) (15 * s) < 1 := by
      unfold roundLevel
      first
        | exact Int.ediv_lt_of_lt_mul (by omega) (by omega)
        | exact (Int.ediv_lt_iff_lt_mul (by omega)).mpr (by omega)
    unfold level3 clampLevel
    first
      | omega
      | (rw [Int.min_def, Int.max_def]
         split <;> split <;> omega)
  · intro hx
    have hq : 7 ≤ roundLevel (7 * x) (15 * s) := by
      unfold roundLevel
      first
        | exact Int.le_ediv_of_mul_le (by omega) (by omega)
        | exact (Int.le_ediv_iff_mul_le (by omega)).mpr (by omega)
    unfold level3 clampLevel
    first
      | omega
      | (rw [Int.min_def, Int.max_def]
         split <;> split <;> omega)

/-- A constant group (step 0) puts every weight at level 0, so it dequantizes to the offset. -/
theorem zero_step_level (x : Int) : level4 x 0 = 0 ∧ level3 x 0 = 0 := by
  have r4 : roundLevel x 0 = 0 := by
    first
      | exact Int.ediv_zero (2 * x + 0)
      | simp [roundLevel]
      | (unfold roundLevel; omega)
  have r3 : roundLevel (7 * x) (15 * 0) = 0 := by
    first
      | exact Int.ediv_zero (2 * (7 * x) + 15 * 0)
      | simp [roundLevel]
      | (unfold roundLevel; omega)
  unfold level4 level3 clampLevel
  rw [r4, r3]
  first
    | omega
    | decide

end Q35
