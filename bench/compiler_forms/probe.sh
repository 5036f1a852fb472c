#!/usr/bin/env bash
# Which dot-product instructions does each Fortran compiler here emit for forms.f90?
#   bash bench/compiler_forms/probe.sh        (gfortran; flang-new-19 too where installed)
# Prints, per compiler and subroutine, the counts of vpdpbusd / vpdpwssd / vpmaddwd /
# vpmaddubsw / vpmullw / vpmulld / vfmadd in the object code (-O3 -march=native).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
for fc in gfortran flang-new-19; do
    command -v "$fc" >/dev/null || { echo "$fc: not installed"; continue; }
    "$fc" -O3 -march=native -c "$here/forms.f90" -o "$tmp/forms.o"
    echo "== $fc ($("$fc" --version | head -1))"
    objdump -d --no-show-raw-insn "$tmp/forms.o" | awk '
        /^[0-9a-f]+ <[a-z_0-9]+>:/ { f = $2; gsub(/[<>:]/, "", f); seen[f] = 1 }
        /vpdpbusd|vpdpwssd|vpmaddwd|vpmaddubsw|vpmullw|vpmulld|vfmadd/ { n[f " " $2]++ }
        END { for (k in n) print "  " k ": " n[k]; for (f in seen) print "  " f " (function)" }' \
        | sort
done
