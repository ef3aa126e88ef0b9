# The two commands of the README's quick start. Both set the machine up first (.ci/setup.sh:
# seconds when nothing changed).
.PHONY: run test setup wheel-check

setup:
	bash .ci/setup.sh

# Table I, then the headline benchmark (~3 min); full results and plots go to runs/quick/.
run: setup
	.venv/bin/python -m benchmarks.table1
	@echo
	.venv/bin/python -m benchmarks.quick

# The whole test suite; Triton kernels run on the CPU interpreter when there is no GPU.
test: setup
	TRITON_INTERPRET=$${TRITON_INTERPRET:-1} .venv/bin/python -m pytest tests -q

# The wheel in a fresh venv, and the test suite against it (docs/install.md).
wheel-check:
	bash .ci/wheel_check.sh
