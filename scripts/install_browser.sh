#!/usr/bin/env bash
# Install the headless browser the play-page test drives: Debian's `chromium` and `chromium-driver`
# (Selenium then uses the system chromedriver; nothing is downloaded at run time).
#
#   sudo bash scripts/install_browser.sh     # prints "browser ready: ..." and exits 0
#
# - Idempotent: does nothing when `chromium` and `chromedriver` are already on PATH.
# - Needs root and apt-get to install; otherwise exits 2 with the reason (the test then skips).
# - Any other failure exits 1 with the reason on stderr.
set -uo pipefail

find_bins() {
    CHROMIUM="$(command -v chromium || command -v chromium-browser || true)"
    DRIVER="$(command -v chromedriver || true)"
}
find_bins
if [ -n "$CHROMIUM" ] && [ -n "$DRIVER" ]; then
    echo "browser ready: $CHROMIUM, $DRIVER"
    exit 0
fi
if [ "$(id -u)" -ne 0 ]; then
    echo "install_browser.sh: chromium/chromedriver missing and not root, so cannot apt-get install them" >&2
    exit 2
fi
if ! command -v apt-get >/dev/null 2>&1; then
    echo "install_browser.sh: chromium/chromedriver missing and no apt-get on this machine" >&2
    exit 2
fi
echo "installing chromium chromium-driver with apt-get ..."
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq >/dev/null 2>&1 || { echo "install_browser.sh: apt-get update failed" >&2; exit 1; }
apt-get install -y -qq chromium chromium-driver >/tmp/browser_apt_install.log 2>&1 \
    || { echo "install_browser.sh: apt-get install chromium chromium-driver failed; see /tmp/browser_apt_install.log" >&2; exit 1; }
find_bins
if [ -z "$CHROMIUM" ] || [ -z "$DRIVER" ]; then
    echo "install_browser.sh: installed, but chromium or chromedriver is still not on PATH" >&2
    exit 1
fi
echo "browser ready: $CHROMIUM, $DRIVER"
