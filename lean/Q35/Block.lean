/-
FORMAT.md §3: the bit stream. Code `j` of a block sits at bits 7j … 7j+6 of a little-endian
56-bit integer, stored as 7 bytes. A row of blocks is the same thing at a larger scale: its
bytes, read as one little-endian integer, hold code `j` of the row at bits 7j … 7j+6 (each
block is exactly 56 bits, so blocks never straddle a byte boundary). So one definition, `pack`,
covers a block (8 codes) and a whole row (8·b codes).

As an integer, "code j at bits 7j … 7j+6" means `Σ code_j · 128^j`, written here in Horner
form; reading code j back is `(x >>> 7j) &&& 0x7F`, i.e. dividing by 128 j times and keeping
the remainder mod 128.
-/

namespace Q35

/-- FORMAT.md §3: codes as one little-endian integer, code `j` at bits 7j … 7j+6. -/
def pack : List Nat → Nat
  | [] => 0
  | c :: cs => c + 128 * pack cs

/-- Code `j` of a packed integer: `(x >>> 7j) &&& 0x7F`. -/
def codeAt (x : Nat) : Nat → Nat
  | 0 => x % 128
  | j + 1 => codeAt (x / 128) j

/-- Unpacking position j of packed 7-bit codes returns code j, for every position of a block or row. -/
theorem unpack_pack : ∀ (cs : List Nat), (∀ c ∈ cs, c < 128) →
    ∀ (j : Nat) (hj : j < cs.length), codeAt (pack cs) j = cs[j] := by
  intro cs
  induction cs with
  | nil =>
    intro _ j hj
    exact absurd hj (Nat.not_lt_zero j)
  | cons c cs ih =>
    intro h j hj
    have hc : c < 128 := h c (by simp)
    have hcs : ∀ x ∈ cs, x < 128 := fun x hx => h x (by simp [hx])
    cases j with
    | zero =>
      first
        | (show (c + 128 * pack cs) % 128 = c
           omega)
        | (simp only [pack, codeAt, List.getElem_cons_zero]
           omega)
    | succ j =>
      have hj' : j < cs.length := by
        first
          | exact Nat.lt_of_succ_lt_succ hj
          | (simp only [List.length_cons] at hj
             omega)
      have hdiv : (c + 128 * pack cs) / 128 = pack cs := by omega
      first
        | (show codeAt ((c + 128 * pack cs) / 128) j = cs[j]
           rw [hdiv]
           exact ih hcs j hj')
        | (simp only [pack, codeAt, List.getElem_cons_succ]
           rw [hdiv]
           exact ih hcs j hj')

/-- n packed 7-bit codes fit in 7·n bits: the packed integer is below 128^n, so no bit is wasted or lost. -/
theorem pack_lt : ∀ (cs : List Nat), (∀ c ∈ cs, c < 128) → pack cs < 128 ^ cs.length := by
  intro cs
  induction cs with
  | nil =>
    intro _
    show 0 < 128 ^ 0
    decide
  | cons c cs ih =>
    intro h
    have hc : c < 128 := h c (by simp)
    have hcs : ∀ x ∈ cs, x < 128 := fun x hx => h x (by simp [hx])
    have hp := ih hcs
    show c + 128 * pack cs < 128 ^ (cs.length + 1)
    rw [Nat.pow_succ]
    first
      | omega
      | (generalize 128 ^ cs.length = m at hp ⊢
         omega)

/-- A block of eight 7-bit codes fits in 56 bits, i.e. exactly 7 bytes. -/
theorem block_fits_56_bits (cs : List Nat) (h : ∀ c ∈ cs, c < 128) (hlen : cs.length = 8) :
    pack cs < 2 ^ 56 := by
  have hp := pack_lt cs h
  rw [hlen] at hp
  first
    | (have e : (128 : Nat) ^ 8 = 2 ^ 56 := by decide
       rw [e] at hp
       exact hp)
    | omega
    | exact hp

end Q35
