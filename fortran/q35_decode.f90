! One decoder block for one token in one call (the decode step): RMSNorm, the fused q/k/v GEMV,
! rotary embeddings, the KV cache write, grouped-query attention over the cache, the output
! projection, RMSNorm, the fused gate/up GEMV, SwiGLU and the down projection, residuals added
! in place; a rotated layer's input is rotated first (q35_rotate, FORMAT.md sec. 9). Everything
! runs inside one OpenMP parallel region: the GEMVs share their tiles among the threads
! (q35_matmul's gemv_tiles_shared), attention shares its heads, and the small vector steps
! (the input rotations among them) are done by one thread. Per token this replaces ~10
! Python-level operations and four parallel regions per block by one call; between the stages
! the threads wait at a barrier, where they spin (microseconds) instead of being put to sleep
! and woken again.
! The same arithmetic as q35f.runtime.model's numpy block, not the same order of float32
! operations: results agree to float32 rounding (tests/runtime/test_decode_step.py).
! Compiled with FMA contraction, like the GEMV.
module q35_decode
    use iso_fortran_env, only: int8, int16, int32, real32
    use q35_blocks, only: tile_rows, block_weights, block_bytes
    use q35_matmul, only: gemv_tiles_shared
    use q35_rotate, only: rotate_columns
    implicit none
    private
    public :: linear_tiles, decode_block, tiled

    !> One quantized linear layer in the tiled kernel layout (FORMAT.md sec. 7), and its input
    !> rotation (sec. 9): blocks of rotation_block columns with these signs, or none (0).
    type :: linear_tiles
        integer :: fmt, group_size, rotation_block = 0
        real(real32), pointer, contiguous :: signs(:) => null()  ! (inputs) when rotated
        integer(int8), pointer, contiguous :: tiles(:, :, :) => null()
        integer(int16), pointer, contiguous :: scales(:, :, :) => null()
        integer(int16), pointer, contiguous :: offsets(:, :, :) => null()
    end type linear_tiles

contains

    !> A linear_tiles view of a layer's arrays (no copy; valid while they are).
    function tiled(fmt, group_size, tiles, scales, offsets, rotation_block, signs) result(lin)
        integer, intent(in) :: fmt, group_size, rotation_block
        integer(int8), intent(in), target, contiguous :: tiles(:, :, :)
        integer(int16), intent(in), target, contiguous :: scales(:, :, :), offsets(:, :, :)
        real(real32), intent(in), target, contiguous :: signs(:)
        type(linear_tiles) :: lin
        lin%fmt = fmt
        lin%group_size = group_size
        lin%tiles => tiles
        lin%scales => scales
        lin%offsets => offsets
        lin%rotation_block = rotation_block
        lin%signs => signs
    end function tiled

    !> x <- the input a rotated layer takes, R^T x (its first size(signs) rows; the padding
    !> stays zero); unchanged for a layer without rotation.
    subroutine rotate_input(lin, x)
        type(linear_tiles), intent(in) :: lin
        real(real32), intent(inout) :: x(:, :)
        if (lin%rotation_block > 0) &
            call rotate_columns(x(1:size(lin%signs), :), lin%signs, lin%rotation_block, .false.)
    end subroutine rotate_input

    !> Zero-padded input length of a linear layer: 16 weights per packed block.
    pure integer function padded_inputs(lin)
        type(linear_tiles), intent(in) :: lin
        padded_inputs = size(lin%tiles, 2) / block_bytes(lin%fmt) * block_weights
    end function padded_inputs

    !> Output rows of a linear layer, padded to whole tiles.
    pure integer function padded_outputs(lin)
        type(linear_tiles), intent(in) :: lin
        padded_outputs = tile_rows * size(lin%tiles, 3)
    end function padded_outputs

    !> x (hidden) <- the block applied to the token at position pos (0-based); its key and value
    !> are written into the caches (head_dim, max positions, kv heads) at pos. `intermediate` is
    !> the MLP width (gate rows, then up rows, in gate_up's output). The q, k, v rows come from
    !> `qkv` and then `kv` (no tiles when qkv holds them all; k and v stored in another format
    !> than q, a mix): qkv's rows must fill whole tiles when kv has any, and both take the same
    !> rotated input.
    subroutine decode_block(x, attn_norm, mlp_norm, eps, qkv, kv, wo, gate_up, down, n_heads, &
                            n_kv, intermediate, pos, cos_pos, sin_pos, scale, k_cache, v_cache)
        real(real32), intent(inout) :: x(:)
        real(real32), intent(in) :: attn_norm(:), mlp_norm(:), eps, scale
        type(linear_tiles), intent(in) :: qkv, kv, wo, gate_up, down
        integer, intent(in) :: n_heads, n_kv, intermediate, pos
        real(real32), intent(in) :: cos_pos(:), sin_pos(:)  ! (head_dim / 2) at position pos
        real(real32), intent(inout) :: k_cache(:, :, :), v_cache(:, :, :)
        ! GEMV inputs are zero-padded to whole blocks (the padding stays zero); outputs are
        ! whole tiles, seen flat through the pointers.
        real(real32), allocatable :: h(:, :), attn(:, :), hm(:, :), act(:, :)
        real(real32), allocatable, target :: qkv_y(:), o_y(:), gu_y(:), dn_y(:)
        ! contiguous: a pointer without it is packed into a per-thread temporary at each call,
        ! and the temporaries copied back over each other (measured: lost rows with 2 threads)
        real(real32), pointer, contiguous :: qkv_t(:, :, :), kv_t(:, :, :), o_t(:, :, :)
        real(real32), pointer, contiguous :: gu_t(:, :, :), dn_t(:, :, :)
        integer :: hidden, d, n_pos, hq, hk, v0, first_kv

        hidden = size(x)
        d = size(k_cache, 1)
        n_pos = pos + 1
        allocate(h(padded_inputs(qkv), 1), attn(padded_inputs(wo), 1), source=0.0_real32)
        allocate(hm(padded_inputs(gate_up), 1), act(padded_inputs(down), 1), source=0.0_real32)
        first_kv = padded_outputs(qkv)
        allocate(qkv_y(first_kv + padded_outputs(kv)), o_y(padded_outputs(wo)))
        allocate(gu_y(padded_outputs(gate_up)), dn_y(padded_outputs(down)))
        qkv_t(1:tile_rows, 1:size(qkv%tiles, 3), 1:1) => qkv_y(1:first_kv)
        kv_t(1:tile_rows, 1:size(kv%tiles, 3), 1:1) => qkv_y(first_kv + 1:)
        o_t(1:tile_rows, 1:size(wo%tiles, 3), 1:1) => o_y
        gu_t(1:tile_rows, 1:size(gate_up%tiles, 3), 1:1) => gu_y
        dn_t(1:tile_rows, 1:size(down%tiles, 3), 1:1) => dn_y
        v0 = (n_heads + n_kv) * d  ! q heads, then k heads, then v heads in the fused output

        !$omp parallel default(shared) private(hq, hk)
        !$omp single
        h(1:hidden, 1) = rms_normed(x, attn_norm, eps)
        call rotate_input(qkv, h)
        !$omp end single
        call gemv_tiles_shared(qkv%fmt, qkv%group_size, qkv%tiles, qkv%scales, qkv%offsets, &
                               h, qkv_t)
        if (size(kv%tiles, 3) > 0) &  ! the same branch in every thread: a shared value
            call gemv_tiles_shared(kv%fmt, kv%group_size, kv%tiles, kv%scales, kv%offsets, &
                                   h, kv_t)
        !$omp single
        call rotate(qkv_y(1:v0), d, cos_pos, sin_pos)  ! q and k heads
        do hk = 1, n_kv
            k_cache(:, n_pos, hk) = qkv_y((n_heads + hk - 1) * d + 1:(n_heads + hk) * d)
            v_cache(:, n_pos, hk) = qkv_y(v0 + (hk - 1) * d + 1:v0 + hk * d)
        end do
        !$omp end single
        !$omp do schedule(static)
        do hq = 1, n_heads
            hk = (hq - 1) / (n_heads / n_kv) + 1  ! query heads share kv heads in groups (GQA)
            call attend(qkv_y((hq - 1) * d + 1:hq * d) * scale, k_cache(:, 1:n_pos, hk), &
                        v_cache(:, 1:n_pos, hk), attn((hq - 1) * d + 1:hq * d, 1))
        end do
        !$omp end do
        if (wo%rotation_block > 0) then  ! the same branch in every thread: a shared value
            !$omp single
            call rotate_input(wo, attn)
            !$omp end single
        end if
        call gemv_tiles_shared(wo%fmt, wo%group_size, wo%tiles, wo%scales, wo%offsets, attn, o_t)
        !$omp single
        x = x + o_y(1:hidden)
        hm(1:hidden, 1) = rms_normed(x, mlp_norm, eps)
        call rotate_input(gate_up, hm)
        !$omp end single
        call gemv_tiles_shared(gate_up%fmt, gate_up%group_size, gate_up%tiles, gate_up%scales, &
                               gate_up%offsets, hm, gu_t)
        !$omp single
        act(1:intermediate, 1) = silu_times(gu_y(1:intermediate), &
                                            gu_y(intermediate + 1:2 * intermediate))
        call rotate_input(down, act)
        !$omp end single
        call gemv_tiles_shared(down%fmt, down%group_size, down%tiles, down%scales, &
                               down%offsets, act, dn_t)
        !$omp single
        x = x + dn_y(1:hidden)
        !$omp end single
        !$omp end parallel
    end subroutine decode_block

    !> softmax(q . keys) weighted sum of the values, for one query head (q already scaled).
    pure subroutine attend(q, keys, values, out)
        real(real32), intent(in) :: q(:), keys(:, :), values(:, :)  ! (d), (d, positions) x 2
        real(real32), intent(out) :: out(:)
        real(real32) :: scores(size(keys, 2))
        integer :: p
        do p = 1, size(keys, 2)
            scores(p) = dot_product(q, keys(:, p))
        end do
        scores = exp(scores - maxval(scores))
        scores = scores / sum(scores)
        out = 0.0_real32
        do p = 1, size(keys, 2)
            out = out + scores(p) * values(:, p)
        end do
    end subroutine attend

    pure function rms_normed(x, weight, eps) result(h)
        real(real32), intent(in) :: x(:), weight(:), eps
        real(real32) :: h(size(x))
        h = x * (weight / sqrt(dot_product(x, x) / real(size(x), real32) + eps))
    end function rms_normed

    !> silu(gate) * up; exp overflow gives -0 for very negative gates, as it should.
    pure elemental real(real32) function silu_times(gate, up)
        real(real32), intent(in) :: gate, up
        silu_times = gate / (1.0_real32 + exp(-gate)) * up
    end function silu_times

    !> Rotary embedding ("rotate half": pairs i, i + d/2) of the heads in y, in place.
    pure subroutine rotate(y, d, cos_pos, sin_pos)
        real(real32), intent(inout) :: y(:)  ! (d * heads)
        integer, intent(in) :: d
        real(real32), intent(in) :: cos_pos(:), sin_pos(:)
        real(real32) :: x1(d / 2), x2(d / 2)
        integer :: first, half
        half = d / 2
        do first = 1, size(y), d
            x1 = y(first:first + half - 1)
            x2 = y(first + half:first + d - 1)
            y(first:first + half - 1) = x1 * cos_pos - x2 * sin_pos
            y(first + half:first + d - 1) = x2 * cos_pos + x1 * sin_pos
        end do
    end subroutine rotate

end module q35_decode
