# Cost against occupancy: instructions per operation (callgrind) for the page-frame allocator and
# the bounce pool, at 1-95% occupancy. Called by bench/run_bench.sh with
#   gnuplot -e "datafile='...'; outfile='...'" bench/occupancy.gp
set terminal pngcairo size 900,620 font "sans,11"
set output outfile
set title "Instructions per operation against occupancy (callgrind, clang -O2)"
set xlabel "occupancy (%)"
set ylabel "instructions per operation"
set xrange [0:100]
set yrange [0:*]
set key outside bottom center horizontal maxrows 4 width -2
set grid ytics
set style data linespoints
plot datafile using 1:2 title "PFA order-0 alloc+free (FIFO ring)" lw 2 pt 7 lc rgb "#1f77b4", \
     datafile using 1:3 title "PFA mixed op, orders 0-9" lw 2 pt 5 lc rgb "#ff7f0e", \
     datafile using 1:4 title "bounce map+unmap 4 KiB, no copy" lw 2 pt 9 lc rgb "#2ca02c", \
     datafile using 1:5 title "bounce map+unmap 64 KiB, no copy" lw 2 pt 11 lc rgb "#98df8a", \
     datafile using 1:6 title "bounce random 2-64 KiB churn, no copy" lw 2 pt 13 lc rgb "#9467bd", \
     150 title "target: order-0 pair (150)" dt 2 lw 1 lc rgb "#1f77b4", \
     200 title "target: mixed op (200)" dt 2 lw 1 lc rgb "#ff7f0e", \
     400 title "target: bounce map+unmap (400)" dt 2 lw 1 lc rgb "#2ca02c"
