# Shared set-up for scripts/demo.sh and scripts/test.sh (sourced, not run).

apt_install() {
  [ "$#" -gt 0 ] || return 0
  local sudo=""
  [ "$(id -u)" = 0 ] || sudo="sudo"
  echo "== installing $* (apt-get)"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "$@" >/dev/null
}

python_env() {
  local py="${PYTHON:-python3}"
  if [ ! -x .venv/bin/python ] && ! "$py" -c "import ensurepip" >/dev/null 2>&1; then
    apt_install python3-venv  # Debian's python3 ships venv without ensurepip
  fi
  if [ ! -x .venv/bin/python ]; then
    echo "== creating .venv"
    "$py" -m venv .venv
  fi
  # Reinstall only when pyproject.toml changed since the last install.
  local stamp=.venv/.nasca-installed
  if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
    echo "== pip install -e .[all]"
    .venv/bin/python -m pip install -q --upgrade pip
    .venv/bin/python -m pip install -q -e '.[all]'
    touch "$stamp"
  fi
}
