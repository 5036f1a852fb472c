! Float16 arithmetic the format needs (FORMAT.md sec. 4), done on float32 values and float16 bits.
! gfortran has no half-precision type, so parameters are rounded in float32 (exactly, by powers
! of two) and decoded from their 16-bit patterns.
module q35_half
    use iso_fortran_env, only: int16, int32, real32
    implicit none
    private
    public :: f16_round_down, f16_round_up, f16_next_up, half_to_real

    integer, parameter :: f16_min_exponent = -14  ! below it float16 numbers are subnormal
    integer, parameter :: f16_mantissa_bits = 10
    integer(int32), parameter :: float32_inf_bits = int(z'7F800000', int32)
    real(real32), parameter :: two_pow_112 = 2.0_real32**112

contains

    ! Spacing of float16 numbers around |x| (x /= 0): 2**(e - 10), e = max(exponent, -14).
    pure elemental function f16_spacing(x) result(spacing)
        real(real32), intent(in) :: x
        real(real32) :: spacing
        spacing = scale(1.0_real32, max(exponent(x) - 1, f16_min_exponent) - f16_mantissa_bits)
    end function f16_spacing

    !> Largest float16 value <= x (x finite, within the float16 range), as a float32.
    pure elemental function f16_round_down(x) result(rounded)
        real(real32), intent(in) :: x
        real(real32) :: rounded, spacing
        if (x == 0.0_real32) then
            rounded = 0.0_real32  ! always +0: min/max of a group may see -0 or +0 first
            return
        end if
        spacing = f16_spacing(x)
        ! x / spacing is exact (power of two) and below 2**11, so floor is exact too.
        rounded = real(floor(x / spacing), real32) * spacing
    end function f16_round_down

    !> Smallest float16 value >= x, as a float32 (+0 for a zero).
    pure elemental function f16_round_up(x) result(rounded)
        real(real32), intent(in) :: x
        real(real32) :: rounded
        rounded = -f16_round_down(-x)
        if (rounded == 0.0_real32) rounded = 0.0_real32
    end function f16_round_up

    !> The float16 number after a non-negative float16 value s.
    pure elemental function f16_next_up(s) result(next)
        real(real32), intent(in) :: s
        real(real32) :: next
        if (s == 0.0_real32) then
            next = scale(1.0_real32, f16_min_exponent - f16_mantissa_bits)
        else
            next = s + f16_spacing(s)
        end if
    end function f16_next_up

    !> Exact float32 value of a float16 bit pattern, Inf and NaN included; branch-free so it
    !> vectorises (the exponent-31 case is a masked OR, not a jump).
    pure elemental function half_to_real(bits) result(value)
        integer(int16), intent(in) :: bits
        real(real32) :: value
        integer(int32) :: word, shifted
        word = int(bits, int32)  ! sign-extended: bit 31 is the float16 sign
        ! Exponent and mantissa shifted into their float32 places read as 2**-112 times the
        ! value (float16 subnormals land on float32 subnormals); one exact multiply rebiases.
        ! Branch-free, so the GEMV converts 16 lanes at once: the old mantissa-times-power
        ! version cost the GEMV a quarter of its time at G = 128 (measured).
        shifted = shiftl(iand(word, 32767), 13)
        ! Exponent 31 is Inf (mantissa 0) or NaN (its payload kept): exponent 255 with the
        ! mantissa in the top bits, as IEEE 754 widening does, which the multiply keeps. One
        ! compare and masked OR, with the sign taken from the sign-extended word: the GEMV's
        ! per-group epilogue is 6 % faster at G = 64 than with a separate Inf/NaN pattern.
        if (iand(word, 31744) == 31744) shifted = ior(shifted, float32_inf_bits)
        value = transfer(ior(shifted, iand(word, int(z'80000000', int32))), 1.0_real32) &
            * two_pow_112
    end function half_to_real

end module q35_half
