! The f2py boundary: plain subroutines over explicit-shape arrays, nothing else. Each one checks
! nothing and copies nothing; python/q35f/kernels.py validates arguments before calling them.
! Array dimensions are in Fortran order: a numpy C-ordered (rows, cols) array arrives as
! (cols, rows).

subroutine encode_pairs(n, n1, n2, codes)
    use iso_fortran_env, only: int8, int32
    use q35_blocks, only: encode_code
    implicit none
    integer(int32), intent(in) :: n
    integer(int8), intent(in) :: n1(n), n2(n)
    integer(int8), intent(out) :: codes(n)
    codes = int(encode_code(int(n1, int32), int(n2, int32)), int8)
end subroutine encode_pairs

subroutine decode_pairs(n, codes, n1, n2)
    use iso_fortran_env, only: int8, int32
    use q35_blocks, only: decode_code
    implicit none
    integer(int32), intent(in) :: n
    integer(int8), intent(in) :: codes(n)
    integer(int8), intent(out) :: n1(n), n2(n)
    integer(int32) :: wide1(n), wide2(n)
    call decode_code(int(codes, int32), wide1, wide2)
    n1 = int(wide1, int8)
    n2 = int(wide2, int8)
end subroutine decode_pairs

! Eight 7-bit codes per 7-byte block, per row (sec. 3).
subroutine pack_code_rows(n_rows, n_blocks, codes, packed)
    use iso_fortran_env, only: int8, int32, int64
    use q35_blocks, only: to_int8
    implicit none
    integer(int32), intent(in) :: n_rows, n_blocks
    integer(int8), intent(in) :: codes(8 * n_blocks, n_rows)
    integer(int8), intent(out) :: packed(7 * n_blocks, n_rows)
    integer(int64) :: stream
    integer :: r, b, j
    do r = 1, n_rows
        do b = 0, n_blocks - 1
            stream = 0
            do j = 0, 7
                stream = ior(stream, ishft(int(iand(int(codes(8 * b + j + 1, r), int32), 127), &
                                               int64), 7 * j))
            end do
            do j = 0, 6
                packed(7 * b + j + 1, r) = to_int8(int(iand(ishft(stream, -8 * j), 255_int64), &
                                                       int32))
            end do
        end do
    end do
end subroutine pack_code_rows

subroutine unpack_code_rows(n_rows, n_blocks, packed, codes)
    use iso_fortran_env, only: int8, int32, int64
    implicit none
    integer(int32), intent(in) :: n_rows, n_blocks
    integer(int8), intent(in) :: packed(7 * n_blocks, n_rows)
    integer(int8), intent(out) :: codes(8 * n_blocks, n_rows)
    integer(int64) :: stream
    integer :: r, b, j
    do r = 1, n_rows
        do b = 0, n_blocks - 1
            stream = 0
            do j = 0, 6
                stream = ior(stream, ishft(iand(int(packed(7 * b + j + 1, r), int64), 255_int64), &
                                           8 * j))
            end do
            do j = 0, 7
                codes(8 * b + j + 1, r) = int(iand(ishft(stream, -7 * j), 127_int64), int8)
            end do
        end do
    end do
end subroutine unpack_code_rows

! float32 rows (k, n_rows) -> canonical packed rows and float16-exact parameters (sec. 4, 6).
subroutine quantize_rows(fmt, k, n_rows, group_size, row_bytes, n_groups, w, packed, scales, &
                         offsets)
    use iso_fortran_env, only: int8, int32, real32
    use q35_quantize, only: quantize_row
    implicit none
    integer(int32), intent(in) :: fmt, k, n_rows, group_size, row_bytes, n_groups
    real(real32), intent(in) :: w(k, n_rows)
    integer(int8), intent(out) :: packed(row_bytes, n_rows)
    real(real32), intent(out) :: scales(n_groups, n_rows), offsets(n_groups, n_rows)
    integer :: r
    !$omp parallel do schedule(dynamic, 16)
    do r = 1, n_rows
        call quantize_row(fmt, k, group_size, w(:, r), packed(:, r), scales(:, r), offsets(:, r))
    end do
    !$omp end parallel do
