! The q35 chunk layout of the integer kernels (FORMAT.md sec. 7): each row stays contiguous, its
! groups are cut into chunks of at most 128 weights (64 pairs), and each chunk of P pairs holds
! the same 7P/8 bytes as the bit stream, rearranged into three planes so that every level is a
! constant shift and mask of a byte that SIMD lanes read contiguously along K:
!   bytes [0, P/2)      E:  byte i = even level of pair i (low nibble), of pair i + P/2 (high)
!   bytes [P/2, 3P/4)   O2: byte i, bits 2j..2j+1 = low 2 bits of the odd level of pair i + jP/4
!   bytes [3P/4, 7P/8)  O1: byte i, bit b = bit 2 of the odd level of pair
!                           i + mod(b, 2) P/8 + (b / 2) P/4
! Unpacked, a chunk's levels come out as [even levels of pairs 0..P-1, odd levels of pairs
! 0..P-1]; the activations are permuted once per matmul to the same order (q35_activations).
! Exact integer and float32 operations only (built without FMA contraction).
module q35_chunks
    use iso_fortran_env, only: int8, int16, int32, int64, real32
    use q35_half, only: half_to_real
    use q35_blocks, only: block_weights, to_int8
    implicit none
    private
    public :: chunk_pairs, chunk_weights, unpack_chunk, chunk_span
    public :: stream_to_chunks, chunks_to_stream, dequantize_chunk_row

    integer, parameter :: chunk_pairs = 64, chunk_weights = 2 * chunk_pairs

