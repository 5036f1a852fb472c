! Table decode against arithmetic decode of 7-bit pair codes, one SIMD lane per row (the tile
! layout of fortran/q35_matmul.f90): is a 128-point 2-D codebook affordable in a Fortran GEMV?
!   gfortran -O3 -march=native -mprefer-vector-width=512 -fopenmp-simd lut_decode.f90 -o lut && ./lut
! "gather" looks each code up in a 2 x 128 float table (gfortran emits vgatherdps only with int32
! indices in a separate lane loop; with the index cut from the int8 code in the same loop it does
! not vectorise at all); "arith" cuts a 4-bit and a 3-bit level from the code like the v1 grid;
! "checker" decodes the checkerboard grid (odd level 2h + (l1 & 1), bench/codebook_probe.py).
! Both run in L1 with one accumulator per lane, so only their ratio means anything (the real v1
! kernel, with more FMA chains, reaches 18-20 Gweights/s on the same core).
program b
  use iso_fortran_env, only: int8, int32, int64, real32
  implicit none
  integer, parameter :: np = 1024, reps = 20000
  integer(int8) :: codes(16, np)
  real(real32) :: xa(np), xb(np), tab(0:255), acc(16), t0, t1, rnd(16,np)
  integer :: rep, j, r, idx(16)
  call random_number(rnd); codes = int(rnd*127, int8)
  call random_number(xa); call random_number(xb); call random_number(tab)
  acc = 0
  call cpu_time(t0)
  do rep = 1, reps
    do j = 1, np
      !$omp simd
      do r = 1, 16
        idx(r) = iand(int(codes(r,j), int32), 127)
      end do
      !$omp simd
      do r = 1, 16
        acc(r) = acc(r) + tab(idx(r)) * xa(j) + tab(idx(r) + 128) * xb(j)
      end do
    end do
  end do
  call cpu_time(t1)
  print '(a, f8.2, a, es12.4)', 'gather   Gw/s ', 2.0*16*np*real(reps)/(t1-t0)/1e9, ' ', sum(acc)
  acc = 0
  call cpu_time(t0)
  do rep = 1, reps
    do j = 1, np
      !$omp simd
      do r = 1, 16
        acc(r) = acc(r) + real(iand(int(codes(r,j), int32), 15)) * xa(j) &
                        + real(iand(ishft(int(codes(r,j), int32), -4), 7)) * xb(j)
      end do
    end do
  end do
  call cpu_time(t1)
  print '(a, f8.2, a, es12.4)', 'arith    Gw/s ', 2.0*16*np*real(reps)/(t1-t0)/1e9, ' ', sum(acc)
  acc = 0
  call cpu_time(t0)
  do rep = 1, reps
    do j = 1, np
      !$omp simd
      do r = 1, 16
        acc(r) = acc(r) + real(iand(int(codes(r,j), int32), 15)) * xa(j) &
                        + real(ior(iand(shiftr(int(codes(r,j), int32), 3), 14), &
                                   iand(int(codes(r,j), int32), 1))) * xb(j)
      end do
    end do
  end do
  call cpu_time(t1)
  print '(a, f8.2, a, es12.4)', 'checker  Gw/s ', 2.0*16*np*real(reps)/(t1-t0)/1e9, ' ', sum(acc)
end program