end subroutine quantize_rows

subroutine gemv(fmt, group_size, row_bytes, n_groups, n_tiles, k_pad, m, tiles, scales, offsets, &
                x, y)
    use iso_fortran_env, only: int8, int16, int32, real32
    use q35_blocks, only: tile_rows
    use q35_matmul, only: gemv_tiles
    implicit none
    integer(int32), intent(in) :: fmt, group_size, row_bytes, n_groups, n_tiles, k_pad, m
    integer(int8), intent(in) :: tiles(16, row_bytes, n_tiles)
    integer(int16), intent(in) :: scales(16, n_groups, n_tiles), offsets(16, n_groups, n_tiles)
    real(real32), intent(in) :: x(k_pad, m)
    real(real32), intent(out) :: y(16, n_tiles, m)
    call gemv_tiles(fmt, group_size, tiles, scales, offsets, x, y)
end subroutine gemv

subroutine dequantize(fmt, group_size, row_bytes, n_groups, n_tiles, k_pad, tiles, scales, &
                      offsets, w)
    use iso_fortran_env, only: int8, int16, int32, real32
    use q35_dequantize, only: dequantize_tiles
    implicit none
    integer(int32), intent(in) :: fmt, group_size, row_bytes, n_groups, n_tiles, k_pad
    integer(int8), intent(in) :: tiles(16, row_bytes, n_tiles)
    integer(int16), intent(in) :: scales(16, n_groups, n_tiles), offsets(16, n_groups, n_tiles)
    real(real32), intent(inout) :: w(k_pad, 16 * n_tiles)
    call dequantize_tiles(fmt, group_size, tiles, scales, offsets, w)
end subroutine dequantize

! Quantize rows with given (search = 0) or clip-searched (search = 1) float16-exact parameters:
! scales/offsets are read in the first case, written in the second (q35_clip, FORMAT.md sec. 4).
! importance(k): the search's per-column weights (all ones: plain squared error).
subroutine quantize_rows_clip(fmt, k, n_rows, group_size, row_bytes, n_groups, search, n_grid, &
                              n_steps, w, importance, packed, scales, offsets)
    use iso_fortran_env, only: int8, int32, real32
    use q35_clip, only: clip_group_params
    use q35_quantize, only: quantize_row_params
    implicit none
    integer(int32), intent(in) :: fmt, k, n_rows, group_size, row_bytes, n_groups, search
    integer(int32), intent(in) :: n_grid, n_steps
    real(real32), intent(in) :: w(k, n_rows), importance(k)
    integer(int8), intent(out) :: packed(row_bytes, n_rows)
    real(real32), intent(inout) :: scales(n_groups, n_rows), offsets(n_groups, n_rows)
    integer :: r, g, first, last
    !$omp parallel do schedule(dynamic, 4) private(g, first, last)
    do r = 1, n_rows
        if (search /= 0) then
            do g = 1, n_groups
                first = (g - 1) * group_size + 1
                last = min(g * group_size, k)
                call clip_group_params(fmt, w(first:last, r), importance(first:last), &
                                       n_grid, n_steps, offsets(g, r), scales(g, r))
            end do
        end if
        call quantize_row_params(fmt, k, group_size, w(:, r), scales(:, r), offsets(:, r), &
                                 packed(:, r))
    end do
    !$omp end parallel do
end subroutine quantize_rows_clip

