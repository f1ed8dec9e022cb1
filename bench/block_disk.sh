#!/bin/bash
# What this machine's disk gives a worker's disk tier read past the page cache: 1 GiB as
# 256 files of 4 MiB (one block file each), read by fio the way the sidecar reads dropped
# block files (each thread one O_DIRECT read of a whole file; 1, 4 and 8 at a time), in
# 1 MiB pieces, and buffered 1 MiB at a time as s3fs reads its cache file. Caches dropped
# before each run (root). Three runs per pattern.
#     bash bench/block_disk.sh [DIR]     (default /var/tmp/fluidfed-block-disk; kept)
set -euo pipefail
D=${1:-/var/tmp/fluidfed-block-disk}
mkdir -p "$D"
run() {
  sync
  echo 3 > /proc/sys/vm/drop_caches
  fio --output-format=terse --terse-version=3 "$@" | awk -F';' '{bw += $7} END {printf "%8.0f MiB/s\n", bw / 1024}'
}
for t in "bs=4M direct=1 numjobs=1" "bs=4M direct=1 numjobs=4" "bs=4M direct=1 numjobs=8" \
         "bs=1M direct=1 numjobs=4" "bs=1M direct=1 numjobs=16" "bs=1M direct=0 numjobs=1" \
         "bs=1M direct=0 numjobs=4"; do
  set -- $t
  jobs=${3#numjobs=}
  for rep in 1 2 3; do
    echo -n "$t run $rep: "
    run --name=b --directory="$D" --ioengine=psync --"$1" --"$2" --"$3" --group_reporting \
      --rw=read --nrfiles=$((256 / jobs)) --filesize=4M --file_service_type=sequential --openfiles=1
  done
done
