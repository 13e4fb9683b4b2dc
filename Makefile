# The two commands a newcomer needs: `make run` and `make test`.
# Both create .venv on first use and install the project into it.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: run test lint bench sim sim-scale perturb clean

$(STAMP): pyproject.toml consensus/_batchverify.c consensus/_sm2.c
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[test]'
	touch $(STAMP)

run: $(STAMP)
	$(BIN)/archipelago localnet --validators 4 --load 200

lint: $(STAMP)
	$(BIN)/ruff check apps consensus network node sim devnet proofcheck tests benchmarks
	$(BIN)/mypy

# The suite runs on TEST_WORKERS pytest-xdist workers, a module's tests on one worker
# (`--dist loadfile`): most of its time is real node processes waiting out consensus
# timeouts, so two workers share two cores well. Modules whose assertions bound the node's
# responsiveness (xdist_group "timing": hostile peers and clients, the slow /stream client)
# never run at the same time as each other, nor the network-namespace modules ("netns"):
# each holds its group's lock (tests/integration/conftest.py). Each worker takes its ports
# from its own slice (tests/integration/nodes.py, free_ports). Wall times: benchmarks/
# README.md, "Test suite wall time". TEST_WORKERS=0 runs everything in one process.
TEST_WORKERS ?= 2
test: lint
	$(BIN)/python -m pytest -q -p no:cacheprovider -n $(TEST_WORKERS) --dist loadfile; rc=$$?; \
	  if [ $$rc -eq 5 ]; then echo "pytest collected no tests: failing"; exit 1; fi; exit $$rc

$(VENV)/.bench: $(STAMP)
	$(BIN)/python -m pip install --quiet -e '.[test,bench]'
	touch $@

bench: $(VENV)/.bench
	$(BIN)/python benchmarks/validation.py --txs 10000
	$(BIN)/python benchmarks/network.py
	$(BIN)/python benchmarks/storage.py
	$(BIN)/python benchmarks/simulator.py
	$(BIN)/python benchmarks/cluster.py

sim: $(STAMP)
	$(BIN)/archipelago simulate --validators 4 --byzantine 1 --seeds 500

# 10,000 seeds each at n = 4, 7, 10 with f = 1, 2, 3 Byzantine, every fault kind
# and the hostile peer, on both cores; failing runs go to the file the test
# suite replays. All three sizes run even if one fails. About 2 hours on a
# quiet 2-core machine, 5 on a busy one (benchmarks/README.md, "Simulator at scale").
SIM_SCALE_SEEDS ?= 10000
SIM_JOBS ?= 2
SIM_REGRESSIONS := tests/sim/regressions.json
sim-scale: $(STAMP)
	rc=0; for nf in 4:1 7:2 10:3; do \
	  $(BIN)/archipelago simulate --validators $${nf%:*} --byzantine $${nf#*:} \
	    --seeds $(SIM_SCALE_SEEDS) --jobs $(SIM_JOBS) --progress \
	    --regressions $(SIM_REGRESSIONS) || rc=1; \
	done; exit $$rc

# 100 kill -9 rounds on 4 validators, then 10 rounds killing one validator while another
# is paused on 7 (f = 2: two at once stay within f), each run with one round of every
# other perturbation. Rounds are sized for under 30 minutes on a quiet 2-core machine; it
# took 38 with other jobs keeping the load at 30 (docs/OPERATIONS.md). SEED=N repeats a run.
perturb: $(STAMP)
	$(BIN)/archipelago perturb --validators 4 --kills 100 --paused-kills 0 $(if $(SEED),--seed $(SEED))
	$(BIN)/archipelago perturb --validators 7 --kills 0 --paused-kills 10 $(if $(SEED),--seed $(SEED))

clean:
	rm -rf $(VENV) build *.egg-info
