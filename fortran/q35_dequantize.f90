! Dequantization of whole row tiles into float32 rows (FORMAT.md sec. 4, 7), for the banded
! GEMM of prompts and for export. Bit-identical to the numpy reference (no FMA contraction).
module q35_dequantize
    use iso_fortran_env, only: int8, int16, int32, int64, real32
    use q35_half, only: half_to_real
    use q35_blocks, only: tile_rows, block_weights, block_bytes, decode_block
    use q35_quantize, only: odd_step
    implicit none
    private
    public :: dequantize_tiles

    ! As in q35_matmul: small matrices are done by one thread.
    integer, parameter :: parallel_min_bytes = 256 * 1024

contains

    !> Dequantize whole tiles into w(k_pad, rows): row-major rows for a BLAS GEMM (sec. 4 formulas).
    subroutine dequantize_tiles(fmt, group_size, tiles, scales, offsets, w)
        integer, intent(in) :: fmt, group_size
        integer(int8), intent(in), contiguous :: tiles(:, :, :)
        integer(int16), intent(in), contiguous :: scales(:, :, :), offsets(:, :, :)
        real(real32), intent(out), contiguous :: w(:, :)  ! (16 * n_blocks, 16 * n_tiles)
        integer(int32) :: bytes(tile_rows, 0:block_weights - 1)
        real(real32) :: levels(tile_rows, 0:block_weights - 1)
        real(real32) :: scale(tile_rows), offset(tile_rows), step_odd(tile_rows)
        integer :: t, b, g, i, r, nb, n_blocks, row, blocks_per_group, column
        integer(int64) :: base

        nb = block_bytes(fmt)
        n_blocks = size(w, 1) / block_weights
        blocks_per_group = group_size / block_weights
        bytes = 0
        !$omp parallel do schedule(static) default(shared) if (size(tiles) >= parallel_min_bytes) &
        !$omp private(t, b, g, i, r, row, column, base, bytes, levels, scale, offset, step_odd)
        do t = 1, size(tiles, 3)
            do g = 1, size(scales, 2)
                ! Parameters once per group, not per block.
                scale = half_to_real(scales(:, g, t))
                offset = half_to_real(offsets(:, g, t))
                step_odd = odd_step(fmt, scale)
                do b = (g - 1) * blocks_per_group, min(g * blocks_per_group, n_blocks) - 1
                    base = int(b, int64) * nb
                    bytes(:, 0:nb - 1) = iand(int(tiles(:, base + 1:base + nb, t), int32), 255)
                    call decode_block(fmt, bytes, levels)
                    ! Row by row, so each row's 16 weights are written as one contiguous run.
                    do r = 1, tile_rows
                        row = (t - 1) * tile_rows + r
                        column = b * block_weights
                        do i = 0, block_weights - 2, 2
                            w(column + i + 1, row) = offset(r) + scale(r) * levels(r, i)
                            w(column + i + 2, row) = offset(r) + step_odd(r) * levels(r, i + 1)
                        end do
                    end do
                end do
            end do
        end do
        !$omp end parallel do
    end subroutine dequantize_tiles

end module q35_dequantize
