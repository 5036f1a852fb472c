! Integer prompt GEMM (many activation rows): y = x @ W.T with x quantized to int8 per group and
! W's levels unpacked once per panel of rows to unsigned bytes, multiplied in integers.
!
! Per (row r, token t, group g), with xq = the int8 activations, sx their scale, X = sum(xq):
!     S = sum over the group of u * xq                      (int32, exact)
!     y(r, t) += sx * (a * S) + o * (sx * X)
! where u is the weight's unsigned integer level and a, o the group's multiplier and offset:
!     q35:  u = 7 * l1 (even), 15 * l2 (odd), a = scale / 7   (15 * l2 * scale / 7 = step3 * l2)
!     int8/int4/int3: u = l, a = scale
! so even and odd weights of a q35 group share one reduction (both u <= 105). The reduction is
! written in GCC's dot-product pattern (u8 * s8 -> int32 summed), which gfortran 12 compiles to
! AVX-512 VNNI vpdpbusd at -O3 -march=native; 4 rows x 4 tokens share each loaded vector.
! Compiled with FMA contraction (like q35_matmul): the float result is accurate, not bit-exact;
! the integer parts (activation quantization, levels, S) are exact and tested bit for bit.
module q35_gemm
    use, intrinsic :: ieee_arithmetic, only: ieee_value, ieee_quiet_nan
    use iso_fortran_env, only: int8, int16, int32, int64, real32
    use q35_half, only: half_to_real
    use q35_blocks, only: tile_rows, block_weights, block_bytes, format_q35, format_int8, &
                          format_int4, format_int3, int3_low, int3_high, int3_shift, &
                          top_level, odd_top_level
    implicit none
    private
    public :: quantize_activations, unpack_levels, gemm_int8, group_sums, max_level, &
              max_group_weights

    integer, parameter :: row_block = 4, token_block = 4
    ! Rows unpacked at once (a panel: 4 tiles), and the activation bytes a panel's loop over
    ! tokens keeps close (a chunk of tokens, L2-sized together with the panel).
    integer, parameter :: panel_tiles = 4, chunk_bytes = 256 * 1024
    integer, parameter :: parallel_min_macs = 16 * 1024 * 1024
    integer, parameter :: full_group = 128  ! the group length with its own unrolled loop

