! Dynamic asymmetric group quantization (FORMAT.md sec. 4, 6): float32 rows -> packed bytes and
! float16-exact parameters. Bit-identical to python/q35f/reference.py by construction: every
! float operation is the same IEEE float32 operation in the same order (built without FMA
! contraction, see meson.build).
module q35_quantize
    use iso_fortran_env, only: int8, int32, real32
    use q35_half, only: f16_round_down, f16_round_up, f16_next_up
    use q35_blocks, only: block_weights, block_bytes, top_level, odd_top_level, encode_block, &
                          format_q35
    implicit none
    private
    public :: group_params, odd_step, grid_level, quantize_row, quantize_row_params

contains

    !> float16 offset and scale whose grid offset + scale*[0, top] covers [lo, hi].
    pure subroutine group_params(lo, hi, top, offset, scale)
        real(real32), intent(in) :: lo, hi
        integer, intent(in) :: top
        real(real32), intent(out) :: offset, scale
        offset = f16_round_down(lo)
        scale = f16_round_up((hi - offset) / real(top, real32))
        do while (offset + real(top, real32) * scale < hi)
            scale = f16_next_up(scale)
        end do
    end subroutine group_params

    !> Step of the odd weights' grid: (15*scale)/7 for q35, the scale itself otherwise.
    pure elemental real(real32) function odd_step(fmt, scale)
        integer, intent(in) :: fmt
        real(real32), intent(in) :: scale
        if (fmt == format_q35) then
            odd_step = (15.0_real32 * scale) / 7.0_real32
        else
            odd_step = scale
        end if
    end function odd_step

    !> Round to the nearest level of offset + step*[0, top]: floor(t + 1/2), clamped on both
    !> sides (weights below the offset occur with clip-searched or given parameters).
    pure elemental integer(int32) function grid_level(w, offset, step, top)
        real(real32), intent(in) :: w, offset, step
        integer, intent(in) :: top
        real(real32) :: t
        if (step == 0.0_real32) then
            grid_level = 0
            return
        end if
        t = (w - offset) / step + 0.5_real32
        ! aint differs from floor only on (-1, 0), which clamps to 0 either way.
        grid_level = int(min(max(aint(t), 0.0_real32), real(top, real32)), int32)
    end function grid_level

    !> Quantize one row of k weights into packed bytes and per-group float16-exact parameters.
    pure subroutine quantize_row(fmt, k, group_size, w, packed, scales, offsets)
        integer, intent(in) :: fmt, k, group_size
        real(real32), intent(in) :: w(k)
        integer(int8), intent(out) :: packed(:)
        real(real32), intent(out) :: scales(:), offsets(:)
        integer :: g, first, last
        do g = 1, size(scales)
            first = (g - 1) * group_size + 1
            last = min(g * group_size, k)
            call group_params(minval(w(first:last)), maxval(w(first:last)), top_level(fmt), &
                              offsets(g), scales(g))
        end do
        call quantize_row_params(fmt, k, group_size, w, scales, offsets, packed)
    end subroutine quantize_row

    !> Quantize one row with per-group float16-exact parameters scales/offsets (given).
    pure subroutine quantize_row_params(fmt, k, group_size, w, scales, offsets, packed)
        integer, intent(in) :: fmt, k, group_size
        real(real32), intent(in) :: w(k), scales(:), offsets(:)
        integer(int8), intent(out) :: packed(:)
        integer(int32) :: levels(0:block_weights - 1)
        integer :: g, i, b, n_blocks, bytes
        n_blocks = (k + block_weights - 1) / block_weights
        bytes = block_bytes(fmt)
        do b = 0, n_blocks - 1
            levels = 0
            do i = 0, min(block_weights, k - b * block_weights) - 1
                g = (b * block_weights + i) / group_size + 1
                if (mod(i, 2) == 0) then
                    levels(i) = grid_level(w(b * block_weights + i + 1), offsets(g), &
                                              scales(g), top_level(fmt))
                else
                    levels(i) = grid_level(w(b * block_weights + i + 1), offsets(g), &
                                              odd_step(fmt, scales(g)), odd_top_level(fmt))
                end if
            end do
            call encode_block(fmt, levels, k - b * block_weights, &
                              packed(b * bytes + 1:(b + 1) * bytes))
        end do
    end subroutine quantize_row_params

end module q35_quantize
