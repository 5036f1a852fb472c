/-
The compact group parameters of FORMAT.md §10 ("e4m4", version 3), in natural numbers. A scale
code c != 0 stands for (16 + c mod 16) * 2^(c / 16 + E - 19) and an offset code o for
-(o + 64) * T * scale / 128. What makes every decoded scale an exact float16, and the offset's
product exact in float32 before its one rounding, is how few significant bits they carry:
the scale's mantissa 16 + c mod 16 has five (16 ..= 31), and (o + 64) * T * (16 + c mod 16)
stays below 2^24. The exponent range (-5 <= E <= 15 keeps 2^(c / 16 + E - 19) within float16's)
is checked by tests/format/test_group_params.py on every code and exponent.
-/

namespace Q35

/-- A scale code's mantissa 16 + c mod 16 has exactly five significant bits: 16 <= it <= 31. -/
theorem scale_mantissa_bits (c : Nat) : 16 ≤ 16 + c % 16 ∧ 16 + c % 16 ≤ 31 := by
  have h : c % 16 < 16 := Nat.mod_lt c (by decide)
  omega

/-- The offset's product (o + 64) * T * mantissa is below 2^24, so float32 holds it exactly. -/
theorem offset_product_exact (a t m : Nat) (ha : a ≤ 191) (ht : t ≤ 255) (hm : m ≤ 31) :
    a * t * m < 2 ^ 24 := by
  have h := Nat.mul_le_mul (Nat.mul_le_mul ha ht) hm
  exact Nat.lt_of_le_of_lt h (by decide)

/-- Offset code 0 centres the grid: (0 + 64) / 128 of the range below zero is half of it. -/
theorem offset_code_zero_centres : (0 + 64) * 2 = 128 := by decide

end Q35
