! The input rotation of FORMAT.md sec. 9: per group of n columns (n a power of two), the
! orthogonal R = D H / sqrt(n) with D the columns' signs and H Sylvester's Hadamard matrix.
! A rotated tensor stores W' = W R; its inputs are fed as R^T x = H (D x) / sqrt(n) ("forward",
! also what turns W's rows into W''s) and its rows are read back as R w' = D (H w') / sqrt(n)
! ("inverse"). H is applied by the fast Walsh-Hadamard transform: log2(n) passes of n/2
! butterflies, O(n log n) additions instead of the n^2 multiply-adds of a matrix product.
module q35_rotate
    use iso_fortran_env, only: real32
    implicit none
    private
    public :: rotate_columns, walsh_hadamard

contains

    !> x(:, j) <- R^T x(:, j) (forward) or R x(:, j) (inverse) for every column j: groups of
    !> `group` entries from the first, the last one shorter when group does not divide size(x, 1)
    !> (every group length a power of two; the caller checks).
    subroutine rotate_columns(x, signs, group, inverse)
        real(real32), intent(inout) :: x(:, :)  ! (k, m)
        real(real32), intent(in) :: signs(:)  ! (k), each +1 or -1
        integer, intent(in) :: group
        logical, intent(in) :: inverse
        integer :: j, first, n
        do j = 1, size(x, 2)
            do first = 1, size(x, 1), group
                n = min(group, size(x, 1) - first + 1)
                if (.not. inverse) x(first:first + n - 1, j) = x(first:first + n - 1, j) &
                    * signs(first:first + n - 1)
                call walsh_hadamard(x(first:first + n - 1, j))
                if (inverse) then
                    x(first:first + n - 1, j) = x(first:first + n - 1, j) &
                        * (signs(first:first + n - 1) / sqrt(real(n, real32)))
                else
                    x(first:first + n - 1, j) = x(first:first + n - 1, j) / sqrt(real(n, real32))
                end if
            end do
        end do
    end subroutine rotate_columns

    !> v <- H v, H Sylvester's Hadamard matrix of order size(v) (a power of two), unnormalised.
    pure subroutine walsh_hadamard(v)
        real(real32), intent(inout) :: v(:)
        real(real32) :: a, b
        integer :: h, i, j
        h = 1
        do while (h < size(v))
            do i = 1, size(v), 2 * h
                do j = i, i + h - 1
                    a = v(j)
                    b = v(j + h)
                    v(j) = a + b
                    v(j + h) = a - b
                end do
            end do
            h = 2 * h
        end do
    end subroutine walsh_hadamard

end module q35_rotate
