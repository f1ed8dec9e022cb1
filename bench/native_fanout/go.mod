module fluidfed/bench/native_fanout

go 1.21
