#!/bin/sh
# Installs isorund for systemd: a virtual environment with the daemon and the Python client
# under PREFIX, the unit, and a default config — the config only when there is none, so an
# upgrade never overwrites an operator's settings. DESTDIR-aware (for packages and tests);
# it starts nothing. Usage: `make install` or
#   [DESTDIR=/tmp/stage] [PREFIX=/opt/isorun] [CONFDIR=/etc/isorund] [PYTHON=python3] tools/install.sh
set -eu

PREFIX=${PREFIX:-/opt/isorun}
DESTDIR=${DESTDIR:-}
UNITDIR=${UNITDIR:-/etc/systemd/system}
CONFDIR=${CONFDIR:-/etc/isorund}
PYTHON=${PYTHON:-python3}
PIP_ARGS=${PIP_ARGS:-}
SRC=$(cd "$(dirname "$0")/.." && pwd)
VENV="$DESTDIR$PREFIX"

echo "isorund: installing into $VENV"
"$PYTHON" -m venv --clear "$VENV"
# shellcheck disable=SC2086  # PIP_ARGS is a list of options
"$VENV/bin/python" -m pip install --quiet --disable-pip-version-check $PIP_ARGS \
    "$SRC/clients/python" "$SRC"

if [ -n "$DESTDIR" ]; then
    # A venv names its interpreter by absolute path: make it the final one, not the staging one.
    for script in "$VENV"/bin/*; do
        if [ -f "$script" ] && [ ! -L "$script" ] && head -c 2 "$script" | grep -q '#!'; then
            sed -i "1s|^#!$VENV/|#!$PREFIX/|" "$script"
        fi
    done
    sed -i "s|$VENV|$PREFIX|g" "$VENV"/bin/activate*
fi

install -d "$DESTDIR$UNITDIR"
# The unit names /opt/isorun and /etc/isorund/isorund.toml: make them PREFIX's and CONFDIR's.
sed -e "s|/opt/isorun|$PREFIX|g" -e "s|--config /etc/isorund/isorund.toml|--config $CONFDIR/isorund.toml|" \
    "$SRC/systemd/isorund.service" > "$DESTDIR$UNITDIR/isorund.service"
chmod 0644 "$DESTDIR$UNITDIR/isorund.service"

install -d -m 0755 "$DESTDIR$CONFDIR"
if [ -e "$DESTDIR$CONFDIR/isorund.toml" ]; then
    echo "isorund: keeping the existing $CONFDIR/isorund.toml"
else
    install -m 0644 "$SRC/systemd/isorund.toml" "$DESTDIR$CONFDIR/isorund.toml"
fi

install -d "$VENV/share/doc/isorun"
install -m 0644 "$SRC/docs/operations.md" "$VENV/share/doc/isorun/operations.md"

cat <<NEXT
isorund: installed. Next, as root:
  $PREFIX/bin/isorund --config $CONFDIR/isorund.toml --print-config   # check the config
  systemctl daemon-reload && systemctl enable --now isorund
  systemctl status isorund                                            # STATUS: busy/queued sandboxes
NEXT
