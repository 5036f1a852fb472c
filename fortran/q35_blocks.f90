! One 16-weight block of each packed format (FORMAT.md sec. 2, 3, 6): grid levels <-> bytes.
! Encoding works on one row; decoding works on a tile of TILE_ROWS rows at once, one row per
! SIMD lane, which is what the matmul kernels read (FORMAT.md sec. 7).
module q35_blocks
    use iso_fortran_env, only: int8, int32, int64, real32
    implicit none
    private
    public :: format_q35, format_int8, format_int4, format_int3, tile_rows, block_weights
    public :: block_bytes, top_level, odd_top_level, encode_block, decode_block, to_int8
    public :: encode_code, decode_code, q35_block_to_planar, q35_block_from_planar
    public :: q35_low, q35_high, q35_shift, int3_low, int3_high, int3_shift

    integer, parameter :: format_q35 = 1, format_int8 = 2, format_int4 = 3, format_int3 = 4
    integer, parameter :: tile_rows = 16, block_weights = 16

    ! Decoding uses shiftl/shiftr, not ishft: ishft must return 0 for counts >= bit_size, and
    ! that branch stops gfortran from vectorising the lanes (10x slower).
    ! Where field j of a block starts: byte (width*j)/8, bit mod(width*j, 8). A field may reach
    ! into the next byte; the last byte of a block is never followed (its field fits).
    integer, parameter :: q35_low(0:7) = [0, 0, 1, 2, 3, 4, 5, 6]
    integer, parameter :: q35_high(0:7) = [1, 1, 2, 3, 4, 5, 6, 6]
    integer, parameter :: q35_shift(0:7) = [0, 7, 6, 5, 4, 3, 2, 1]
    integer, parameter :: int3_low(0:15) = [0, 0, 0, 1, 1, 1, 2, 2, 3, 3, 3, 4, 4, 4, 5, 5]
    integer, parameter :: int3_high(0:15) = [1, 1, 1, 2, 2, 2, 3, 3, 4, 4, 4, 5, 5, 5, 5, 5]
    integer, parameter :: int3_shift(0:15) = [0, 3, 6, 1, 4, 7, 2, 5, 0, 3, 6, 1, 4, 7, 2, 5]

