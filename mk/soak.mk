# `make soak`: a bounded soak of mixed traffic (SOAK_SECONDS, default 300); not part of `make test`.
.PHONY: soak
soak: install
	$(BIN)/python bench/soak.py
