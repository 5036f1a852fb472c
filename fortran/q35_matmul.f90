! Fused dequantize-matmul on the tiled layout (FORMAT.md §7): y = x @ W.T without ever forming
! W. Rows are processed TILE_ROWS at a time, one row per SIMD lane, so decoding a byte column is
! the same instruction for every lane. Per group the kernel sums level*x separately for the even
! and odd grids and applies the group's parameters once:
!     y += scale * sum(x_even * l1) + step3 * sum(x_odd * l2) + offset * sum(x)
module q35_matmul
    use iso_fortran_env, only: int8, int16, int32, int64, real32
    use q35_half, only: half_to_real
    use q35_blocks, only: tile_rows, block_weights, block_bytes, decode_block
    use q35_quantize, only: odd_step
    implicit none
    private
    public :: gemv_tiles, dequantize_tiles

contains

    !> y(:, t, j) = rows of tile t times column j of x, for m (a few) activation columns.
    subroutine gemv_tiles(fmt, group_size, tiles, scales, offsets, x, y)
        integer, intent(in) :: fmt, group_size
        integer(int8), intent(in) :: tiles(:, :, :)       ! (tile_rows, row_bytes, n_tiles)
        integer(int16), intent(in) :: scales(:, :, :)     ! (tile_rows, n_groups, n_tiles)
        integer(int16), intent(in) :: offsets(:, :, :)
        real(real32), intent(in) :: x(:, :)               ! (16 * n_blocks, m), zero-padded
        real(real32), intent(out) :: y(:, :, :)           ! (tile_rows, n_tiles, m)
        integer(int32) :: bytes(tile_rows, 0:block_weights - 1)
        real(real32) :: levels(tile_rows, 0:block_weights - 1)
        real(real32) :: acc_even(tile_rows, size(x, 2)), acc_odd(tile_rows, size(x, 2))
        real(real32) :: acc(tile_rows, size(x, 2)), x_sum(size(scales, 2), size(x, 2))
        real(real32) :: scale(tile_rows), offset(tile_rows)
        integer :: t, g, b, c, j, nb, n_blocks, blocks_per_group, first_block, last_block
        integer(int64) :: base

        nb = block_bytes(fmt)
        n_blocks = size(x, 1) / block_weights
        blocks_per_group = group_size / block_weights
        bytes = 0
        do j = 1, size(x, 2)
            do g = 1, size(scales, 2)
                first_block = (g - 1) * blocks_per_group
                last_block = min(g * blocks_per_group, n_blocks)
                x_sum(g, j) = sum(x(first_block * block_weights + 1:last_block * block_weights, j))
            end do
        end do

        !$omp parallel do schedule(static) default(shared) &
        !$omp private(t, g, b, c, j, base, bytes, levels, acc, acc_even, acc_odd, scale, offset, &
        !$omp first_block, last_block)
        do t = 1, size(tiles, 3)
            acc = 0.0_real32
            do g = 1, size(scales, 2)
                acc_even = 0.0_real32
                acc_odd = 0.0_real32
                first_block = (g - 1) * blocks_per_group
                last_block = min(g * blocks_per_group, n_blocks) - 1
                do b = first_block, last_block
                    base = int(b, int64) * nb
                    bytes(:, 0:nb - 1) = iand(int(tiles(:, base + 1:base + nb, t), int32), 255)
                    call decode_block(fmt, bytes, levels)
                    do j = 1, size(x, 2)
                        do c = 0, block_weights / 2 - 1
                            acc_even(:, j) = acc_even(:, j) &
                                + levels(:, 2 * c) * x(b * block_weights + 2 * c + 1, j)
                            acc_odd(:, j) = acc_odd(:, j) &
                                + levels(:, 2 * c + 1) * x(b * block_weights + 2 * c + 2, j)
                        end do
                    end do
                end do
                scale = half_to_real(scales(:, g, t))
                offset = half_to_real(offsets(:, g, t))
                do j = 1, size(x, 2)
                    acc(:, j) = acc(:, j) + scale * acc_even(:, j) &
                        + odd_step(fmt, scale) * acc_odd(:, j) + offset * x_sum(g, j)
                end do
            end do
            y(:, t, :) = acc
        end do
        !$omp end parallel do
    end subroutine gemv_tiles

    !> Dequantize whole tiles into w(k_pad, rows): row-major rows for a BLAS GEMM (§4 formulas).
    subroutine dequantize_tiles(fmt, group_size, tiles, scales, offsets, w)
        integer, intent(in) :: fmt, group_size
        integer(int8), intent(in) :: tiles(:, :, :)
        integer(int16), intent(in) :: scales(:, :, :), offsets(:, :, :)
        real(real32), intent(out) :: w(:, :)              ! (16 * n_blocks, tile_rows * n_tiles)
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
