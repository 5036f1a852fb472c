! Clip search and quantization with given group parameters (FORMAT.md sec. 4, sec. 6).
!
! The clip search replaces a group's raw [min, max] by the shrunken range [lo + i*d, hi - j*d],
! d = (hi - lo)/n_grid, 0 <= i, j < n_steps, whose float16 parameters (the sec. 4 rule applied to
! the shrunken range) give the smallest importance-weighted squared reconstruction error
! sum_i imp_i (q_i - w_i)^2 of the group, both grids counted (imp = 1: plain squared error;
! imp = E[x_i^2] from calibration: the expected output error of a diagonal input model, as
! llama.cpp's importance matrix). Candidate (0, 0) is plain min/max and wins ties, so the search
! is never worse on its own objective.
! Levels always follow sec. 4 from the stored float16 parameters, clamped on both sides (a clipped
! weight lies outside the grid). Bit-identical to reference.clip_params / quantize_with_params:
! same float32 operations, errors summed in float64 in the same order (group_error; no FMA).
module q35_clip
    use iso_fortran_env, only: int8, int32, real32, real64
    use q35_quantize, only: group_params, odd_step
    use q35_blocks, only: top_level, odd_top_level
    implicit none
    private
    public :: group_error, clip_group_params

    integer, parameter, public :: err_lanes = 8  ! partial sums of group_error (a float64 vector)

contains

    !> Weighted squared error of a group (first weight even) on the grid (offset, scale), float64.
    !> Weight i's term goes to partial sum mod(i - 1, err_lanes) + 1 and the partial sums are then
    !> added in lane order: a fixed order that vectorises (one float64 vector of lanes per chunk)
    !> and that reference.group_error repeats exactly. The levels are grid_level's, written out
    !> here without its branch (the step is the same for the whole grid) so the terms vectorise.
    pure function group_error(fmt, w, imp, offset, scale) result(err)
        integer, intent(in) :: fmt
        real(real32), intent(in) :: w(:), imp(:), offset, scale
        real(real64) :: err, lanes(err_lanes), terms(size(w))
        integer :: c, n, full
        n = size(w)
        terms(1::2) = grid_terms(w(1::2), imp(1::2), top_level(fmt), scale)
        terms(2::2) = grid_terms(w(2::2), imp(2::2), odd_top_level(fmt), odd_step(fmt, scale))
        full = n - mod(n, err_lanes)
        lanes = 0.0_real64
        do c = 0, full - err_lanes, err_lanes
            lanes = lanes + terms(c + 1:c + err_lanes)
        end do
        lanes(1:n - full) = lanes(1:n - full) + terms(full + 1:n)
        err = 0.0_real64
        do c = 1, err_lanes
            err = err + lanes(c)
        end do
    contains
        !> imp * (q - w)**2 of weights on one grid; q = offset + step * level, level as in
        !> grid_level (0 where step = 0), kept in float32 like the integer level it stands for.
        pure function grid_terms(ws, imps, top, step) result(t)
            real(real32), intent(in) :: ws(:), imps(:), step
            integer, intent(in) :: top
            real(real64) :: t(size(ws))
            real(real32) :: level(size(ws))
            if (step == 0.0_real32) then
                level = 0.0_real32
            else
                level = min(max(aint((ws - offset) / step + 0.5_real32), 0.0_real32), &
                            real(top, real32))
            end if
            t = real(offset + step * level, real64) - real(ws, real64)
            t = real(imps, real64) * (t * t)
        end function grid_terms
    end function group_error

    !> float16 offset, scale of the best shrunken range of group w (see the module comment).
    pure subroutine clip_group_params(fmt, w, imp, n_grid, n_steps, offset, scale)
        integer, intent(in) :: fmt, n_grid, n_steps
        real(real32), intent(in) :: w(:), imp(:)
        real(real32), intent(out) :: offset, scale
        real(real32) :: lo, hi, delta, low, high, cand_offset, cand_scale
        real(real64) :: best, err
        integer :: i, j
        lo = minval(w)
        hi = maxval(w)
        call group_params(lo, hi, top_level(fmt), offset, scale)
        best = group_error(fmt, w, imp, offset, scale)
        delta = (hi - lo) / real(n_grid, real32)
        do i = 0, n_steps - 1
            low = lo + real(i, real32) * delta
            do j = 0, n_steps - 1
                if (i == 0 .and. j == 0) cycle
                high = hi - real(j, real32) * delta
                if (high <= low) cycle
                call group_params(low, high, top_level(fmt), cand_offset, cand_scale)
                err = group_error(fmt, w, imp, cand_offset, cand_scale)
                if (err < best) then
                    best = err
                    offset = cand_offset
                    scale = cand_scale
                end if
            end do
        end do
    end subroutine clip_group_params


end module q35_clip
