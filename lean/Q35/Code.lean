/-
FORMAT.md §2: pairs and the 7-bit code.

    code = ((n1 & 0xF) << 3) | (n2 & 0x7)        0 ≤ code ≤ 127
    bit:   6   5   4   3 | 2   1   0
          [ n1 (4 bits)  ][ n2 (3 bits)]

The spec's bit operations are written here as the arithmetic they are on these fields:
`n & 0xF` of a two's-complement integer is its residue mod 16 (`n % 16`, Lean's `%` on `Int`
is the Euclidean remainder, never negative for a positive modulus), `n & 0x7` is `n % 8`,
`<< 3` is `* 8`, and `|` of two fields in disjoint bits is `+`; on the way back `code >> 3` is
`code / 8` and `code & 7` is `code % 8`. tests/test_lean_kernels.py checks that these are the
same numbers as the spec's bit operations and as the kernels' codes, for all 128 codes.
-/

namespace Q35

/-- `n & 0xF` for a two's-complement integer `n`: its low 4 bits, i.e. `n mod 16`. -/
def low4 (n : Int) : Nat := (n % 16).toNat

/-- `n & 0x7` for a two's-complement integer `n`: its low 3 bits, i.e. `n mod 8`. -/
def low3 (n : Int) : Nat := (n % 8).toNat

/-- FORMAT.md §2: `code = ((n1 & 0xF) << 3) | (n2 & 0x7)`. -/
def encode (n1 n2 : Int) : Nat := low4 n1 * 8 + low3 n2

/-- Sign extension of a 4-bit field: `f - 16` if `f ≥ 8`, else `f`. -/
def signExtend4 (f : Nat) : Int := if 8 ≤ f then (f : Int) - 16 else (f : Int)

/-- Sign extension of a 3-bit field: `f - 8` if `f ≥ 4`, else `f`. -/
def signExtend3 (f : Nat) : Int := if 4 ≤ f then (f : Int) - 8 else (f : Int)

/-- The even weight's signed level `n1` of a code: its field `code >> 3`, sign-extended. -/
def decodeHigh (code : Nat) : Int := signExtend4 (code / 8)

/-- The odd weight's signed level `n2` of a code: its field `code & 7`, sign-extended. -/
def decodeLow (code : Nat) : Int := signExtend3 (code % 8)

/-- FORMAT.md §2: a 7-bit code back to its pair `(n1, n2)`. -/
def decode (code : Nat) : Int × Int := (decodeHigh code, decodeLow code)

/-- Every code fits in 7 bits: `encode n1 n2 < 128` for all integers n1, n2. -/
theorem encode_lt_128 (n1 n2 : Int) : encode n1 n2 < 128 := by
  unfold encode low4 low3
  omega

/-- Decoding any code below 128 gives n1 ∈ [-8, 7] and n2 ∈ [-4, 3]. -/
theorem decode_ranges (c : Nat) (hc : c < 128) :
    (-8 ≤ (decode c).1 ∧ (decode c).1 ≤ 7) ∧ (-4 ≤ (decode c).2 ∧ (decode c).2 ≤ 3) := by
  have a1 : -8 ≤ decodeHigh c := by
    unfold decodeHigh signExtend4
    split <;> omega
  have a2 : decodeHigh c ≤ 7 := by
    unfold decodeHigh signExtend4
    split <;> omega
  have b1 : -4 ≤ decodeLow c := by
    unfold decodeLow signExtend3
    split <;> omega
  have b2 : decodeLow c ≤ 3 := by
    unfold decodeLow signExtend3
    split <;> omega
  exact ⟨⟨a1, a2⟩, ⟨b1, b2⟩⟩

/-- Decoding an encoded pair returns it, for every n1 ∈ [-8, 7] and n2 ∈ [-4, 3]. -/
theorem decode_encode (n1 n2 : Int) (h1 : -8 ≤ n1 ∧ n1 ≤ 7) (h2 : -4 ≤ n2 ∧ n2 ≤ 3) :
    decode (encode n1 n2) = (n1, n2) := by
  have e1 : decodeHigh (encode n1 n2) = n1 := by
    unfold decodeHigh signExtend4 encode low4 low3
    split <;> omega
  have e2 : decodeLow (encode n1 n2) = n2 := by
    unfold decodeLow signExtend3 encode low4 low3
    split <;> omega
  unfold decode
  rw [e1, e2]

/-- Encoding a decoded code returns it, for every code below 128: no code is wasted. -/
theorem encode_decode (c : Nat) (hc : c < 128) : encode (decode c).1 (decode c).2 = c := by
  show encode (decodeHigh c) (decodeLow c) = c
  unfold encode low4 low3 decodeHigh decodeLow signExtend4 signExtend3
  split <;> split <;> omega

/-- The unsigned grid levels are n1 + 8 = (f1 + 8) mod 16 and n2 + 4 = (f2 + 4) mod 8 (f XOR its top bit). -/
theorem levels_of_code (c : Nat) (hc : c < 128) :
    (decode c).1 + 8 = (((c / 8 + 8) % 16 : Nat) : Int) ∧
      (decode c).2 + 4 = (((c % 8 + 4) % 8 : Nat) : Int) := by
  have h1 : decodeHigh c + 8 = (((c / 8 + 8) % 16 : Nat) : Int) := by
    unfold decodeHigh signExtend4
    split <;> omega
  have h2 : decodeLow c + 4 = (((c % 8 + 4) % 8 : Nat) : Int) := by
    unfold decodeLow signExtend3
    split <;> omega
  exact ⟨h1, h2⟩

end Q35
