# make demo   -- set up (.venv, apt packages) and run the whole pipeline on the embedded CPU demo
# make test   -- set up, lint (ruff check + format --check) and run the test suite
.PHONY: setup demo test bench
setup:
	bash scripts/setup.sh

demo: setup
	.venv/bin/llmasr run --profile demo

test: setup
	.venv/bin/ruff check . && .venv/bin/ruff format --check .
	.venv/bin/python -m pytest -q

bench: setup
	.venv/bin/python bench/data_bench.py
