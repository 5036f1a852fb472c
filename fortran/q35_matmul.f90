! Fused dequantize-matmul on the tiled layout (FORMAT.md sec. 7): y = x @ W.T without ever forming
! W. Rows are processed TILE_ROWS at a time, one row per SIMD lane, so decoding a byte column is
! the same instruction for every lane. Per group the kernel sums level*x separately for the even
! and odd grids and applies the group's parameters once:
!     y += scale * sum(x_even * l1) + step3 * sum(x_odd * l2) + offset * sum(x)
! The one kernel compiled with FMA contraction (meson.build): it need not match the numpy
! reference bit for bit, only to float32 accuracy.
module q35_matmul
    use iso_fortran_env, only: int8, int16, int32, int64, real32
    use q35_half, only: half_to_real
    use q35_blocks, only: tile_rows, block_weights, block_bytes, format_q35, format_int8, &
                          format_int4, format_int3
    use q35_quantize, only: odd_step
    implicit none
    private
    public :: gemv_tiles, gemv_tiles_shared

    ! Below this many packed bytes a matrix is done by one thread: starting and joining a parallel
    ! region costs microseconds on an idle machine and a scheduler time slice (milliseconds) on a
    ! busy one, while a 576x576 q35 GEMV (145 KiB) takes tens of microseconds on one core.
    integer, parameter :: parallel_min_bytes = 256 * 1024

