# `make bench`: the benchmark against baselines (wrk, nginx); `make bench-smoke` checks the harness.
APT_NEEDS += wrk:wrk valgrind:valgrind callgrind_control:valgrind

.PHONY: bench bench-smoke
bench: install
	$(BIN)/python bench/run.py

bench-smoke: install
	$(BIN)/python bench/run.py --smoke