contains

    !> Largest unsigned integer level u of a format: the grid's top level; for q35 the two
    !> grids' levels are scaled to a common step, 7 * l1 and 15 * l2, so 7 * 15 = 105.
    pure integer function max_level(fmt)
        integer, intent(in) :: fmt
        if (fmt == format_q35) then
            max_level = top_level(fmt) * odd_top_level(fmt)
        else
            max_level = top_level(fmt)
        end if
    end function max_level

    !> Largest group for which |S| <= group * max_level * 127 fits in int32 (the bound the
    !> reduction relies on; q35: 161,041 weights, int8: 66,311).
    pure integer function max_group_weights(fmt)
        integer, intent(in) :: fmt
        max_group_weights = int(int(huge(1_int32), int64) / (int(max_level(fmt), int64) * 127))
    end function max_group_weights

    !> x(k_pad, m) -> xq int8 per (group, token): scale = max|x| / 127, xq = floor(x / scale +
    !> 1/2) clamped to [-127, 127]; scale 0 (and xq 0) where it underflows (max|x| < 127 * the
    !> smallest subnormal) or the group is zero. x_sum = sum of the group's xq. A group holding
    !> a NaN or an infinity gets scale NaN and xq 0: the caller must not use the integer path.
    subroutine quantize_activations(group_size, x, xq, x_scale, x_sum)
        integer, intent(in) :: group_size
        real(real32), intent(in), contiguous :: x(:, :)
        integer(int8), intent(out), contiguous :: xq(:, :)
        real(real32), intent(out), contiguous :: x_scale(:, :)  ! (n_groups, m)
        integer(int32), intent(out), contiguous :: x_sum(:, :)
        real(real32) :: amax, scale
        integer(int32) :: q, total
        integer :: t, g, i, first, last
        logical :: finite
        !$omp parallel do schedule(static) &
        !$omp private(g, i, first, last, amax, scale, q, total, finite) &
        !$omp if (size(x) >= 1024 * 1024)
        do t = 1, size(x, 2)
            do g = 1, size(x_scale, 1)
                first = (g - 1) * group_size + 1
                last = min(g * group_size, size(x, 1))
                amax = 0.0_real32
                finite = .true.
                do i = first, last
                    amax = max(amax, abs(x(i, t)))
                    finite = finite .and. abs(x(i, t)) <= huge(amax)
                end do
                scale = amax / 127.0_real32
                if (.not. finite) scale = ieee_value(scale, ieee_quiet_nan)
                total = 0
                if (scale == 0.0_real32 .or. .not. finite) then
                    xq(first:last, t) = 0_int8
                else
                    do i = first, last
                        q = int(floor(x(i, t) / scale + 0.5_real32), int32)
                        q = max(-127, min(127, q))
                        xq(i, t) = int(q, int8)
                        total = total + q
                    end do
                end if
                x_scale(g, t) = scale
                x_sum(g, t) = total
            end do
        end do
        !$omp end parallel do
    end subroutine quantize_activations

    !> Tiles (tile_rows, row_bytes, n) -> u(k_pad, tile_rows * n): each row's integer levels
    !> (see the module comment), contiguous along k, the zero padding of K included.
    pure subroutine unpack_levels(fmt, tiles, u)
        integer, intent(in) :: fmt
        integer(int8), intent(in) :: tiles(:, :, :)
        integer(int8), intent(out) :: u(:, :)
        integer(int32) :: bytes(tile_rows, 0:block_weights - 1)
        integer(int32) :: lev(tile_rows, 0:block_weights - 1)
        integer(int32) :: odd(tile_rows)
        integer :: t, b, j, r, nb, column
        nb = block_bytes(fmt)
        bytes = 0
        do t = 1, size(tiles, 3)
            do b = 0, size(u, 1) / block_weights - 1
                bytes(:, 0:nb - 1) = iand(int(tiles(:, b * nb + 1:b * nb + nb, t), int32), 255)
                select case (fmt)
                case (format_q35)  ! planar layout (FORMAT.md sec. 7)
                    odd = ior(ior(bytes(:, 4), shiftl(bytes(:, 5), 8)), shiftl(bytes(:, 6), 16))
                    do j = 0, 3
                        lev(:, 2 * j) = 7 * iand(bytes(:, j), 15)
                        lev(:, 2 * j + 8) = 7 * shiftr(bytes(:, j), 4)
                    end do
                    do j = 0, 7
                        lev(:, 2 * j + 1) = 15 * iand(shiftr(odd, 3 * j), 7)
                    end do
                case (format_int8)
                    lev = bytes
                case (format_int4)
                    do j = 0, 7
                        lev(:, 2 * j) = iand(bytes(:, j), 15)
                        lev(:, 2 * j + 1) = shiftr(bytes(:, j), 4)
                    end do
                case default
                    do j = 0, 15
                        lev(:, j) = iand(shiftr(ior(bytes(:, int3_low(j)), &
                                    shiftl(bytes(:, int3_high(j)), 8)), int3_shift(j)), 7)
                    end do
                end select
                column = b * block_weights
                do r = 1, tile_rows
                    ! levels <= 255: the int8 with the same bits (the kernel reads them unsigned)
                    u(column + 1:column + block_weights, (t - 1) * tile_rows + r) = &
                        int(lev(r, :) - 256 * (lev(r, :) / 128), int8)
                end do
            end do
        end do
    end subroutine unpack_levels

    !> f(a, b) += sum over groups g of sx * (a * S) + o * xo for 4 rows (u, a, o) and 4 tokens
    !> (xq, x_scale, xo), S(a, b) = sum over the group of u(:, a) * xq(:, b) with u read unsigned:
    !> the 16 reductions in one loop (the VNNI dot-product pattern), then 16 scalar updates.
    !> length: the weights of a row (k_pad); ld, lda, ldg: the leading dimensions of u and xq,
    !> of a and o, of x_scale and xo.
    pure subroutine block_4x4(group_size, n_groups, length, ld, u, xq, a, o, lda, x_scale, xo, &
                             ldg, f)
        integer, intent(in) :: group_size, n_groups, length, ld, lda, ldg
        integer(int8), intent(in) :: u(ld, row_block), xq(ld, token_block)
        real(real32), intent(in) :: a(lda, n_groups), o(lda, n_groups)
        real(real32), intent(in) :: x_scale(ldg, token_block), xo(ldg, token_block)
        real(real32), intent(inout) :: f(row_block, token_block)
        integer(int32) :: s11, s12, s13, s14, s21, s22, s23, s24
        integer(int32) :: s31, s32, s33, s34, s41, s42, s43, s44
        integer(int32) :: u1, u2, u3, u4, x1, x2, x3, x4
        integer :: i, g, first, n
        do g = 1, n_groups
            first = (g - 1) * group_size + 1
            n = min(group_size, length - first + 1)
            s11 = 0; s12 = 0; s13 = 0; s14 = 0; s21 = 0; s22 = 0; s23 = 0; s24 = 0
            s31 = 0; s32 = 0; s33 = 0; s34 = 0; s41 = 0; s42 = 0; s43 = 0; s44 = 0
            do i = first, first + n - 1
                u1 = iand(int(u(i, 1), int32), 255)
                u2 = iand(int(u(i, 2), int32), 255)
                u3 = iand(int(u(i, 3), int32), 255)
                u4 = iand(int(u(i, 4), int32), 255)
                x1 = int(xq(i, 1), int32)
                x2 = int(xq(i, 2), int32)
                x3 = int(xq(i, 3), int32)
                x4 = int(xq(i, 4), int32)
                s11 = s11 + u1 * x1; s12 = s12 + u1 * x2; s13 = s13 + u1 * x3; s14 = s14 + u1 * x4
                s21 = s21 + u2 * x1; s22 = s22 + u2 * x2; s23 = s23 + u2 * x3; s24 = s24 + u2 * x4
                s31 = s31 + u3 * x1; s32 = s32 + u3 * x2; s33 = s33 + u3 * x3; s34 = s34 + u3 * x4
                s41 = s41 + u4 * x1; s42 = s42 + u4 * x2; s43 = s43 + u4 * x3; s44 = s44 + u4 * x4
            end do
            f(1, 1) = f(1, 1) + x_scale(g, 1) * (a(1, g) * real(s11, real32)) &
                + o(1, g) * xo(g, 1)
            f(1, 2) = f(1, 2) + x_scale(g, 2) * (a(1, g) * real(s12, real32)) &
                + o(1, g) * xo(g, 2)
            f(1, 3) = f(1, 3) + x_scale(g, 3) * (a(1, g) * real(s13, real32)) &
                + o(1, g) * xo(g, 3)
            f(1, 4) = f(1, 4) + x_scale(g, 4) * (a(1, g) * real(s14, real32)) &
                + o(1, g) * xo(g, 4)
            f(2, 1) = f(2, 1) + x_scale(g, 1) * (a(2, g) * real(s21, real32)) &
                + o(2, g) * xo(g, 1)
            f(2, 2) = f(2, 2) + x_scale(g, 2) * (a(2, g) * real(s22, real32)) &
                + o(2, g) * xo(g, 2)
            f(2, 3) = f(2, 3) + x_scale(g, 3) * (a(2, g) * real(s23, real32)) &
                + o(2, g) * xo(g, 3)
            f(2, 4) = f(2, 4) + x_scale(g, 4) * (a(2, g) * real(s24, real32)) &
                + o(2, g) * xo(g, 4)
            f(3, 1) = f(3, 1) + x_scale(g, 1) * (a(3, g) * real(s31, real32)) &
                + o(3, g) * xo(g, 1)
            f(3, 2) = f(3, 2) + x_scale(g, 2) * (a(3, g) * real(s32, real32)) &
                + o(3, g) * xo(g, 2)
            f(3, 3) = f(3, 3) + x_scale(g, 3) * (a(3, g) * real(s33, real32)) &
                + o(3, g) * xo(g, 3)
            f(3, 4) = f(3, 4) + x_scale(g, 4) * (a(3, g) * real(s34, real32)) &
                + o(3, g) * xo(g, 4)
            f(4, 1) = f(4, 1) + x_scale(g, 1) * (a(4, g) * real(s41, real32)) &
                + o(4, g) * xo(g, 1)
            f(4, 2) = f(4, 2) + x_scale(g, 2) * (a(4, g) * real(s42, real32)) &
                + o(4, g) * xo(g, 2)
            f(4, 3) = f(4, 3) + x_scale(g, 3) * (a(4, g) * real(s43, real32)) &
                + o(4, g) * xo(g, 3)
            f(4, 4) = f(4, 4) + x_scale(g, 4) * (a(4, g) * real(s44, real32)) &
                + o(4, g) * xo(g, 4)
        end do
    end subroutine block_4x4

    !> block_4x4 for groups of exactly full_group weights: the same loop with a constant trip
    !> count, which gfortran unrolls whole (25-30 % faster than the variable one, measured; the
    !> two loops in one procedure made the constant one slower too).
    pure subroutine block_4x4_full(n_groups, ld, u, xq, a, o, lda, x_scale, xo, ldg, f)
        integer, intent(in) :: n_groups, ld, lda, ldg
        integer(int8), intent(in) :: u(ld, row_block), xq(ld, token_block)
        real(real32), intent(in) :: a(lda, n_groups), o(lda, n_groups)
        real(real32), intent(in) :: x_scale(ldg, token_block), xo(ldg, token_block)
        real(real32), intent(inout) :: f(row_block, token_block)
        integer(int32) :: s11, s12, s13, s14, s21, s22, s23, s24
        integer(int32) :: s31, s32, s33, s34, s41, s42, s43, s44
        integer(int32) :: u1, u2, u3, u4, x1, x2, x3, x4
        integer :: i, g, first
        do g = 1, n_groups
            first = (g - 1) * full_group + 1
            s11 = 0; s12 = 0; s13 = 0; s14 = 0; s21 = 0; s22 = 0; s23 = 0; s24 = 0
            s31 = 0; s32 = 0; s33 = 0; s34 = 0; s41 = 0; s42 = 0; s43 = 0; s44 = 0
            do i = first, first + full_group - 1
                u1 = iand(int(u(i, 1), int32), 255)
                u2 = iand(int(u(i, 2), int32), 255)
                u3 = iand(int(u(i, 3), int32), 255)
                u4 = iand(int(u(i, 4), int32), 255)
                x1 = int(xq(i, 1), int32)
                x2 = int(xq(i, 2), int32)
                x3 = int(xq(i, 3), int32)
                x4 = int(xq(i, 4), int32)
                s11 = s11 + u1 * x1; s12 = s12 + u1 * x2; s13 = s13 + u1 * x3; s14 = s14 + u1 * x4
                s21 = s21 + u2 * x1; s22 = s22 + u2 * x2; s23 = s23 + u2 * x3; s24 = s24 + u2 * x4
                s31 = s31 + u3 * x1; s32 = s32 + u3 * x2; s33 = s33 + u3 * x3; s34 = s34 + u3 * x4
                s41 = s41 + u4 * x1; s42 = s42 + u4 * x2; s43 = s43 + u4 * x3; s44 = s44 + u4 * x4
            end do
            f(1, 1) = f(1, 1) + x_scale(g, 1) * (a(1, g) * real(s11, real32)) &
                + o(1, g) * xo(g, 1)
            f(1, 2) = f(1, 2) + x_scale(g, 2) * (a(1, g) * real(s12, real32)) &
                + o(1, g) * xo(g, 2)
            f(1, 3) = f(1, 3) + x_scale(g, 3) * (a(1, g) * real(s13, real32)) &
                + o(1, g) * xo(g, 3)
            f(1, 4) = f(1, 4) + x_scale(g, 4) * (a(1, g) * real(s14, real32)) &
                + o(1, g) * xo(g, 4)
            f(2, 1) = f(2, 1) + x_scale(g, 1) * (a(2, g) * real(s21, real32)) &
                + o(2, g) * xo(g, 1)
            f(2, 2) = f(2, 2) + x_scale(g, 2) * (a(2, g) * real(s22, real32)) &
                + o(2, g) * xo(g, 2)
            f(2, 3) = f(2, 3) + x_scale(g, 3) * (a(2, g) * real(s23, real32)) &
                + o(2, g) * xo(g, 3)
            f(2, 4) = f(2, 4) + x_scale(g, 4) * (a(2, g) * real(s24, real32)) &
                + o(2, g) * xo(g, 4)
            f(3, 1) = f(3, 1) + x_scale(g, 1) * (a(3, g) * real(s31, real32)) &
                + o(3, g) * xo(g, 1)
            f(3, 2) = f(3, 2) + x_scale(g, 2) * (a(3, g) * real(s32, real32)) &
                + o(3, g) * xo(g, 2)
            f(3, 3) = f(3, 3) + x_scale(g, 3) * (a(3, g) * real(s33, real32)) &
                + o(3, g) * xo(g, 3)
            f(3, 4) = f(3, 4) + x_scale(g, 4) * (a(3, g) * real(s34, real32)) &
                + o(3, g) * xo(g, 4)
            f(4, 1) = f(4, 1) + x_scale(g, 1) * (a(4, g) * real(s41, real32)) &
                + o(4, g) * xo(g, 1)
            f(4, 2) = f(4, 2) + x_scale(g, 2) * (a(4, g) * real(s42, real32)) &
                + o(4, g) * xo(g, 2)
            f(4, 3) = f(4, 3) + x_scale(g, 3) * (a(4, g) * real(s43, real32)) &
                + o(4, g) * xo(g, 3)
            f(4, 4) = f(4, 4) + x_scale(g, 4) * (a(4, g) * real(s44, real32)) &
                + o(4, g) * xo(g, 4)
        end do
    end subroutine block_4x4_full

    !> One row of u against one token (the tail of the token loop).
    pure integer(int32) function dot_1(n, u, xq) result(s)
        integer, intent(in) :: n
        integer(int8), intent(in) :: u(n), xq(n)
        integer :: i
        s = 0
        do i = 1, n
            s = s + iand(int(u(i), int32), 255) * int(xq(i), int32)
        end do
    end function dot_1

    !> The integer sums S(g, t, r) of the GEMM, from its own reductions (for the tests):
    !> block_4x4 one group at a time with a = 1, o = 0, sx = 1 returns real(S), exact while
    !> |S| < 2**24, i.e. for groups up to 2**24 / (max_level * 127) weights.
    subroutine group_sums(fmt, group_size, row_bytes, n_groups, n_tiles, k_pad, m, tiles, xq, s)
        integer, intent(in) :: fmt, group_size, row_bytes, n_groups, n_tiles, k_pad, m
        integer(int8), intent(in) :: tiles(tile_rows, row_bytes, n_tiles)
        integer(int8), intent(in) :: xq(k_pad, m)  ! m a multiple of token_block
        integer(int32), intent(out) :: s(n_groups, m, tile_rows * n_tiles)
        integer(int8), allocatable :: u(:, :)
        real(real32) :: f(row_block, token_block), ones(row_block, 1), zeros(row_block, 1)
        real(real32) :: x_ones(1, token_block), x_zeros(1, token_block)
        integer :: r, t, g, first
        if (int(group_size, int64) * max_level(fmt) * 127 >= 2_int64**24) &
            error stop "group_sums: group too large for exact float sums"
        allocate(u(k_pad, tile_rows * n_tiles))
        ones = 1.0_real32
        zeros = 0.0_real32
        x_ones = 1.0_real32
        x_zeros = 0.0_real32
        call unpack_levels(fmt, tiles, u)
        do r = 1, size(u, 2), row_block
            do t = 1, m - token_block + 1, token_block
                do g = 1, n_groups
                    first = (g - 1) * group_size + 1
                    f = 0.0_real32
                    call block_4x4(group_size, 1, min(group_size, k_pad - first + 1), k_pad, &
                                   u(first, r), xq(first, t), ones, zeros, row_block, x_ones, &
                                   x_zeros, 1, f)
                    s(g, t:t + token_block - 1, r:r + row_block - 1) = transpose(nint(f))
                end do
            end do
        end do
    end subroutine group_sums

    !> y(n_pad, m) = x @ W.T from the quantized activations (quantize_activations) and W's tiles.
    subroutine gemm_int8(fmt, group_size, row_bytes, n_groups, n_tiles, k_pad, m, tiles, scales, &
                         offsets, xq, x_scale, x_sum, y)
        integer, intent(in) :: fmt, group_size, row_bytes, n_groups, n_tiles, k_pad, m
        integer(int8), intent(in) :: tiles(tile_rows, row_bytes, n_tiles)
        integer(int16), intent(in) :: scales(tile_rows, n_groups, n_tiles)
        integer(int16), intent(in) :: offsets(tile_rows, n_groups, n_tiles)
        integer(int8), intent(in) :: xq(k_pad, m)
        real(real32), intent(in) :: x_scale(n_groups, m)
        integer(int32), intent(in) :: x_sum(n_groups, m)
        real(real32), intent(out) :: y(tile_rows * n_tiles, m)
        integer(int8), allocatable :: u(:, :)
        real(real32), allocatable :: a(:, :), o(:, :), xo(:, :)
        real(real32) :: divisor
        integer :: panel, first_tile, count, chunk, t0, t1, r, g, n_panels, rows

        if (group_size > max_group_weights(fmt)) &
            error stop "gemm_int8: group too large for int32 sums (max_group_weights)"
        divisor = merge(7.0_real32, 1.0_real32, fmt == format_q35)
        ! Tokens per chunk: a multiple of token_block whose activations fill chunk_bytes.
        chunk = max(token_block, (chunk_bytes / k_pad) / token_block * token_block)
        n_panels = (n_tiles + panel_tiles - 1) / panel_tiles
        rows = tile_rows * panel_tiles
        allocate(xo(n_groups, m))
        xo = x_scale * real(x_sum, real32)  ! sx * X: the offset term's activation factor

        !$omp parallel default(shared) private(u, a, o, panel, first_tile, count, t0, t1, r, g) &
        !$omp if (int(tile_rows, int64) * k_pad * n_tiles * m >= parallel_min_macs)
        allocate(u(k_pad, rows), a(rows, n_groups), o(rows, n_groups))
        !$omp do schedule(dynamic)
        do panel = 1, n_panels
            first_tile = (panel - 1) * panel_tiles + 1
            count = min(panel_tiles, n_tiles - first_tile + 1)
            call unpack_levels(fmt, tiles(:, :, first_tile:first_tile + count - 1), &
                               u(:, 1:tile_rows * count))
            do r = 1, count
                do g = 1, n_groups
                    a((r - 1) * tile_rows + 1:r * tile_rows, g) = &
                        half_to_real(scales(:, g, first_tile + r - 1)) / divisor
                    o((r - 1) * tile_rows + 1:r * tile_rows, g) = &
                        half_to_real(offsets(:, g, first_tile + r - 1))
                end do
            end do
            do t0 = 1, m, chunk
                t1 = min(m, t0 + chunk - 1)
                do r = 1, tile_rows * count, row_block
                    call rows_times_tokens(group_size, n_groups, k_pad, t1 - t0 + 1, u(1, r), &
                                           a(r, 1), o(r, 1), rows, xq(1, t0), x_scale(1, t0), &
                                           xo(1, t0), size(y, 1), &
                                           y((first_tile - 1) * tile_rows + r, t0))
                end do
            end do
        end do
        !$omp end do
        deallocate(u, a, o)
        !$omp end parallel
    end subroutine gemm_int8

    !> y(1:4, t) = 4 rows of W times every token t (explicit shapes: leading dimensions given).
    subroutine rows_times_tokens(group_size, n_groups, k_pad, n_tokens, u, a, o, lda, xq, &
                                 x_scale, xo, ldy, y)
        integer, intent(in) :: group_size, n_groups, k_pad, n_tokens, lda, ldy
        integer(int8), intent(in) :: u(k_pad, row_block), xq(k_pad, n_tokens)
        real(real32), intent(in) :: a(lda, n_groups), o(lda, n_groups)
        real(real32), intent(in) :: x_scale(n_groups, n_tokens), xo(n_groups, n_tokens)
        real(real32), intent(inout) :: y(ldy, n_tokens)
        real(real32) :: f(row_block, token_block), f1(row_block)
        integer :: t, g, j, first, n, last_full, n_full
        last_full = n_tokens - mod(n_tokens, token_block)
        n_full = 0
        if (group_size == full_group) n_full = k_pad / full_group
        ! Groups of exactly full_group weights first, through their own loop over tokens: with
        ! the other groups' code in the same loop the constant-count loop ran 10 % slower
        ! (measured); then the other groups (any size, or the short last one) are added.
        if (n_full > 0) then
            do t = 1, last_full, token_block
                f = 0.0_real32
                call block_4x4_full(n_full, k_pad, u, xq(1, t), a, o, lda, x_scale(1, t), &
                                    xo(1, t), n_groups, f)
                y(1:row_block, t:t + token_block - 1) = f
            end do
        end if
        if (n_full < n_groups) then
            first = n_full * group_size + 1
            do t = 1, last_full, token_block
                f = 0.0_real32
                if (n_full > 0) f = y(1:row_block, t:t + token_block - 1)
                call block_4x4(group_size, n_groups - n_full, k_pad - first + 1, k_pad, &
                               u(first, 1), xq(first, t), a(1, n_full + 1), o(1, n_full + 1), &
                               lda, x_scale(n_full + 1, t), xo(n_full + 1, t), n_groups, f)
                y(1:row_block, t:t + token_block - 1) = f
            end do
        end if
        do t = last_full + 1, n_tokens  ! the last 1-3 tokens, one at a time
            f1 = 0.0_real32
            do g = 1, n_groups
                first = (g - 1) * group_size + 1
                n = min(group_size, k_pad - first + 1)
                do j = 1, row_block
                    f1(j) = f1(j) + x_scale(g, t) * (a(j, g) &
                        * real(dot_1(n, u(first:first + n - 1, j), xq(first:first + n - 1, t)), &
                               real32)) + o(j, g) * xo(g, t)
                end do
            end do
            y(1:row_block, t) = f1
        end do
    end subroutine rows_times_tokens

end module q35_gemm
