! y = x @ W.T for q35 weights in the chunk layout (FORMAT.md sec. 7), W never formed. Each row is
! unpacked one chunk at a time to int16 levels, which are then reused for every token of a block:
! int16 x int16 -> int32 dot products (gfortran's dot-product pattern, vpmaddwd on AVX2) against
! the quantized activations of q35_activations, and per group one float multiply-add
!     y += (scale * xscale / 7) * dot + offset * xsum.
! The float path (x kept in float32, for measurements that need activations unquantized) shares
! the unpacking and applies (scale / 7) * sum(level * 7|15 x) + offset * xsum.
! Compiled with FMA contraction: accurate to float32, not bit-identical to anything.
module q35_chunk_matmul
    use iso_fortran_env, only: int8, int16, int32, int64, real32
    use q35_half, only: half_to_real
    use q35_chunks, only: chunk_pairs, chunk_weights, chunk_span, unpack_chunk
    implicit none
    private
    public :: chunk_matmul_int, chunk_matmul_float, chunk_group_dots

    ! As in q35_matmul: small products are done by one thread.
    integer(int64), parameter :: parallel_min_bytes = 256 * 1024
    ! Tokens that share one unpacked chunk (8 tokens' int16 activations: 16 KiB per 1024 of K).
    integer, parameter :: token_block = 8

contains

    pure integer(int32) function dot_int16(n, a, b)
        integer, intent(in) :: n
        integer(int16), intent(in) :: a(n), b(n)
        integer :: i
        dot_int16 = 0
        do i = 1, n
            dot_int16 = dot_int16 + int(a(i), int32) * int(b(i), int32)
        end do
    end function dot_int16

    pure real(real32) function dot_float(n, a, b)
        integer, intent(in) :: n
        integer(int16), intent(in) :: a(n)
        real(real32), intent(in) :: b(n)
        integer :: i
        dot_float = 0.0_real32
        do i = 1, n
            dot_float = dot_float + real(a(i), real32) * b(i)
        end do
    end function dot_float

    !> y(n, m) from int16 activations xa(k_pad, m), their group scales and float sums (ng, m).
    subroutine chunk_matmul_int(group_size, chunks, scales, offsets, xa, xscale, xsum, y)
        integer, intent(in) :: group_size
        integer(int8), intent(in), contiguous :: chunks(:, :)  ! (row_bytes, n)
        integer(int16), intent(in), contiguous :: scales(:, :), offsets(:, :)  ! (ng, n)
        integer(int16), intent(in), contiguous :: xa(:, :)
        real(real32), intent(in), contiguous :: xscale(:, :), xsum(:, :)
        real(real32), intent(out), contiguous :: y(:, :)
        integer(int16) :: levels(chunk_weights)
        integer(int32) :: dots(token_block)
        real(real32) :: scale(size(scales, 1)), offset(size(scales, 1)), acc(token_block)
        integer :: r, j0, nj, j, g, c, first, pairs, k_pad, chunks_per_group
        logical :: parallel

        k_pad = size(xa, 1)
        chunks_per_group = (group_size + chunk_weights - 1) / chunk_weights
        parallel = size(chunks, kind=int64) * size(xa, 2) >= parallel_min_bytes
        ! Token blocks outside the rows: a block's activations stay in L2 while all rows pass.
        do j0 = 1, size(xa, 2), token_block
            nj = min(token_block, size(xa, 2) - j0 + 1)
            !$omp parallel do schedule(static) default(shared) if (parallel) &
            !$omp private(r, j, g, c, first, pairs, levels, dots, scale, offset, acc)
            do r = 1, size(chunks, 2)
                scale = half_to_real(scales(:, r)) / 7.0_real32
                offset = half_to_real(offsets(:, r))
                acc(1:nj) = 0.0_real32
                do g = 0, size(scales, 1) - 1
                    dots(1:nj) = 0
                    do c = 0, chunks_per_group - 1
                        call chunk_span(k_pad, group_size, g, c, first, pairs)
                        if (pairs <= 0) exit
                        if (pairs == chunk_pairs) then
                            ! Constant bounds: gfortran keeps the levels in vector registers.
                            call unpack_chunk(chunk_pairs, chunks(7 * first / 16 + 1:, r), levels)
                            do j = 1, nj
                                dots(j) = dots(j) + dot_int16(chunk_weights, levels, &
                                    xa(first + 1:first + chunk_weights, j0 + j - 1))
                            end do
                        else
                            call unpack_chunk(pairs, chunks(7 * first / 16 + 1:, r), levels)
                            do j = 1, nj
                                dots(j) = dots(j) + dot_int16(2 * pairs, levels, &
                                    xa(first + 1:first + 2 * pairs, j0 + j - 1))
                            end do
                        end if
                    end do
                    do j = 1, nj
                        acc(j) = acc(j) + scale(g + 1) * xscale(g + 1, j0 + j - 1) &
                            * real(dots(j), real32) + offset(g + 1) * xsum(g + 1, j0 + j - 1)
                    end do
                end do
                y(r, j0:j0 + nj - 1) = acc(1:nj)
            end do
            !$omp end parallel do
        end do
    end subroutine chunk_matmul_int

    !> The same product from float activations in chunk order (7 x_even, 15 x_odd), xf(k_pad, m).
    subroutine chunk_matmul_float(group_size, chunks, scales, offsets, xf, xsum, y)
        integer, intent(in) :: group_size
        integer(int8), intent(in), contiguous :: chunks(:, :)
        integer(int16), intent(in), contiguous :: scales(:, :), offsets(:, :)
        real(real32), intent(in), contiguous :: xf(:, :), xsum(:, :)
        real(real32), intent(out), contiguous :: y(:, :)
        integer(int16) :: levels(chunk_weights)
        real(real32) :: dots(size(xf, 2)), scale, offset
        integer :: r, j, g, c, first, pairs, k_pad, chunks_per_group
        integer(int64) :: work

        k_pad = size(xf, 1)
        chunks_per_group = (group_size + chunk_weights - 1) / chunk_weights
        work = size(chunks, kind=int64) * size(xf, 2)
        !$omp parallel do schedule(static) default(shared) if (work >= parallel_min_bytes) &
        !$omp private(r, j, g, c, first, pairs, levels, dots, scale, offset)
        do r = 1, size(chunks, 2)
            y(r, :) = 0.0_real32
            do g = 0, size(scales, 1) - 1
                dots = 0.0_real32
                do c = 0, chunks_per_group - 1
                    call chunk_span(k_pad, group_size, g, c, first, pairs)
                    if (pairs <= 0) exit
                    call unpack_chunk(pairs, chunks(7 * first / 16 + 1:, r), levels)
                    do j = 1, size(xf, 2)
                        dots(j) = dots(j) + dot_float(2 * pairs, levels, &
                                                      xf(first + 1:first + 2 * pairs, j))
                    end do
                end do
                scale = half_to_real(scales(g + 1, r)) / 7.0_real32
                offset = half_to_real(offsets(g + 1, r))
                y(r, :) = y(r, :) + scale * dots + offset * xsum(g + 1, :)
            end do
        end do
        !$omp end parallel do
    end subroutine chunk_matmul_float

    !> The integer group dot products alone, dots(ng, n, m): what the tests compare bit for bit.
    subroutine chunk_group_dots(group_size, chunks, xa, dots)
        integer, intent(in) :: group_size
        integer(int8), intent(in), contiguous :: chunks(:, :)
        integer(int16), intent(in), contiguous :: xa(:, :)
        integer(int32), intent(out), contiguous :: dots(:, :, :)
        integer(int16) :: levels(chunk_weights)
        integer :: r, j, g, c, first, pairs, chunks_per_group
        chunks_per_group = (group_size + chunk_weights - 1) / chunk_weights
        dots = 0
        do r = 1, size(chunks, 2)
            do g = 0, size(dots, 1) - 1
                do c = 0, chunks_per_group - 1
                    call chunk_span(size(xa, 1), group_size, g, c, first, pairs)
                    if (pairs <= 0) exit
                    call unpack_chunk(pairs, chunks(7 * first / 16 + 1:, r), levels)
                    do j = 1, size(xa, 2)
                        dots(g + 1, r, j) = dots(g + 1, r, j) &
                            + dot_int16(2 * pairs, levels, xa(first + 1:, j))
                    end do
                end do
            end do
        end do
    end subroutine chunk_group_dots

end module q35_chunk_matmul