! q35 rows: bit stream (sec. 3) <-> the planar layout the kernels read (sec. 7).
subroutine q35_rows_to_planar(n_rows, n_blocks, stream, planar)
    use iso_fortran_env, only: int8, int32
    use q35_blocks, only: q35_block_to_planar
    implicit none
    integer(int32), intent(in) :: n_rows, n_blocks
    integer(int8), intent(in) :: stream(7, n_blocks, n_rows)
    integer(int8), intent(out) :: planar(7, n_blocks, n_rows)
    integer :: r, b
    !$omp parallel do schedule(static) if (n_rows * n_blocks > 65536)
    do r = 1, n_rows
        do b = 1, n_blocks
            call q35_block_to_planar(stream(:, b, r), planar(:, b, r))
        end do
    end do
    !$omp end parallel do
end subroutine q35_rows_to_planar

subroutine q35_rows_from_planar(n_rows, n_blocks, planar, stream)
    use iso_fortran_env, only: int8, int32
    use q35_blocks, only: q35_block_from_planar
    implicit none
    integer(int32), intent(in) :: n_rows, n_blocks
    integer(int8), intent(in) :: planar(7, n_blocks, n_rows)
    integer(int8), intent(out) :: stream(7, n_blocks, n_rows)
    integer :: r, b
    !$omp parallel do schedule(static) if (n_rows * n_blocks > 65536)
    do r = 1, n_rows
        do b = 1, n_blocks
            call q35_block_from_planar(planar(:, b, r), stream(:, b, r))
        end do
    end do
    !$omp end parallel do
end subroutine q35_rows_from_planar

