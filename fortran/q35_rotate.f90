! The input rotation of FORMAT.md sec. 9: per group of n columns (n a power of two), the
! orthogonal R = D H / sqrt(n) with D the columns' signs and H Sylvester's Hadamard matrix.
! A rotated tensor stores W' = W R; its inputs are fed as R^T x = H (D x) / sqrt(n) ("forward",
! also what turns W's rows into W''s) and its rows are read back as R w' = D (H w') / sqrt(n)
! ("inverse"). H is applied by the fast Walsh-Hadamard transform: O(n log n) operations instead
! of the n^2 multiply-adds of a matrix product.
module q35_rotate
    use iso_fortran_env, only: real32
    implicit none
    private
    public :: rotate_columns

    integer :: row, col  ! of h16: an entry is -1 where row AND col has odd parity
    ! Sylvester's H16, a variable: as a named constant, GCC 12 turned the products with its +-1
    ! entries into scalar additions and lane shuffles (4x slower, measured).
    real(real32) :: h16(16, 16) = reshape([((real(1 - 2 * poppar(iand(row, col)), real32), &
                                            row = 0, 15), col = 0, 15)], [16, 16])

contains

    !> x(:, j) <- R^T x(:, j) (forward) or R x(:, j) (inverse) for every column j: groups of
    !> `group` entries from the first, the last one shorter when group does not divide size(x, 1)
    !> (every group length a power of two; the caller checks). Columns (tokens) are shared among
    !> threads when there are several; one column (the decode step) stays on the calling thread.
    subroutine rotate_columns(x, signs, group, inverse)
        real(real32), intent(inout) :: x(:, :)  ! (k, m)
        real(real32), intent(in) :: signs(:)  ! (k), each +1 or -1
        integer, intent(in) :: group
        logical, intent(in) :: inverse
        real(real32) :: pre(size(x, 1)), post(size(x, 1))
        integer :: j, first, last
        ! forward: H (D x) / sqrt(n), D and the norm applied on the way in; inverse:
        ! D (H x) / sqrt(n), both on the way out
        do first = 1, size(x, 1), group
            last = min(first + group - 1, size(x, 1))
            pre(first:last) = 1.0_real32 / sqrt(real(last - first + 1, real32))
        end do
        if (inverse) then
            post = signs * pre
            pre = 1.0_real32
        else
            pre = signs * pre
        end if
        !$omp parallel do schedule(static) private(first, last) if (size(x, 2) >= 8)
        do j = 1, size(x, 2)
            do first = 1, size(x, 1), group
                last = min(first + group - 1, size(x, 1))
                call walsh_hadamard(x(first:last, j), pre(first:last))
                if (inverse) x(first:last, j) = x(first:last, j) * post(first:last)
            end do
        end do
        !$omp end parallel do
    end subroutine rotate_columns

    !> v <- H (weights * v), H Sylvester's Hadamard matrix of order size(v) (a power of two).
    !> The first four butterfly passes (pairs 1, 2, 4, 8 apart) stay inside chunks of 16: they
    !> run as one product with H16 per chunk, a 16-lane multiply-add per entry, where butterfly
    !> loops of 1 to 8 iterations did not vectorise (0.15 -> 0.8 Gentries/s for 128-groups, one
    !> core, measured).
    subroutine walsh_hadamard(v, weights)
        real(real32), intent(inout), contiguous :: v(:)
        real(real32), intent(in), contiguous :: weights(:)
        real(real32) :: y(16), vi, a, b
        integer :: h, i, c, r
        if (size(v) >= 16) then
            do c = 1, size(v), 16
                y = 0.0_real32
                do i = 1, 16
                    vi = v(c + i - 1) * weights(c + i - 1)
                    !$omp simd
                    do r = 1, 16
                        y(r) = y(r) + h16(r, i) * vi
                    end do
                end do
                v(c:c + 15) = y
            end do
            h = 16
        else
            v = v * weights
            h = 1
        end if
        do while (h < size(v))
            do i = 1, size(v), 2 * h
                !$omp simd private(a, b)
                do r = i, i + h - 1
                    a = v(r)
                    b = v(r + h)
                    v(r) = a + b
                    v(r + h) = a - b
                end do
            end do
            h = 2 * h
        end do
    end subroutine walsh_hadamard

end module q35_rotate