contains

    !> First weight (0-based) and pair count of chunk c (0-based) of group g (0-based).
    pure subroutine chunk_span(k_pad, group_size, g, c, first, pairs)
        integer, intent(in) :: k_pad, group_size, g, c
        integer, intent(out) :: first, pairs
        first = g * group_size + c * chunk_weights
        pairs = (min(chunk_weights, min((g + 1) * group_size, k_pad) - first)) / 2
    end subroutine chunk_span

    !> Levels of one chunk of `pairs` pairs (a multiple of 8, at most 64), as int16.
    pure subroutine unpack_chunk(pairs, bytes, levels)
        integer, intent(in) :: pairs
        integer(int8), intent(in) :: bytes(*)
        integer(int16), intent(out) :: levels(chunk_weights)
        integer(int16) :: even(chunk_pairs / 2), low(chunk_pairs / 4), top(chunk_pairs / 8)
        integer(int16) :: high(chunk_pairs / 4)
        integer :: half, quarter, eighth
        half = pairs / 2
        quarter = pairs / 4
        eighth = pairs / 8
        even(1:half) = iand(int(bytes(1:half), int16), 255_int16)
        levels(1:half) = iand(even(1:half), 15_int16)
        levels(half + 1:pairs) = shiftr(even(1:half), 4)
        low(1:quarter) = iand(int(bytes(half + 1:half + quarter), int16), 255_int16)
        ! high(i) holds O1 bits two places up (one for the second half), so that bit 2 of
        ! shiftr(high, 2j) is the top bit of field j.
        top(1:eighth) = iand(int(bytes(half + quarter + 1:half + quarter + eighth), int16), &
                             255_int16)
        high(1:eighth) = shiftl(top(1:eighth), 2)
        high(eighth + 1:quarter) = shiftl(top(1:eighth), 1)
        levels(pairs + 1:pairs + quarter) = ior(iand(low(1:quarter), 3_int16), &
                                                iand(high(1:quarter), 4_int16))
        levels(pairs + quarter + 1:pairs + 2 * quarter) = &
            ior(iand(shiftr(low(1:quarter), 2), 3_int16), iand(shiftr(high(1:quarter), 2), 4_int16))
        levels(pairs + 2 * quarter + 1:pairs + 3 * quarter) = &
            ior(iand(shiftr(low(1:quarter), 4), 3_int16), iand(shiftr(high(1:quarter), 4), 4_int16))
        levels(pairs + 3 * quarter + 1:2 * pairs) = &
            ior(shiftr(low(1:quarter), 6), iand(shiftr(high(1:quarter), 6), 4_int16))
    end subroutine unpack_chunk

    !> Levels -> the planes of one chunk (inverse of unpack_chunk).
    pure subroutine pack_chunk(pairs, even, odd, bytes)
        integer, intent(in) :: pairs
        integer(int32), intent(in) :: even(0:pairs - 1), odd(0:pairs - 1)
        integer(int8), intent(out) :: bytes(7 * pairs / 8)
        integer :: i, j, b, half, quarter, eighth, byte
        half = pairs / 2
        quarter = pairs / 4
        eighth = pairs / 8
        do i = 0, half - 1
            bytes(i + 1) = to_int8(ior(even(i), shiftl(even(i + half), 4)))
        end do
        do i = 0, quarter - 1
            byte = 0
            do j = 0, 3
                byte = ior(byte, shiftl(iand(odd(i + j * quarter), 3), 2 * j))
            end do
            bytes(half + i + 1) = to_int8(byte)
        end do
        do i = 0, eighth - 1
            byte = 0
            do b = 0, 7
                byte = ior(byte, shiftl(shiftr(odd(i + mod(b, 2) * eighth + shiftr(b, 1) * quarter), &
                                               2), b))
            end do
            bytes(half + quarter + i + 1) = to_int8(byte)
        end do
    end subroutine pack_chunk

    !> Levels (l1 = n1 + 8, l2 = n2 + 4) of every pair of a row of the bit stream (sec. 3).
    pure subroutine stream_levels(stream, even, odd)
        integer(int8), intent(in) :: stream(:)
        integer(int32), intent(out) :: even(0:), odd(0:)
        integer(int64) :: bits
        integer :: b, j, code
        do b = 0, size(stream) / 7 - 1
            bits = 0
            do j = 0, 6
                bits = ior(bits, shiftl(iand(int(stream(7 * b + j + 1), int64), 255_int64), 8 * j))
            end do
            do j = 0, 7
                code = int(iand(shiftr(bits, 7 * j), 127_int64), int32)
                even(8 * b + j) = ieor(shiftr(code, 3), 8)
                odd(8 * b + j) = ieor(iand(code, 7), 4)
            end do
        end do
    end subroutine stream_levels

    !> One row of the bit stream (sec. 3) -> its chunks (same number of bytes).
    pure subroutine stream_to_chunks(group_size, stream, chunks)
        integer, intent(in) :: group_size
        integer(int8), intent(in) :: stream(:)
        integer(int8), intent(out) :: chunks(:)
        integer(int32) :: even(0:size(stream) * 8 / 7 - 1), odd(0:size(stream) * 8 / 7 - 1)
        integer :: g, c, first, pairs, k_pad
        k_pad = size(stream) * 16 / 7
        call stream_levels(stream, even, odd)
        do g = 0, (k_pad + group_size - 1) / group_size - 1
            do c = 0, (group_size + chunk_weights - 1) / chunk_weights - 1
                call chunk_span(k_pad, group_size, g, c, first, pairs)
                if (pairs <= 0) exit
                call pack_chunk(pairs, even(first / 2:), odd(first / 2:), &
                                chunks(7 * first / 16 + 1:7 * first / 16 + 7 * pairs / 8))
            end do
        end do
    end subroutine stream_to_chunks

    !> Inverse of stream_to_chunks.
    pure subroutine chunks_to_stream(group_size, chunks, stream)
        integer, intent(in) :: group_size
        integer(int8), intent(in) :: chunks(:)
        integer(int8), intent(out) :: stream(:)
        integer(int16) :: levels(chunk_weights)
        integer(int64) :: bits
        integer :: g, c, first, pairs, k_pad, p, j, b
        integer(int32) :: code(0:size(chunks) * 8 / 7 - 1)
        k_pad = size(chunks) * 16 / 7
        do g = 0, (k_pad + group_size - 1) / group_size - 1
            do c = 0, (group_size + chunk_weights - 1) / chunk_weights - 1
                call chunk_span(k_pad, group_size, g, c, first, pairs)
                if (pairs <= 0) exit
                call unpack_chunk(pairs, chunks(7 * first / 16 + 1:), levels)
                do p = 0, pairs - 1
                    code(first / 2 + p) = ior(shiftl(ieor(int(levels(p + 1), int32), 8), 3), &
                                              ieor(int(levels(pairs + p + 1), int32), 4))
                end do
            end do
        end do
        do b = 0, size(stream) / 7 - 1
            bits = 0
            do j = 0, 7
                bits = ior(bits, shiftl(int(code(8 * b + j), int64), 7 * j))
            end do
            do j = 0, 6
                stream(7 * b + j + 1) = to_int8(int(iand(shiftr(bits, 8 * j), 255_int64), int32))
            end do
        end do
    end subroutine chunks_to_stream

    !> One row of chunks -> float32 weights (k_pad of them), offset + step * level (sec. 4).
    pure subroutine dequantize_chunk_row(group_size, chunks, scales, offsets, w)
        integer, intent(in) :: group_size
        integer(int8), intent(in) :: chunks(:)
        integer(int16), intent(in) :: scales(:), offsets(:)
        real(real32), intent(out) :: w(:)
        integer(int16) :: levels(chunk_weights)
        real(real32) :: scale, offset, step3
        integer :: g, c, first, pairs, p
        do g = 0, size(scales) - 1
            scale = half_to_real(scales(g + 1))
            offset = half_to_real(offsets(g + 1))
            step3 = (15.0_real32 * scale) / 7.0_real32
            do c = 0, (group_size + chunk_weights - 1) / chunk_weights - 1
                call chunk_span(size(w), group_size, g, c, first, pairs)
                if (pairs <= 0) exit
                call unpack_chunk(pairs, chunks(7 * first / 16 + 1:), levels)
                do p = 0, pairs - 1
                    w(first + 2 * p + 1) = offset + scale * real(levels(p + 1), real32)
                    w(first + 2 * p + 2) = offset + step3 * real(levels(pairs + p + 1), real32)
                end do
            end do
        end do
    end subroutine dequantize_chunk_row

end module q35_chunks
