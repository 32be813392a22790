# The two commands a newcomer needs: `make serve` and `make test`.
# Both create .venv on first use (scripts/ensure-venv).
BIN := .venv/bin

.PHONY: serve test venv lint proto proto-check buf-lint bench clean

venv:
	scripts/ensure-venv

serve: venv
	$(BIN)/nudge serve

test: venv
	$(BIN)/ruff check .
	$(BIN)/lint-imports
	$(BIN)/mypy -p nudge.v1 -p nudge.server -p nudge.kernels -p nudge.clients -p nudge.bench
	$(BIN)/python -m pytest -q

lint: venv buf-lint
	$(BIN)/ruff check .
	$(BIN)/lint-imports
	$(BIN)/mypy -p nudge.v1 -p nudge.server -p nudge.kernels -p nudge.clients -p nudge.bench

proto: venv
	$(BIN)/python scripts/generate_proto.py

proto-check: venv
	$(BIN)/python scripts/generate_proto.py --check

buf-lint:
	scripts/buf lint

bench: venv
	$(BIN)/nudge bench all

clean:
	rm -rf .venv build *.egg-info nudge-data
