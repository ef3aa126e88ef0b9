# The two commands of the README's quick start. Both set the machine up first (.ci/setup.sh).
.PHONY: run test setup

setup:
	bash .ci/setup.sh

# Table I, then the kernel benchmark summary.
run: setup
	.venv/bin/python -m benchmarks.table1
	.venv/bin/python -m benchmarks.bench_cpu --quick

# The whole test suite; Triton kernels run on the CPU interpreter when there is no GPU.
test: setup
	TRITON_INTERPRET=$${TRITON_INTERPRET:-1} .venv/bin/python -m pytest tests -q