! One decoder block for one token (q35_decode): x (hidden) updated in place, the token's key and
! value written into the caches at pos (0-based). Each linear layer comes as its tiled arrays;
! q/k/v and gate/up are fused (stacked rows); k/v come separately (kv_*, kv_rows > 0) when they
! are stored in another format than q, else kv_rows is 0 and kv_* a dummy (f2py passes no
! zero-size arrays).
subroutine decode_block(hidden, d, max_pos, n_kv, half, intermediate, n_heads, pos, eps, scale, &
                        x, attn_norm, mlp_norm, cos_pos, sin_pos, k_cache, v_cache, &
                        qkv_fmt, qkv_group, qkv_bytes, qkv_groups, qkv_tiles, qkv_t, qkv_s, qkv_o, &
                        qkv_rot, qkv_k, qkv_signs, &
                        kv_rows, kv_fmt, kv_group, kv_bytes, kv_groups, kv_tiles, &
                        kv_t, kv_s, kv_o, kv_rot, kv_k, kv_signs, &
                        wo_fmt, wo_group, wo_bytes, wo_groups, wo_tiles, wo_t, wo_s, wo_o, &
                        wo_rot, wo_k, wo_signs, &
                        gu_fmt, gu_group, gu_bytes, gu_groups, gu_tiles, gu_t, gu_s, gu_o, &
                        gu_rot, gu_k, gu_signs, &
                        dn_fmt, dn_group, dn_bytes, dn_groups, dn_tiles, dn_t, dn_s, dn_o, &
                        dn_rot, dn_k, dn_signs)
    use iso_fortran_env, only: int8, int16, int32, real32
    use q35_decode, only: decode_block_tiles => decode_block, tiled
    implicit none
    integer(int32), intent(in) :: hidden, d, max_pos, n_kv, half, intermediate, n_heads, pos
    real(real32), intent(in) :: eps, scale
    real(real32), intent(inout) :: x(hidden)
    real(real32), intent(in) :: attn_norm(hidden), mlp_norm(hidden), cos_pos(half), sin_pos(half)
    real(real32), intent(inout) :: k_cache(d, max_pos, n_kv), v_cache(d, max_pos, n_kv)
    integer(int32), intent(in) :: qkv_fmt, qkv_group, qkv_bytes, qkv_groups, qkv_tiles
    integer(int8), intent(in), target :: qkv_t(16, qkv_bytes, qkv_tiles)
    integer(int16), intent(in), target :: qkv_s(16, qkv_groups, qkv_tiles)
    integer(int16), intent(in), target :: qkv_o(16, qkv_groups, qkv_tiles)
    integer(int32), intent(in) :: qkv_rot, qkv_k  ! rotation block (0: none), inputs
    real(real32), intent(in), target :: qkv_signs(qkv_k)
    integer(int32), intent(in) :: kv_rows, kv_fmt, kv_group, kv_bytes, kv_groups, kv_tiles
    integer(int8), intent(in), target :: kv_t(16, kv_bytes, kv_tiles)
    integer(int16), intent(in), target :: kv_s(16, kv_groups, kv_tiles)
    integer(int16), intent(in), target :: kv_o(16, kv_groups, kv_tiles)
    integer(int32), intent(in) :: kv_rot, kv_k  ! rotation block (0: none), inputs
    real(real32), intent(in), target :: kv_signs(kv_k)
    integer :: kv_used  ! kv's tiles in use: none when k/v are fused with q
    integer(int32), intent(in) :: wo_fmt, wo_group, wo_bytes, wo_groups, wo_tiles
    integer(int8), intent(in), target :: wo_t(16, wo_bytes, wo_tiles)
    integer(int16), intent(in), target :: wo_s(16, wo_groups, wo_tiles)
    integer(int16), intent(in), target :: wo_o(16, wo_groups, wo_tiles)
    integer(int32), intent(in) :: wo_rot, wo_k  ! rotation block (0: none), inputs
    real(real32), intent(in), target :: wo_signs(wo_k)
    integer(int32), intent(in) :: gu_fmt, gu_group, gu_bytes, gu_groups, gu_tiles
    integer(int8), intent(in), target :: gu_t(16, gu_bytes, gu_tiles)
    integer(int16), intent(in), target :: gu_s(16, gu_groups, gu_tiles)
    integer(int16), intent(in), target :: gu_o(16, gu_groups, gu_tiles)
    integer(int32), intent(in) :: gu_rot, gu_k  ! rotation block (0: none), inputs
    real(real32), intent(in), target :: gu_signs(gu_k)
    integer(int32), intent(in) :: dn_fmt, dn_group, dn_bytes, dn_groups, dn_tiles
    integer(int8), intent(in), target :: dn_t(16, dn_bytes, dn_tiles)
    integer(int16), intent(in), target :: dn_s(16, dn_groups, dn_tiles)
    integer(int16), intent(in), target :: dn_o(16, dn_groups, dn_tiles)
    integer(int32), intent(in) :: dn_rot, dn_k  ! rotation block (0: none), inputs
    real(real32), intent(in), target :: dn_signs(dn_k)
    if (pos < 0 .or. pos >= max_pos) error stop "decode_block: position outside the KV cache"
    if (n_kv < 1 .or. mod(n_heads, n_kv) /= 0 .or. 2 * half /= d) &
        error stop "decode_block: inconsistent head counts or head size"
    kv_used = merge(kv_tiles, 0, kv_rows > 0)
    if (kv_rows > 0 .and. (kv_rot /= qkv_rot .or. qkv_tiles * 16 /= n_heads * d &
                           .or. kv_rows /= 2 * n_kv * d .or. kv_rows > 16 * kv_tiles)) &
        error stop "decode_block: separate k/v need q in whole tiles and the same rotation"
    call decode_block_tiles(x, attn_norm, mlp_norm, eps, &
                            tiled(qkv_fmt, qkv_group, qkv_t, qkv_s, qkv_o, qkv_rot, qkv_signs), &
                            tiled(kv_fmt, kv_group, kv_t(:, :, 1:kv_used), &
                                  kv_s(:, :, 1:kv_used), kv_o(:, :, 1:kv_used), kv_rot, &
                                  kv_signs), &
                            tiled(wo_fmt, wo_group, wo_t, wo_s, wo_o, wo_rot, wo_signs), &
                            tiled(gu_fmt, gu_group, gu_t, gu_s, gu_o, gu_rot, gu_signs), &
                            tiled(dn_fmt, dn_group, dn_t, dn_s, dn_o, dn_rot, dn_signs), &
                            n_heads, n_kv, intermediate, pos, cos_pos, sin_pos, scale, &
                            k_cache, v_cache)
