#!/usr/bin/env bash
# Container entrypoint: every argument goes to bootstrap.sh (which, with APPLIANCE_SKIP_INSTALL=1,
# installs nothing and runs the appliance). With no arguments it picks by whether a person is there:
#   a terminal on stdin and stdout  -> `menu`  (docker run -it IMAGE, docker compose run appliance)
#   no terminal                     -> $APPLIANCE_DEFAULT_COMMAND (the image sets
#                                      "serve --host 0.0.0.0": docker run -d IMAGE, docker compose up)
set -euo pipefail

app="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"

if [ $# -eq 0 ]; then
  if [ -t 0 ] && [ -t 1 ]; then
    set -- menu
  else
    read -r -a default <<<"${APPLIANCE_DEFAULT_COMMAND:-menu}"
    set -- "${default[@]}"
  fi
fi
exec bash "$app/bootstrap.sh" "$@"
