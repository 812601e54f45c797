# Set-up and entry points. `make run` and `make test` each install what they need first.
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
export PATH := $(CURDIR)/$(BIN):$(PATH)

.PHONY: run test test-all setup bench

run: $(STAMP)  ## the main job: every DVC stage, promotion and push, as one Prefect flow (offline default)
	python -m flows.pipeline

test: $(STAMP)  ## the default test run (slow tests excluded)
	pytest -m "not slow"

test-all: $(STAMP)  ## every test, the full-corpus checks included
	pytest

setup: $(STAMP)

# FluidSynth and a General MIDI SoundFont from Debian, for WAV rendering, and Debian's chromium for the
# page test (nothing downloaded at run time).
SYSTEM_STAMP := $(VENV)/.system
$(SYSTEM_STAMP):
	@mkdir -p $(VENV)
	if ! command -v fluidsynth >/dev/null || [ ! -e /usr/share/sounds/sf2/FluidR3_GM.sf2 ] || ! command -v chromium >/dev/null; then \
	  SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq --no-install-recommends fluidsynth fluid-soundfont-gm chromium; \
	fi
	touch $(SYSTEM_STAMP)

# Byte-compiled at install time: with PYTHONDONTWRITEBYTECODE set, every run would
# otherwise recompile matplotlib and friends (seconds of start-up per command).
$(STAMP): pyproject.toml $(SYSTEM_STAMP)
	test -x $(BIN)/python || python3.11 -m venv $(VENV) || python3 -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip uv
	$(BIN)/uv pip install --python $(BIN)/python --compile-bytecode -e ".[dev]"
	touch $(STAMP)