end subroutine decode_block

! The integer prompt GEMM (q35_gemm): activations quantized to int8 per group, then the product.
subroutine quantize_activations(group_size, k_pad, m, n_groups, x, xq, x_scale, x_sum)
    use iso_fortran_env, only: int8, int32, real32
    use q35_gemm, only: quantize_activations_ => quantize_activations
    implicit none
    integer(int32), intent(in) :: group_size, k_pad, m, n_groups
    real(real32), intent(in) :: x(k_pad, m)
    integer(int8), intent(out) :: xq(k_pad, m)
    real(real32), intent(out) :: x_scale(n_groups, m)
    integer(int32), intent(out) :: x_sum(n_groups, m)
    call quantize_activations_(group_size, x, xq, x_scale, x_sum)
end subroutine quantize_activations

subroutine gemm_int8(fmt, group_size, row_bytes, n_groups, n_tiles, k_pad, m, tiles, scales, &
                     offsets, xq, x_scale, x_sum, y)
    use iso_fortran_env, only: int8, int16, int32, real32
    use q35_gemm, only: gemm_int8_ => gemm_int8
    implicit none
    integer(int32), intent(in) :: fmt, group_size, row_bytes, n_groups, n_tiles, k_pad, m
    integer(int8), intent(in) :: tiles(16, row_bytes, n_tiles)
    integer(int16), intent(in) :: scales(16, n_groups, n_tiles), offsets(16, n_groups, n_tiles)
    integer(int8), intent(in) :: xq(k_pad, m)
    real(real32), intent(in) :: x_scale(n_groups, m)
    integer(int32), intent(in) :: x_sum(n_groups, m)
    real(real32), intent(out) :: y(16 * n_tiles, m)
    call gemm_int8_(fmt, group_size, row_bytes, n_groups, n_tiles, k_pad, m, tiles, scales, &
                    offsets, xq, x_scale, x_sum, y)
end subroutine gemm_int8

! Test hooks of the integer GEMM: each row's unsigned integer levels, and the integer group sums.
subroutine unpack_levels(fmt, row_bytes, n_tiles, k_pad, tiles, u)
    use iso_fortran_env, only: int8, int32
    use q35_gemm, only: unpack_levels_ => unpack_levels
    implicit none
    integer(int32), intent(in) :: fmt, row_bytes, n_tiles, k_pad
    integer(int8), intent(in) :: tiles(16, row_bytes, n_tiles)
    integer(int8), intent(out) :: u(k_pad, 16 * n_tiles)
    call unpack_levels_(fmt, tiles, u)
end subroutine unpack_levels

subroutine group_sums(fmt, group_size, row_bytes, n_groups, n_tiles, k_pad, m, tiles, xq, s)
    use iso_fortran_env, only: int8, int32
    use q35_gemm, only: group_sums_ => group_sums
    implicit none
    integer(int32), intent(in) :: fmt, group_size, row_bytes, n_groups, n_tiles, k_pad, m
    integer(int8), intent(in) :: tiles(16, row_bytes, n_tiles)
    integer(int8), intent(in) :: xq(k_pad, m)
    integer(int32), intent(out) :: s(n_groups, m, 16 * n_tiles)
    call group_sums_(fmt, group_size, row_bytes, n_groups, n_tiles, k_pad, m, tiles, xq, s)
end subroutine group_sums

! The input rotation (q35_rotate, FORMAT.md sec. 9) of each column of x, in place.
subroutine rotate_columns(k, m, group, inverse, signs, x)
    use iso_fortran_env, only: int32, real32
    use q35_rotate, only: rotate_columns_ => rotate_columns
    implicit none
    integer(int32), intent(in) :: k, m, group, inverse
    real(real32), intent(in) :: signs(k)
    real(real32), intent(inout) :: x(k, m)
    call rotate_columns_(x, signs, group, inverse /= 0)
end subroutine rotate_columns