contains

    !> y(:, t, j) = rows of tile t times column j of x, for m (a few) activation columns.
    subroutine gemv_tiles(fmt, group_size, tiles, scales, offsets, x, y)
        integer, intent(in) :: fmt, group_size
        integer(int8), intent(in), contiguous :: tiles(:, :, :) ! (tile_rows, row_bytes, n_tiles)
        integer(int16), intent(in), contiguous :: scales(:, :, :) ! (tile_rows, n_groups, n_tiles)
        integer(int16), intent(in), contiguous :: offsets(:, :, :)
        real(real32), intent(in), contiguous :: x(:, :)  ! (16 * n_blocks, m), zero-padded
        real(real32), intent(out), contiguous :: y(:, :, :)  ! (tile_rows, n_tiles, m)
        !$omp parallel default(shared) if (size(tiles) >= parallel_min_bytes)
        call gemv_tiles_shared(fmt, group_size, tiles, scales, offsets, x, y)
        !$omp end parallel
    end subroutine gemv_tiles

    !> gemv_tiles' work, shared among the threads of the enclosing parallel region (an orphaned
    !> worksharing loop, ending in a barrier); outside a parallel region, one thread does it all.
    !> The decode step (q35_decode) calls it for every linear layer of a block from one region.
    subroutine gemv_tiles_shared(fmt, group_size, tiles, scales, offsets, x, y)
        integer, intent(in) :: fmt, group_size
        integer(int8), intent(in), contiguous :: tiles(:, :, :)
        integer(int16), intent(in), contiguous :: scales(:, :, :)
        integer(int16), intent(in), contiguous :: offsets(:, :, :)
        real(real32), intent(in), contiguous :: x(:, :)
        real(real32), intent(out), contiguous :: y(:, :, :)
        real(real32) :: acc_even(tile_rows), acc_odd(tile_rows), acc(tile_rows)
        real(real32) :: x_sum(size(scales, 2), size(x, 2)), lane_scale, odd_ratio
        integer :: t, g, j, r, nb, n_blocks, blocks_per_group, first, count
        integer(int64) :: base

        ! The Python wrapper only passes known ids; anything else is a bug, never a format.
        if (all(fmt /= [format_q35, format_int8, format_int4, format_int3])) &
            error stop "gemv_tiles: unknown format id"
        nb = block_bytes(fmt)
        ! The odd grid's step over the scale (15/7 on q35): one multiply per group and lane
        ! instead of odd_step's division, within an ulp of it (the GEMV's sums differ by more).
        odd_ratio = odd_step(fmt, 1.0_real32)
        n_blocks = size(x, 1) / block_weights
        blocks_per_group = group_size / block_weights
        ! Every thread sums the activations of each group itself (a few hundred adds): cheaper
        ! than sharing them, which would cost a barrier.
        do j = 1, size(x, 2)
            do g = 1, size(scales, 2)
                first = (g - 1) * blocks_per_group
                count = min(blocks_per_group, n_blocks - first)
                x_sum(g, j) = sum(x(first * block_weights + 1:(first + count) * block_weights, j))
            end do
        end do

        !$omp do schedule(static)
        do t = 1, size(tiles, 3)
            do j = 1, size(x, 2)
                acc = 0.0_real32
                do g = 1, size(scales, 2)
                    acc_even = 0.0_real32
                    acc_odd = 0.0_real32
                    first = (g - 1) * blocks_per_group
                    count = min(blocks_per_group, n_blocks - first)
                    base = int(first, int64) * nb + 1
                    ! One specialised loop per format: a generic "decode block, then multiply"
                    ! loop through a level buffer runs ~10x slower (measured).
                    select case (fmt)
                    case (format_q35)
                        call group_dot_q35(count, tiles(:, base:, t), &
                                           x(first * block_weights + 1:, j), acc_even, acc_odd)
                    case (format_int8)
                        call group_dot_int8(count, tiles(:, base:, t), &
                                            x(first * block_weights + 1:, j), acc_even, acc_odd)
                    case (format_int4)
                        call group_dot_int4(count, tiles(:, base:, t), &
                                            x(first * block_weights + 1:, j), acc_even, acc_odd)
                    case (format_int3)
                        call group_dot_int3(count, tiles(:, base:, t), &
                                            x(first * block_weights + 1:, j), acc_even, acc_odd)
                    end select
                    ! An explicit lane loop: as array expressions GCC 12 converted the float16
                    ! parameters and added the lanes one scalar at a time (~25 % of the time).
                    !$omp simd private(lane_scale)
                    do r = 1, tile_rows
                        lane_scale = half_to_real(scales(r, g, t))
                        acc(r) = acc(r) + lane_scale * acc_even(r) &
                            + lane_scale * odd_ratio * acc_odd(r) &
                            + half_to_real(offsets(r, g, t)) * x_sum(g, j)
                    end do
                end do
                y(:, t, j) = acc
            end do
        end do
        !$omp end do
    end subroutine gemv_tiles_shared

    ! The group dot products: for `count` blocks of a tile, sum level * x over the even and the
    ! odd positions separately. Bytes are widened to int32 lanes, fields cut out with constant
    ! shifts (FORMAT.md sec. 3, 6), and each lane (row) does the same work.

    pure subroutine group_dot_q35(count, bytes, x, acc_even, acc_odd)
        ! The planar kernel layout (q35_block_to_planar): nibbles of l1, then 24 bits of l2.
        integer, intent(in) :: count
        integer(int8), intent(in) :: bytes(tile_rows, 7, count)
        real(real32), intent(in) :: x(block_weights, count)
        real(real32), intent(inout) :: acc_even(tile_rows), acc_odd(tile_rows)
        integer(int32) :: wide(tile_rows, 5), odd
        ! Two accumulators per parity (four FMA chains of 4 per block instead of two of 8): the
        ! chains were bound by FMA latency; in cache, one core, 1024 x 1024 at G = 128, 26 ->
        ! 31-33 Gweights/s (standalone harness, pinned to an idle core; 8 chains: no further gain)
        real(real32) :: even2(tile_rows), odd2(tile_rows)
        integer :: b, r
        even2 = 0.0_real32
        odd2 = 0.0_real32
        do b = 1, count
            ! Widening first keeps the lane loop in 32-bit lanes (full-width vectors). One
            ! statement per column, the 24 odd bits joined in it: a whole-block assignment is
            ! stored in half vectors and read back whole, which stalls store forwarding
            ! (1.2x slower, measured).
            wide(:, 1) = iand(int(bytes(:, 1, b), int32), 255)
            wide(:, 2) = iand(int(bytes(:, 2, b), int32), 255)
            wide(:, 3) = iand(int(bytes(:, 3, b), int32), 255)
            wide(:, 4) = iand(int(bytes(:, 4, b), int32), 255)
            wide(:, 5) = ior(ior(iand(int(bytes(:, 5, b), int32), 255), &
                                 shiftl(iand(int(bytes(:, 6, b), int32), 255), 8)), &
                             shiftl(iand(int(bytes(:, 7, b), int32), 255), 16))
            !$omp simd private(odd)
            do r = 1, tile_rows
                odd = wide(r, 5)
                acc_even(r) = acc_even(r) &
                    + real(iand(wide(r, 1), 15), real32) * x(1, b) &
                    + real(iand(wide(r, 2), 15), real32) * x(3, b) &
                    + real(iand(wide(r, 3), 15), real32) * x(5, b) &
                    + real(iand(wide(r, 4), 15), real32) * x(7, b)
                even2(r) = even2(r) &
                    + real(shiftr(wide(r, 1), 4), real32) * x(9, b) &
                    + real(shiftr(wide(r, 2), 4), real32) * x(11, b) &
                    + real(shiftr(wide(r, 3), 4), real32) * x(13, b) &
                    + real(shiftr(wide(r, 4), 4), real32) * x(15, b)
                acc_odd(r) = acc_odd(r) &
                    + real(iand(odd, 7), real32) * x(2, b) &
                    + real(iand(shiftr(odd, 3), 7), real32) * x(4, b) &
                    + real(iand(shiftr(odd, 6), 7), real32) * x(6, b) &
                    + real(iand(shiftr(odd, 9), 7), real32) * x(8, b)
                odd2(r) = odd2(r) &
                    + real(iand(shiftr(odd, 12), 7), real32) * x(10, b) &
                    + real(iand(shiftr(odd, 15), 7), real32) * x(12, b) &
                    + real(iand(shiftr(odd, 18), 7), real32) * x(14, b) &
                    + real(shiftr(odd, 21), real32) * x(16, b)
            end do
        end do
        !$omp simd
        do r = 1, tile_rows
            acc_even(r) = acc_even(r) + even2(r)
            acc_odd(r) = acc_odd(r) + odd2(r)
        end do

    end subroutine group_dot_q35

    pure subroutine group_dot_int8(count, bytes, x, acc_even, acc_odd)
        ! level j = byte j
        integer, intent(in) :: count
        integer(int8), intent(in) :: bytes(tile_rows, 16, count)
        real(real32), intent(in) :: x(block_weights, count)
        real(real32), intent(inout) :: acc_even(tile_rows), acc_odd(tile_rows)
        integer(int32) :: wide(tile_rows, 16)
        real(real32) :: even2(tile_rows), odd2(tile_rows)  ! two FMA chains each
        integer :: b, r
        even2 = 0.0_real32
        odd2 = 0.0_real32
        do b = 1, count
            ! Widened column by column, as in group_dot_q35.
            wide(:, 1) = iand(int(bytes(:, 1, b), int32), 255)
            wide(:, 2) = iand(int(bytes(:, 2, b), int32), 255)
            wide(:, 3) = iand(int(bytes(:, 3, b), int32), 255)
            wide(:, 4) = iand(int(bytes(:, 4, b), int32), 255)
            wide(:, 5) = iand(int(bytes(:, 5, b), int32), 255)
            wide(:, 6) = iand(int(bytes(:, 6, b), int32), 255)
            wide(:, 7) = iand(int(bytes(:, 7, b), int32), 255)
            wide(:, 8) = iand(int(bytes(:, 8, b), int32), 255)
            wide(:, 9) = iand(int(bytes(:, 9, b), int32), 255)
            wide(:, 10) = iand(int(bytes(:, 10, b), int32), 255)
            wide(:, 11) = iand(int(bytes(:, 11, b), int32), 255)
            wide(:, 12) = iand(int(bytes(:, 12, b), int32), 255)
            wide(:, 13) = iand(int(bytes(:, 13, b), int32), 255)
            wide(:, 14) = iand(int(bytes(:, 14, b), int32), 255)
            wide(:, 15) = iand(int(bytes(:, 15, b), int32), 255)
            wide(:, 16) = iand(int(bytes(:, 16, b), int32), 255)
            !$omp simd
            do r = 1, tile_rows
                acc_even(r) = acc_even(r) &
                    + real(wide(r, 1), real32) * x(1, b) &
                    + real(wide(r, 3), real32) * x(3, b) &
                    + real(wide(r, 5), real32) * x(5, b) &
                    + real(wide(r, 7), real32) * x(7, b)
                even2(r) = even2(r) &
                    + real(wide(r, 9), real32) * x(9, b) &
                    + real(wide(r, 11), real32) * x(11, b) &
                    + real(wide(r, 13), real32) * x(13, b) &
                    + real(wide(r, 15), real32) * x(15, b)
                acc_odd(r) = acc_odd(r) &
                    + real(wide(r, 2), real32) * x(2, b) &
                    + real(wide(r, 4), real32) * x(4, b) &
                    + real(wide(r, 6), real32) * x(6, b) &
                    + real(wide(r, 8), real32) * x(8, b)
                odd2(r) = odd2(r) &
                    + real(wide(r, 10), real32) * x(10, b) &
                    + real(wide(r, 12), real32) * x(12, b) &
                    + real(wide(r, 14), real32) * x(14, b) &
                    + real(wide(r, 16), real32) * x(16, b)
            end do
        end do
        !$omp simd
        do r = 1, tile_rows
            acc_even(r) = acc_even(r) + even2(r)
            acc_odd(r) = acc_odd(r) + odd2(r)
        end do
    end subroutine group_dot_int8

    pure subroutine group_dot_int4(count, bytes, x, acc_even, acc_odd)
        ! level 2j = low nibble of byte j, 2j+1 = high
        integer, intent(in) :: count
        integer(int8), intent(in) :: bytes(tile_rows, 8, count)
        real(real32), intent(in) :: x(block_weights, count)
        real(real32), intent(inout) :: acc_even(tile_rows), acc_odd(tile_rows)
        integer(int32) :: wide(tile_rows, 8)
        real(real32) :: even2(tile_rows), odd2(tile_rows)  ! two FMA chains each
        integer :: b, r
        even2 = 0.0_real32
        odd2 = 0.0_real32
        do b = 1, count
            ! Widened column by column, as in group_dot_q35.
            wide(:, 1) = iand(int(bytes(:, 1, b), int32), 255)
            wide(:, 2) = iand(int(bytes(:, 2, b), int32), 255)
            wide(:, 3) = iand(int(bytes(:, 3, b), int32), 255)
            wide(:, 4) = iand(int(bytes(:, 4, b), int32), 255)
            wide(:, 5) = iand(int(bytes(:, 5, b), int32), 255)
            wide(:, 6) = iand(int(bytes(:, 6, b), int32), 255)
            wide(:, 7) = iand(int(bytes(:, 7, b), int32), 255)
            wide(:, 8) = iand(int(bytes(:, 8, b), int32), 255)
            !$omp simd
            do r = 1, tile_rows
                acc_even(r) = acc_even(r) &
                    + real(iand(wide(r, 1), 15), real32) * x(1, b) &
                    + real(iand(wide(r, 2), 15), real32) * x(3, b) &
                    + real(iand(wide(r, 3), 15), real32) * x(5, b) &
                    + real(iand(wide(r, 4), 15), real32) * x(7, b)
                even2(r) = even2(r) &
                    + real(iand(wide(r, 5), 15), real32) * x(9, b) &
                    + real(iand(wide(r, 6), 15), real32) * x(11, b) &
                    + real(iand(wide(r, 7), 15), real32) * x(13, b) &
                    + real(iand(wide(r, 8), 15), real32) * x(15, b)
                acc_odd(r) = acc_odd(r) &
                    + real(shiftr(wide(r, 1), 4), real32) * x(2, b) &
                    + real(shiftr(wide(r, 2), 4), real32) * x(4, b) &
                    + real(shiftr(wide(r, 3), 4), real32) * x(6, b) &
                    + real(shiftr(wide(r, 4), 4), real32) * x(8, b)
                odd2(r) = odd2(r) &
                    + real(shiftr(wide(r, 5), 4), real32) * x(10, b) &
                    + real(shiftr(wide(r, 6), 4), real32) * x(12, b) &
                    + real(shiftr(wide(r, 7), 4), real32) * x(14, b) &
                    + real(shiftr(wide(r, 8), 4), real32) * x(16, b)
            end do
        end do
        !$omp simd
        do r = 1, tile_rows
            acc_even(r) = acc_even(r) + even2(r)
            acc_odd(r) = acc_odd(r) + odd2(r)
        end do
    end subroutine group_dot_int4

    pure subroutine group_dot_int3(count, bytes, x, acc_even, acc_odd)
        ! f(j) = level j at its bits 3j..
        integer, intent(in) :: count
        integer(int8), intent(in) :: bytes(tile_rows, 6, count)
        real(real32), intent(in) :: x(block_weights, count)
        real(real32), intent(inout) :: acc_even(tile_rows), acc_odd(tile_rows)
        integer(int32) :: wide(tile_rows, 5), f(0:15)
        real(real32) :: even2(tile_rows), odd2(tile_rows)  ! two FMA chains each
        integer :: b, r
        even2 = 0.0_real32
        odd2 = 0.0_real32
        do b = 1, count
            ! Widened column by column, as in group_dot_q35, but bytes 5 and 6 joined in one
            ! statement: six separate columns were widened 64 bytes in vectors and the last 32
            ! one byte at a time through the stack (objdump; 1.5-1.7x q35's time per call).
            wide(:, 1) = iand(int(bytes(:, 1, b), int32), 255)
            wide(:, 2) = iand(int(bytes(:, 2, b), int32), 255)
            wide(:, 3) = iand(int(bytes(:, 3, b), int32), 255)
            wide(:, 4) = iand(int(bytes(:, 4, b), int32), 255)
            wide(:, 5) = ior(iand(int(bytes(:, 5, b), int32), 255), &
                             shiftl(iand(int(bytes(:, 6, b), int32), 255), 8))
            !$omp simd private(f)
            do r = 1, tile_rows
                f(0) = wide(r, 1)
                f(1) = shiftr(wide(r, 1), 3)
                f(2) = shiftr(ior(wide(r, 1), shiftl(wide(r, 2), 8)), 6)
                f(3) = shiftr(wide(r, 2), 1)
                f(4) = shiftr(wide(r, 2), 4)
                f(5) = shiftr(ior(wide(r, 2), shiftl(wide(r, 3), 8)), 7)
                f(6) = shiftr(wide(r, 3), 2)
                f(7) = shiftr(wide(r, 3), 5)
                f(8) = wide(r, 4)
                f(9) = shiftr(wide(r, 4), 3)
                f(10) = shiftr(ior(wide(r, 4), shiftl(wide(r, 5), 8)), 6)
                f(11) = shiftr(wide(r, 5), 1)
                f(12) = shiftr(wide(r, 5), 4)
                f(13) = shiftr(wide(r, 5), 7)  ! bytes 5 and 6 are one 16-bit lane
                f(14) = shiftr(wide(r, 5), 10)
                f(15) = shiftr(wide(r, 5), 13)
                acc_even(r) = acc_even(r) &
                    + real(iand(f(0), 7), real32) * x(1, b) &
                    + real(iand(f(2), 7), real32) * x(3, b) &
                    + real(iand(f(4), 7), real32) * x(5, b) &
                    + real(iand(f(6), 7), real32) * x(7, b)
                even2(r) = even2(r) &
                    + real(iand(f(8), 7), real32) * x(9, b) &
                    + real(iand(f(10), 7), real32) * x(11, b) &
                    + real(iand(f(12), 7), real32) * x(13, b) &
                    + real(iand(f(14), 7), real32) * x(15, b)
                acc_odd(r) = acc_odd(r) &
                    + real(iand(f(1), 7), real32) * x(2, b) &
                    + real(iand(f(3), 7), real32) * x(4, b) &
                    + real(iand(f(5), 7), real32) * x(6, b) &
                    + real(iand(f(7), 7), real32) * x(8, b)
                odd2(r) = odd2(r) &
                    + real(iand(f(9), 7), real32) * x(10, b) &
                    + real(iand(f(11), 7), real32) * x(12, b) &
                    + real(iand(f(13), 7), real32) * x(14, b) &
                    + real(iand(f(15), 7), real32) * x(16, b)
            end do
        end do
        !$omp simd
        do r = 1, tile_rows
            acc_even(r) = acc_even(r) + even2(r)
            acc_odd(r) = acc_odd(r) + odd2(r)
        end do
    end subroutine group_dot_int3




end module q35_matmul
