#!/usr/bin/env bash
# System packages the test suite needs, installed from Debian's archive when missing:
#   postgresql      the tests start their own throwaway PostgreSQL server (pg_ctl/initdb)
#   docker-compose  offline validation of docker/docker-compose.yml
#   prometheus      promtool: checks the alert rules and the dashboard's PromQL
# Nothing is installed when everything is already there.
set -euo pipefail
need=()
ls /usr/lib/postgresql/*/bin/pg_ctl >/dev/null 2>&1 || command -v pg_ctl >/dev/null 2>&1 || need+=(postgresql)
command -v docker-compose >/dev/null 2>&1 || docker compose version >/dev/null 2>&1 || need+=(docker-compose)
command -v promtool >/dev/null 2>&1 || need+=(prometheus)
if [ ${#need[@]} -eq 0 ]; then
  exit 0
fi
if [ "$(id -u)" -ne 0 ] || ! command -v apt-get >/dev/null 2>&1; then
  echo "missing system packages: ${need[*]} -- install them (Debian/Ubuntu: sudo apt-get install ${need[*]})" >&2
  exit 1
fi
echo "installing system packages: ${need[*]}"
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
