#!/usr/bin/env bash
# `make compose-check`: validate docker-compose.yml with Docker Compose v2's own parser.
#
# These machines have a Docker client but no engine and no compose plugin, and Debian's
# docker-compose (1.29) predates the file's syntax (`name:`, `env_file.required`,
# `depends_on.required`). So this builds Compose v2 from the Go module proxy once
# (.devstack/bin/docker-compose, a couple of minutes) unless `docker compose` answers, then runs
# `config` for the external setup and for each profile (bundled, opensearch) with .env.example's values.
set -euo pipefail
cd "$(dirname "$0")/.."
COMPOSE_VERSION=v2.40.3
BIN=.devstack/bin/docker-compose

compose() {
  if docker compose version >/dev/null 2>&1; then docker compose "$@"; else "$BIN" "$@"; fi
}

if ! docker compose version >/dev/null 2>&1 && [ ! -x "$BIN" ]; then
  command -v go >/dev/null || { echo "compose-check needs Go (or docker compose)" >&2; exit 1; }
  echo "building docker compose $COMPOSE_VERSION from the Go module proxy (once)..."
  # -modcacherw: `make clean` can delete the module cache without root.
  export GOPATH="$PWD/.devstack/go" GOFLAGS="-mod=mod -modcacherw" GOTOOLCHAIN=local
  log=.devstack/compose-build.log
  dir=$(go mod download -json "github.com/docker/compose/v2@$COMPOSE_VERSION" \
        | python3 -c 'import json, sys; print(json.load(sys.stdin)["Dir"])')
  src=$(mktemp -d)
  cp -r "$dir"/. "$src" && chmod -R u+w "$src"
  mkdir -p "$(dirname "$BIN")"
  (cd "$src" && go build -ldflags "-X github.com/docker/compose/v2/internal.Version=$COMPOSE_VERSION" \
     -o "$OLDPWD/$BIN" ./cmd) >"$log" 2>&1 || { tail -20 "$log" >&2; exit 1; }
  rm -rf "$src"
fi
compose version
for profile in "" bundled opensearch; do
  args=(--env-file .env.example -f docker-compose.yml)
  [ -n "$profile" ] && args+=(--profile "$profile")
  compose "${args[@]}" config --quiet
  echo "docker-compose.yml: valid${profile:+ with profile $profile}; services:" \
       $(compose "${args[@]}" config --services | sort)
done
