! Activations for the q35 integer kernels (FORMAT.md sec. 7): per token and weight group, x is
! quantized to int8 values xq = clamp(floor(x * (127 / amax) + 1/2), -127, 127) with the float
! scale amax / 127, then stored as int16 in the chunk order of q35_chunks and premultiplied by
! 7 (even positions) and 15 (odd positions), so one integer dot product per group gives
!     7 * sum(l1 * xq) + 15 * sum(l2 * xq) = (7 / scale) * (scale * sum(l1 x) + step3 * sum(l2 x))
! The group sums of the float x (for the offset term) are kept in float32. Built without FMA
! contraction: xq is bit-identical to the numpy reference (python/q35f/reference.py).
module q35_activations
    use iso_fortran_env, only: int16, int32, real32
    use q35_chunks, only: chunk_weights, chunk_span
    implicit none
    private
    public :: quantize_activations, permute_activations

contains

    !> One token x(k_pad) (zero-padded) -> xa (chunk order, 7/15 premultiplied int8 values),
    !> per-group scales amax/127 and float sums.
    pure subroutine quantize_activations(group_size, x, xa, xscale, xsum)
        integer, intent(in) :: group_size
        real(real32), intent(in) :: x(:)
        integer(int16), intent(out) :: xa(:)
        real(real32), intent(out) :: xscale(:), xsum(:)
        integer(int16) :: xq(size(x))
        real(real32) :: amax, inverse
        integer :: g, first, last
        do g = 1, size(xscale)
            first = (g - 1) * group_size + 1
            last = min(g * group_size, size(x))
            amax = maxval(abs(x(first:last)))
            xsum(g) = sum(x(first:last))
            if (amax == 0.0_real32) then
                xq(first:last) = 0
                xscale(g) = 0.0_real32
            else
                inverse = 127.0_real32 / amax
                xq(first:last) = int(min(max(floor(x(first:last) * inverse + 0.5_real32), -127), &
                                         127), int16)
                xscale(g) = amax / 127.0_real32
            end if
        end do
        call permute_int16(group_size, xq, xa)
    end subroutine quantize_activations

    !> Chunk order of a float token (the float-activation path): 7 x_even, 15 x_odd.
    pure subroutine permute_activations(group_size, x, xf, xsum)
        integer, intent(in) :: group_size
        real(real32), intent(in) :: x(:)
        real(real32), intent(out) :: xf(:), xsum(:)
        integer :: g, c, first, pairs, p
        do g = 0, size(xsum) - 1
            xsum(g + 1) = sum(x(g * group_size + 1:min((g + 1) * group_size, size(x))))
            do c = 0, (group_size + chunk_weights - 1) / chunk_weights - 1
                call chunk_span(size(x), group_size, g, c, first, pairs)
                if (pairs <= 0) exit
                do p = 1, pairs
                    xf(first + p) = 7.0_real32 * x(first + 2 * p - 1)
                    xf(first + pairs + p) = 15.0_real32 * x(first + 2 * p)
                end do
            end do
        end do
    end subroutine permute_activations

    pure subroutine permute_int16(group_size, xq, xa)
        integer, intent(in) :: group_size
        integer(int16), intent(in) :: xq(:)
        integer(int16), intent(out) :: xa(:)
        integer :: g, c, first, pairs, p
        do g = 0, (size(xq) + group_size - 1) / group_size - 1
            do c = 0, (group_size + chunk_weights - 1) / chunk_weights - 1
                call chunk_span(size(xq), group_size, g, c, first, pairs)
                if (pairs <= 0) exit
                do p = 1, pairs
                    xa(first + p) = 7_int16 * xq(first + 2 * p - 1)
                    xa(first + pairs + p) = 15_int16 * xq(first + 2 * p)
                end do
            end do
        end do
    end subroutine permute_int16

end module q35_activations
