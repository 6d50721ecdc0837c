#!/usr/bin/env bash
# The daemons tests/services.py starts (OpenSSH server, SLURM, munge) and the headless browser
# tests/ui/test_ui_browser.py drives through Selenium (Debian's chromium and its chromedriver), installed once before pytest
# (`make test` runs this), never from inside a test. Idempotent: does nothing when the binaries are there.
# Where they are missing and this is not root with apt-get, it says so and leaves the services tests to
# fail with a message naming this script; the rest of the suite still runs.
set -euo pipefail

# keep in step with tests/services.py (SSH_BINARIES, SLURM_BINARIES) and tests/ui/ui_helpers.py (CHROMEDRIVER)
binaries=(/usr/sbin/sshd /usr/bin/ssh /usr/bin/ssh-keygen /usr/sbin/slurmctld /usr/sbin/slurmd /usr/bin/sbatch
          /usr/sbin/munged /usr/bin/chromium /usr/bin/chromedriver)
packages=(openssh-server openssh-client slurm-wlm slurm-client munge chromium chromium-driver)

missing=()
for binary in "${binaries[@]}"; do
    [ -e "$binary" ] || missing+=("$binary")
done
[ ${#missing[@]} -eq 0 ] && exit 0

if [ "$(id -u)" -ne 0 ] || ! command -v apt-get >/dev/null; then
    echo ".ci/services.sh: ${missing[*]} missing and not installable here (needs root + apt-get);" \
         "the sshd/SLURM/browser tests will fail. Fix: run 'sudo .ci/services.sh' once" >&2
    exit 0
fi
export DEBIAN_FRONTEND=noninteractive
timeout 600 apt-get update -q
timeout 900 apt-get install -y -q --no-install-recommends "${packages[@]}"
