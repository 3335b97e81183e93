#!/usr/bin/env bash
# Install everything the tests need on a fresh Debian machine (as root), then run them.
#   Debian: chromium (browser tests) and dataset-fashion-mnist (the class-conditional model's data).
#   PyPI:   the pinned runtime and test requirements (Playwright drives Debian's chromium; it downloads no browser of its own).
set -euo pipefail
cd "$(dirname "$0")/.."
if ! command -v chromium >/dev/null || [ ! -d /usr/share/datasets/fashion-mnist ]; then
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium $(cat packages.txt) >/dev/null
fi
python3 -m pip install -q --disable-pip-version-check --root-user-action=ignore -r tests/requirements.txt
# pytest exits 5 when it collected no test: that is a failure here, as any non-zero code.
python3 -m pytest tests -ra --timeout=600 -p no:cacheprovider \
  -W ignore::DeprecationWarning -W ignore::FutureWarning "$@"
