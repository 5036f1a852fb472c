! Loop forms of an integer dot product (u8 levels x s8 activations -> int32), compiled by
! probe.sh to see which x86 dot-product instructions a Fortran compiler emits for each.
! A fast q35 GEMV needs `lane_rows`: 16 rows in the 16 int32 lanes of one register, 4 bytes of
! a row per lane, times 4 broadcast activation bytes (AVX-512 VNNI vpdpbusd does exactly this,
! 64 multiply-adds per instruction, no horizontal sum). `plain_reduction` is the form GCC 12
! turns into vpdpbusd, but into one scalar, with a horizontal sum at the end of every loop.

subroutine plain_reduction(n, u, x, s)
    use iso_fortran_env, only: int8, int32
    integer, intent(in) :: n
    integer(int8), intent(in) :: u(n), x(n)
    integer(int32), intent(out) :: s
    integer :: i
    s = 0
    do i = 1, n
        s = s + iand(int(u(i), int32), 255) * int(x(i), int32)
    end do
end subroutine plain_reduction

subroutine lane_rows(n, u, x, acc)
    use iso_fortran_env, only: int8, int32
    integer, intent(in) :: n
    integer(int8), intent(in) :: u(4, 16, n), x(4, n)  ! u(byte, row, block)
    integer(int32), intent(inout) :: acc(16)
    integer :: b, r
    do b = 1, n
        do r = 1, 16
            acc(r) = acc(r) + iand(int(u(1, r, b), int32), 255) * int(x(1, b), int32) &
                + iand(int(u(2, r, b), int32), 255) * int(x(2, b), int32) &
                + iand(int(u(3, r, b), int32), 255) * int(x(3, b), int32) &
                + iand(int(u(4, r, b), int32), 255) * int(x(4, b), int32)
        end do
    end do
end subroutine lane_rows

subroutine lane_rows_int16(n, u, x, acc)
    use iso_fortran_env, only: int16, int32
    integer, intent(in) :: n
    integer(int16), intent(in) :: u(2, 16, n), x(2, n)  ! 2 int16 of a row per lane (vpdpwssd)
    integer(int32), intent(inout) :: acc(16)
    integer :: b, r
    do b = 1, n
        do r = 1, 16
            acc(r) = acc(r) + int(u(1, r, b), int32) * int(x(1, b), int32) &
                + int(u(2, r, b), int32) * int(x(2, b), int32)
        end do
    end do
end subroutine lane_rows_int16
