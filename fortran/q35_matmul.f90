! Fused dequantize-matmul on the tiled layout (FORMAT.md sec. 7): y = x @ W.T without ever forming
! W. Rows are processed TILE_ROWS at a time, one row per SIMD lane, so decoding a byte column is
! the same instruction for every lane. Per group the kernel sums level*x separately for the even
! and odd grids and applies the group's parameters once:
!     y += scale * sum(x_even * l1) + step3 * sum(x_odd * l2) + offset * sum(x)
module q35_matmul
    use iso_fortran_env, only: int8, int16, int32, int64, real32
    use q35_half, only: half_to_real
    use q35_blocks, only: tile_rows, block_weights, block_bytes, decode_block, format_q35, &
                          format_int8, format_int4, q35_low, q35_high, q35_shift, int3_low, &
                          int3_high, int3_shift
    use q35_quantize, only: odd_step
    implicit none
    private
    public :: gemv_tiles, dequantize_tiles

contains

    !> y(:, t, j) = rows of tile t times column j of x, for m (a few) activation columns.
    subroutine gemv_tiles(fmt, group_size, tiles, scales, offsets, x, y)
        integer, intent(in) :: fmt, group_size
        integer(int8), intent(in), contiguous :: tiles(:, :, :) ! (tile_rows, row_bytes, n_tiles)
        integer(int16), intent(in), contiguous :: scales(:, :, :) ! (tile_rows, n_groups, n_tiles)
        integer(int16), intent(in), contiguous :: offsets(:, :, :)
        real(real32), intent(in), contiguous :: x(:, :)  ! (16 * n_blocks, m), zero-padded
        real(real32), intent(out), contiguous :: y(:, :, :)  ! (tile_rows, n_tiles, m)
        real(real32) :: acc_even(tile_rows), acc_odd(tile_rows), acc(tile_rows)
        real(real32) :: x_sum(size(scales, 2), size(x, 2)), scale(tile_rows)
        integer :: t, g, j, nb, n_blocks, blocks_per_group, first, count
        integer(int64) :: base

        nb = block_bytes(fmt)
        n_blocks = size(x, 1) / block_weights
        blocks_per_group = group_size / block_weights
        do j = 1, size(x, 2)
            do g = 1, size(scales, 2)
                first = (g - 1) * blocks_per_group
                count = min(blocks_per_group, n_blocks - first)
                x_sum(g, j) = sum(x(first * block_weights + 1:(first + count) * block_weights, j))
            end do
        end do

        !$omp parallel do schedule(static) default(shared) &
        !$omp private(t, g, j, base, acc, acc_even, acc_odd, scale, first, count)
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
                    case default
                        call group_dot_int3(count, tiles(:, base:, t), &
                                            x(first * block_weights + 1:, j), acc_even, acc_odd)
                    end select
                    scale = half_to_real(scales(:, g, t))
                    acc = acc + scale * acc_even + odd_step(fmt, scale) * acc_odd &
                        + half_to_real(offsets(:, g, t)) * x_sum(g, j)
                end do
                y(:, t, j) = acc
            end do
        end do
        !$omp end parallel do
    end subroutine gemv_tiles

    ! The group dot products: for `count` blocks of a tile, sum level * x over the even and the
    ! odd positions separately. Bytes are widened to int32 lanes, fields cut out with constant
    ! shifts (FORMAT.md sec. 3, 6), and each lane (row) does the same work.

    pure subroutine group_dot_q35(count, bytes, x, acc_even, acc_odd)
        integer, intent(in) :: count
        integer(int8), intent(in) :: bytes(tile_rows, 7, count)
        real(real32), intent(in) :: x(block_weights, count)
        real(real32), intent(inout) :: acc_even(tile_rows), acc_odd(tile_rows)
        integer(int32) :: code
        real(real32) :: x_even, x_odd
        integer :: b, c, r
        do b = 1, count
            do c = 0, 7
                x_even = x(2 * c + 1, b)
                x_odd = x(2 * c + 2, b)
                !$omp simd private(code)
                do r = 1, tile_rows
                    code = ior(unsigned_byte(bytes(r, q35_low(c) + 1, b)), &
                               shiftl(unsigned_byte(bytes(r, q35_high(c) + 1, b)), 8))
                    code = iand(shiftr(code, q35_shift(c)), 127)
                    acc_even(r) = acc_even(r) + real(ieor(shiftr(code, 3), 8), real32) * x_even
                    acc_odd(r) = acc_odd(r) + real(ieor(iand(code, 7), 4), real32) * x_odd
                end do
            end do
        end do
    end subroutine group_dot_q35

    pure subroutine group_dot_int8(count, bytes, x, acc_even, acc_odd)
        integer, intent(in) :: count
        integer(int8), intent(in) :: bytes(tile_rows, 16, count)
        real(real32), intent(in) :: x(block_weights, count)
        real(real32), intent(inout) :: acc_even(tile_rows), acc_odd(tile_rows)
        real(real32) :: x_even, x_odd
        integer :: b, c, r
        do b = 1, count
            do c = 0, 7
                x_even = x(2 * c + 1, b)
                x_odd = x(2 * c + 2, b)
                !$omp simd
                do r = 1, tile_rows
                    acc_even(r) = acc_even(r) &
                        + real(unsigned_byte(bytes(r, 2 * c + 1, b)), real32) * x_even
                    acc_odd(r) = acc_odd(r) &
                        + real(unsigned_byte(bytes(r, 2 * c + 2, b)), real32) * x_odd
                end do
            end do
        end do
    end subroutine group_dot_int8

    pure subroutine group_dot_int4(count, bytes, x, acc_even, acc_odd)
        integer, intent(in) :: count
        integer(int8), intent(in) :: bytes(tile_rows, 8, count)
        real(real32), intent(in) :: x(block_weights, count)
        real(real32), intent(inout) :: acc_even(tile_rows), acc_odd(tile_rows)
        integer(int32) :: byte
        real(real32) :: x_even, x_odd
        integer :: b, c, r
        do b = 1, count
            do c = 0, 7
                x_even = x(2 * c + 1, b)
                x_odd = x(2 * c + 2, b)
                !$omp simd private(byte)
                do r = 1, tile_rows
                    byte = unsigned_byte(bytes(r, c + 1, b))
                    acc_even(r) = acc_even(r) + real(iand(byte, 15), real32) * x_even
                    acc_odd(r) = acc_odd(r) + real(shiftr(byte, 4), real32) * x_odd
                end do
            end do
        end do
    end subroutine group_dot_int4

    pure subroutine group_dot_int3(count, bytes, x, acc_even, acc_odd)
        integer, intent(in) :: count
        integer(int8), intent(in) :: bytes(tile_rows, 6, count)
        real(real32), intent(in) :: x(block_weights, count)
        real(real32), intent(inout) :: acc_even(tile_rows), acc_odd(tile_rows)
        integer(int32) :: even, odd
        real(real32) :: x_even, x_odd
        integer :: b, c, r
        do b = 1, count
            do c = 0, 14, 2
                x_even = x(c + 1, b)
                x_odd = x(c + 2, b)
                !$omp simd private(even, odd)
                do r = 1, tile_rows
                    even = ior(unsigned_byte(bytes(r, int3_low(c) + 1, b)), &
                               shiftl(unsigned_byte(bytes(r, int3_high(c) + 1, b)), 8))
                    even = iand(shiftr(even, int3_shift(c)), 7)
                    odd = ior(unsigned_byte(bytes(r, int3_low(c + 1) + 1, b)), &
                              shiftl(unsigned_byte(bytes(r, int3_high(c + 1) + 1, b)), 8))
                    odd = iand(shiftr(odd, int3_shift(c + 1)), 7)
                    acc_even(r) = acc_even(r) + real(even, real32) * x_even
                    acc_odd(r) = acc_odd(r) + real(odd, real32) * x_odd
                end do
            end do
        end do
    end subroutine group_dot_int3

    !> A byte's bits read as 0..255.
    pure elemental integer(int32) function unsigned_byte(byte)
        integer(int8), intent(in) :: byte
        unsigned_byte = iand(int(byte, int32), 255)
    end function unsigned_byte


    !> Dequantize whole tiles into w(k_pad, rows): row-major rows for a BLAS GEMM (sec. 4 formulas).
    subroutine dequantize_tiles(fmt, group_size, tiles, scales, offsets, w)
        integer, intent(in) :: fmt, group_size
        integer(int8), intent(in), contiguous :: tiles(:, :, :)
        integer(int16), intent(in), contiguous :: scales(:, :, :), offsets(:, :, :)
        real(real32), intent(out), contiguous :: w(:, :)  ! (16 * n_blocks, 16 * n_tiles)
        integer(int32) :: bytes(tile_rows, 0:block_weights - 1)
        real(real32) :: levels(tile_rows, 0:block_weights - 1)
        real(real32) :: scale(tile_rows), offset(tile_rows), step(tile_rows)
        integer :: t, b, g, i, r, nb, n_blocks, row
        integer(int64) :: base

        nb = block_bytes(fmt)
        n_blocks = size(w, 1) / block_weights
        bytes = 0
        !$omp parallel do schedule(static) default(shared) &
        !$omp private(t, b, g, i, r, row, base, bytes, levels, scale, offset, step)
        do t = 1, size(tiles, 3)
            do b = 0, n_blocks - 1
                g = b * block_weights / group_size + 1
                scale = half_to_real(scales(:, g, t))
                offset = half_to_real(offsets(:, g, t))
                base = int(b, int64) * nb
                bytes(:, 0:nb - 1) = iand(int(tiles(:, base + 1:base + nb, t), int32), 255)
                call decode_block(fmt, bytes, levels)
                do i = 0, block_weights - 1
                    if (mod(i, 2) == 0) then
                        step = scale
                    else
                        step = odd_step(fmt, scale)
                    end if
                    do r = 1, tile_rows
                        row = (t - 1) * tile_rows + r
                        w(b * block_weights + i + 1, row) = offset(r) + step(r) * levels(r, i)
                    end do
                end do
            end do
        end do
        !$omp end parallel do
    end subroutine dequantize_tiles

end module q35_matmul
