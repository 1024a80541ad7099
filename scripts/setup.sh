#!/usr/bin/env bash
# One-shot set-up of a fresh machine: system packages (Xvfb and the xcb libraries napari's
# Qt canvas needs), a virtual environment in $VENV, the CPU build of torch, the package with
# napari and PyQt6, its native kernel compiled into the user cache, and (with --test) the
# test-only dependencies.
# Idempotent: re-running only installs what is missing.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${VENV:-.venv}
PYTHON=${PYTHON:-python3}
TORCH_SPEC=${TORCH_SPEC:-torch==2.13.0}
WITH_TEST=0
[ "${1:-}" = "--test" ] && WITH_TEST=1

# Qt's xcb platform libraries (napari's window, `make napari`) always; for the tests Xvfb, and
# clang (the kernel is also built and checked with clang, as on macOS).
apt_pkgs="libxcb-cursor0 libxcb-icccm4 libxcb-keysyms1 libxkbcommon-x11-0 libgl1 libegl1 libxcb-image0 libxcb-randr0 libxcb-render-util0 libxcb-shape0 libxcb-xinerama0 libxcb-xkb1 libfontconfig1 libdbus-1-3"
[ $WITH_TEST = 1 ] && apt_pkgs="xvfb xauth clang $apt_pkgs"
if command -v dpkg >/dev/null; then
    missing=""
    for p in $apt_pkgs; do
        dpkg -s "$p" >/dev/null 2>&1 || missing="$missing $p"
    done
    if [ -n "$missing" ]; then
        if [ "$(id -u)" = 0 ]; then SUDO=""; elif command -v sudo >/dev/null; then SUDO="sudo"; else SUDO="none"; fi
        if [ "$SUDO" = none ]; then
            echo "setup: please install these system packages (napari's window and its tests need them):$missing" >&2
        else
            echo "setup: installing system packages:$missing"
            $SUDO apt-get update -qq
            DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq $missing >/dev/null
        fi
    fi
fi

if [ ! -x "$VENV/bin/python" ]; then
    "$PYTHON" -m venv "$VENV"
fi
quiet() { "$@" 2>&1 | { grep -v "^WARNING: Location" || true; }; return "${PIPESTATUS[0]}"; }
PIP="$VENV/bin/python -m pip"
quiet $PIP install -q --upgrade pip setuptools wheel ninja
# torch first, pinned: an unpinned torch would pull a multi-GB CUDA build.
if ! "$VENV/bin/python" -c "import torch" 2>/dev/null; then
    quiet $PIP install -q "$TORCH_SPEC"
fi
# napari with a Qt binding for the README's napari path (make napari); the test extra on top.
extras="[napari]"
[ $WITH_TEST = 1 ] && extras="[napari,testing]"
# The package is pure Python (nothing to build against torch); no build isolation only saves
# setting up a build environment for the editable install.
quiet $PIP install -q --no-build-isolation -e ".$extras"
# Compile the native kernel now (cached per user; instant when nothing changed) rather than at
# the first fit. The tests need it; the demo works without it (the NUFFT backend is used).
if [ $WITH_TEST = 1 ]; then
    "$VENV/bin/python" -m deltamic_core.build_kernel --require
else
    "$VENV/bin/python" -m deltamic_core.build_kernel
fi
"$VENV/bin/python" -c "import deltamic_core as d; print('deltamic_core', d.__version__, '- mesh_ft backends:', ', '.join(d.available_backends()))"