contains

    pure integer function block_bytes(fmt)
        integer, intent(in) :: fmt
        select case (fmt)
        case (format_q35); block_bytes = 7
        case (format_int8); block_bytes = 16
        case (format_int4); block_bytes = 8
        case default; block_bytes = 6
        end select
    end function block_bytes

    !> Highest level of the grid of even weights (all weights for the int formats).
    pure integer function top_level(fmt)
        integer, intent(in) :: fmt
        select case (fmt)
        case (format_q35, format_int4); top_level = 15
        case (format_int8); top_level = 255
        case default; top_level = 7
        end select
    end function top_level

    !> Highest level of the grid of odd weights: q35 gives them 3 bits.
    pure integer function odd_top_level(fmt)
        integer, intent(in) :: fmt
        if (fmt == format_q35) then
            odd_top_level = 7
        else
            odd_top_level = top_level(fmt)
        end if
    end function odd_top_level

    !> 7-bit code of a pair of signed values n1 in [-8, 7], n2 in [-4, 3] (sec. 2).
    pure elemental integer(int32) function encode_code(n1, n2)
        integer(int32), intent(in) :: n1, n2
        encode_code = ior(ishft(iand(n1, 15), 3), iand(n2, 7))
    end function encode_code

    !> Sign-extended fields of a 7-bit code (sec. 2).
    pure elemental subroutine decode_code(code, n1, n2)
        integer(int32), intent(in) :: code
        integer(int32), intent(out) :: n1, n2
        n1 = ieor(shiftr(iand(code, 127), 3), 8) - 8
        n2 = ieor(iand(code, 7), 4) - 4
    end subroutine decode_code

    !> A byte value 0..255 as the int8 with the same bits.
    pure elemental integer(int8) function to_int8(byte)
        integer(int32), intent(in) :: byte
        to_int8 = int(byte - 256 * (byte / 128), int8)
    end function to_int8

    !> Unsigned levels of one block (positions past the row's end must be 0) -> its bytes.
    pure subroutine encode_block(fmt, levels, n_real, bytes)
        integer, intent(in) :: fmt, n_real  ! n_real: weights of the block inside the row
        integer(int32), intent(in) :: levels(0:block_weights - 1)
        integer(int8), intent(out) :: bytes(:)
        integer(int64) :: stream
        integer(int32) :: code
        integer :: j, width
        stream = 0
        select case (fmt)
        case (format_int8)
            bytes(1:16) = to_int8(levels)
            return
        case (format_q35)
            do j = 0, 7
                if (2 * j >= n_real) exit  ! a pair wholly in the padding stays 0 bits
                code = encode_code(levels(2 * j) - 8, levels(2 * j + 1) - 4)
                if (2 * j + 1 >= n_real) code = iand(code, 120)  ! odd half is padding
                stream = ior(stream, ishft(int(code, int64), 7 * j))
            end do
        case default
            width = merge(4, 3, fmt == format_int4)
            do j = 0, min(n_real, block_weights) - 1
                stream = ior(stream, ishft(int(levels(j), int64), width * j))
            end do
        end select
        do j = 1, block_bytes(fmt)
            bytes(j) = to_int8(int(iand(ishft(stream, -8 * (j - 1)), 255_int64), int32))
        end do
    end subroutine encode_block

    !> Bytes of one block for a tile of rows (lane r = row r, values 0..255) -> float levels.
    !> levels(r, 2j) is the even weight of pair j, levels(r, 2j+1) the odd one.
    pure subroutine decode_block(fmt, bytes, levels)
        integer, intent(in) :: fmt
        integer(int32), intent(in) :: bytes(tile_rows, 0:block_weights - 1)
        real(real32), intent(out) :: levels(tile_rows, 0:block_weights - 1)
        integer(int32) :: code(tile_rows)
        integer :: j
        select case (fmt)
        case (format_q35)  ! the planar kernel layout, see q35_block_to_planar
            code = ior(ior(bytes(:, 4), shiftl(bytes(:, 5), 8)), shiftl(bytes(:, 6), 16))
            do j = 0, 3
                levels(:, 2 * j) = real(iand(bytes(:, j), 15), real32)
                levels(:, 2 * j + 8) = real(shiftr(bytes(:, j), 4), real32)
            end do
            do j = 0, 7
                levels(:, 2 * j + 1) = real(iand(shiftr(code, 3 * j), 7), real32)
            end do
        case (format_int8)
            levels = real(bytes, real32)
        case (format_int4)
            do j = 0, 7
                levels(:, 2 * j) = real(iand(bytes(:, j), 15), real32)
                levels(:, 2 * j + 1) = real(shiftr(bytes(:, j), 4), real32)
            end do
        case default
            do j = 0, 15
                levels(:, j) = real(iand(shiftr(ior(bytes(:, int3_low(j)), &
                                   shiftl(bytes(:, int3_high(j)), 8)), int3_shift(j)), 7), real32)
            end do
        end select
    end subroutine decode_block

    !> A q35 block of the bit stream (sec. 3) -> the planar block the kernels read (sec. 7):
    !> bytes 0..3 hold the 4-bit levels l1 = n1 + 8 (pair j in the low nibble of byte j, pair
    !> j + 4 in the high one), bytes 4..6 the 3-bit levels l2 = n2 + 4 (pair j at bits 3j of a
    !> little-endian 24-bit integer). Same 7 bytes, but every field is a shift and a mask away.
    pure subroutine q35_block_to_planar(stream, planar)
        integer(int8), intent(in) :: stream(7)
        integer(int8), intent(out) :: planar(7)
        integer(int64) :: bits, odd_levels
        integer(int32) :: code(0:7), even_levels(0:7)
        integer :: j
        bits = 0
        do j = 1, 7
            bits = ior(bits, shiftl(iand(int(stream(j), int64), 255_int64), 8 * (j - 1)))
        end do
        odd_levels = 0
        do j = 0, 7
            code(j) = int(iand(shiftr(bits, 7 * j), 127_int64), int32)
            even_levels(j) = ieor(shiftr(code(j), 3), 8)
            odd_levels = ior(odd_levels, shiftl(int(ieor(iand(code(j), 7), 4), int64), 3 * j))
        end do
        do j = 0, 3
            planar(j + 1) = to_int8(ior(even_levels(j), shiftl(even_levels(j + 4), 4)))
        end do
        do j = 0, 2
            planar(j + 5) = to_int8(int(iand(shiftr(odd_levels, 8 * j), 255_int64), int32))
        end do
    end subroutine q35_block_to_planar

    !> Inverse of q35_block_to_planar.
    pure subroutine q35_block_from_planar(planar, stream)
        integer(int8), intent(in) :: planar(7)
        integer(int8), intent(out) :: stream(7)
        integer(int64) :: bits
        integer(int32) :: odd_levels, byte, even_level, code
        integer :: j
        odd_levels = 0
        do j = 0, 2
            odd_levels = ior(odd_levels, shiftl(iand(int(planar(j + 5), int32), 255), 8 * j))
        end do
        bits = 0
        do j = 0, 7
            byte = iand(int(planar(mod(j, 4) + 1), int32), 255)
            even_level = iand(shiftr(byte, 4 * (j / 4)), 15)
            code = ior(shiftl(ieor(even_level, 8), 3), ieor(iand(shiftr(odd_levels, 3 * j), 7), 4))
            bits = ior(bits, shiftl(int(code, int64), 7 * j))
        end do
        do j = 1, 7
            stream(j) = to_int8(int(iand(shiftr(bits, 8 * (j - 1)), 255_int64), int32))
        end do
    end subroutine q35_block_from_planar

end module q35_blocks
