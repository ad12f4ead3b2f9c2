#!/usr/bin/env bash
# Schemathesis against a live Campus server: does it answer as its own
# OpenAPI document (GET /api/v1/openapi.json) says?
#
#   schemathesis.sh BASE_URL TENANT TOKEN [OPERATOR_TOKEN]
#
# TOKEN: a session token or API key of an *admin* of TENANT. It is used only
# to set up: the runs use a fresh admin API key made from it (revoked at the
# end), so nothing schemathesis does (log out, change or delete users) can
# end TOKEN's session. GET /api/v1/me and POST /api/v1/auth/logout (an API
# key has no "me" and cannot log out) run with the session of a throw-away
# learner made for the purpose.
# OPERATOR_TOKEN (or $CAMPUS_OPERATOR_TOKEN): also runs the control plane,
# except DELETE /admin/api/v1/tenants/{slug}, export(s), import(s) and move;
# the per-tenant routes use a scratch tenant made (and purged) here.
# POST /admin/api/v1/tenants provisions tenants with generated slugs, so
# point this at a scratch deployment, not a production one.
#
# Environment: SEED (default 1), MAX_EXAMPLES per operation (default 30),
# ST (default: st), REPORT_DIR (junit + ndjson reports; default: none).
# Exits 0 when no check failed and nothing errored, 1 otherwise.
# Needs: curl, python3, schemathesis (requirements.txt).
set -euo pipefail

if [[ $# -lt 3 || $# -gt 4 ]]; then
    sed -n '2,22p' "$0" >&2
    exit 2
fi
BASE=${1%/}
TENANT=$2
TOKEN=$3
OPERATOR_TOKEN=${4:-${CAMPUS_OPERATOR_TOKEN:-}}
SEED=${SEED:-1}
MAX_EXAMPLES=${MAX_EXAMPLES:-30}
ST=${ST:-st}
HERE=$(cd "$(dirname "$0")" && pwd)
WORK=$(mktemp -d)
SCHEMA="$BASE/api/v1/openapi.json"
CHECKS=not_a_server_error,status_code_conformance,content_type_conformance,response_headers_conformance,response_schema_conformance,negative_data_rejection,positive_data_acceptance

# One API call for the set-up: prints the body, fails loudly on a non-2xx.
call() { # METHOD PATH BEARER [JSON BODY | @FILE CONTENT-TYPE]
    local method=$1 path=$2 bearer=$3 body=${4:-} type=${5:-application/json} out status
    local args=(-sS -o "$WORK/body" -w '%{http_code}' -X "$method" -H "Authorization: Bearer $bearer")
    [[ $path == /api/v1/* ]] && args+=(-H "X-Tenant: $TENANT")
    if [[ $body == @* ]]; then
        args+=(-H "Content-Type: $type" --data-binary "$body")
    elif [[ -n $body ]]; then
        args+=(-H "Content-Type: $type" -d "$body")
    fi
    local tries=0
    while :; do
        status=$(curl -D "$WORK/headers" "${args[@]}" "$BASE$path") || { echo "set-up: $method $path: curl failed" >&2; return 1; }
        # Logins from this address may be throttled by an earlier run's failed ones.
        [[ $status == 429 && $tries -lt 3 ]] || break
        local wait=$(tr -d '\r' <"$WORK/headers" | awk -F': ' 'tolower($1) == "retry-after" {print $2}')
        echo "   $method $path: 429, retrying in ${wait:-5} s" >&2
        sleep "${wait:-5}"
        tries=$((tries + 1))
    done
    if [[ $status != 2* ]]; then
        echo "set-up: $method $path answered $status: $(head -c 400 "$WORK/body")" >&2
        return 1
    fi
    cat "$WORK/body"
}
field() { python3 -c 'import json,sys; print(json.load(sys.stdin)[sys.argv[1]])' "$1"; }

KEY_ID= SPARE_KEY_ID= USER_ID= COURSE_ID= SCRATCH=
cleanup() {
    set +e
    [[ -n $COURSE_ID ]] && call DELETE "/api/v1/courses/$COURSE_ID" "$TOKEN" >/dev/null 2>&1
    [[ -n $USER_ID ]] && call DELETE "/api/v1/users/$USER_ID" "$TOKEN" >/dev/null 2>&1
    [[ -n $KEY_ID ]] && call DELETE "/api/v1/api-keys/$KEY_ID" "$TOKEN" >/dev/null 2>&1
    [[ -n $SPARE_KEY_ID ]] && call DELETE "/api/v1/api-keys/$SPARE_KEY_ID" "$TOKEN" >/dev/null 2>&1
    [[ -n $SCRATCH ]] && call DELETE "/admin/api/v1/tenants/$SCRATCH?purge=true" "$OPERATOR_TOKEN" >/dev/null 2>&1
    rm -rf "$WORK"
}
trap cleanup EXIT

echo "== set-up on $BASE, tenant $TENANT"
RAND=$(python3 -c 'import secrets; print(secrets.token_hex(6))')
KEY_JSON=$(call POST /api/v1/api-keys "$TOKEN" '{"name": "schemathesis '"$RAND"'", "role": "admin"}')
KEY_ID=$(field id <<<"$KEY_JSON")
export CAMPUS_ST_KEY=$(field key <<<"$KEY_JSON")
# The key DELETE /api/v1/api-keys/{id} revokes: a spare, never the run's own
# (a link from the key list would otherwise revoke it half-way, and every
# operation after it would answer 401).
SPARE_KEY_ID=$(call POST /api/v1/api-keys "$TOKEN" '{"name": "schemathesis spare '"$RAND"'", "role": "learner"}' | field id)
export CAMPUS_ST_SPARE_KEY=$SPARE_KEY_ID
PASSWORD="st-$RAND-$RAND"
USER_ID=$(call POST /api/v1/users "$TOKEN" \
    '{"name": "schemathesis", "email": "st-'"$RAND"'@example.test", "role": "learner", "password": "'"$PASSWORD"'"}' | field id)
# The fixture the lesson routes are pinned to (nothing links to them otherwise).
COURSE_ID=$(call POST /api/v1/courses "$TOKEN" '{"title": "schemathesis '"$RAND"'", "description": "", "published": true}' | field id)
LESSON_ID=$(call POST "/api/v1/courses/$COURSE_ID/lessons" "$TOKEN" '{"title": "fixture"}' | field id)
printf '\0\0\0\x18ftypmp42\0\0\0\0mp42isom fixture' >"$WORK/fixture.mp4"
call PUT "/api/v1/courses/$COURSE_ID/lessons/$LESSON_ID/content" "$TOKEN" "@$WORK/fixture.mp4" video/mp4 >/dev/null
call POST "/api/v1/courses/$COURSE_ID/enrollments" "$TOKEN" '{"user_id": "'"$USER_ID"'"}' >/dev/null
export CAMPUS_ST_SESSION=$(call POST /api/v1/auth/login "$TOKEN" \
    '{"email": "st-'"$RAND"'@example.test", "password": "'"$PASSWORD"'"}' | field token)
export CAMPUS_ST_TENANT=$TENANT CAMPUS_ST_COURSE=$COURSE_ID CAMPUS_ST_LESSON=$LESSON_ID CAMPUS_ST_USER=$USER_ID
echo "   api key $KEY_ID, learner $USER_ID, course $COURSE_ID, lesson $LESSON_ID"

# Secrets stay in the environment; the files name the variables.
cat >"$WORK/tenant.toml" <<'EOF'
[auth.openapi.bearer]
bearer = "${CAMPUS_ST_KEY}"

[parameters]
"header.X-Tenant" = "${CAMPUS_ST_TENANT}"

# A well-formed Range past the end of a file is answered 416 (documented).
[checks.positive_data_acceptance]
expected-statuses = ["2XX", "3XX", "401", "403", "404", "409", "416", "429", "5XX"]

# Routes nothing links to get the fixture (DELETE of a lesson or user excepted).
[[operations]]
include-path-regex = '^/api/v1/courses/\{cid\}/lessons/\{lid\}(/content|/content-url|/progress)?$'
exclude-method = "DELETE"
parameters = { "path.cid" = "${CAMPUS_ST_COURSE}", "path.lid" = "${CAMPUS_ST_LESSON}" }

[[operations]]
include-path-regex = '^/api/v1/users/\{id\}(/avatar)?$'
exclude-method = "DELETE"
parameters = { "path.id" = "${CAMPUS_ST_USER}" }

[[operations]]
include-path = "/api/v1/courses/{id}/progress"
parameters = { "path.id" = "${CAMPUS_ST_COURSE}", "query.user_id" = "${CAMPUS_ST_USER}" }

[[operations]]
include-path = "/api/v1/api-keys/{id}"
parameters = { "path.id" = "${CAMPUS_ST_SPARE_KEY}" }

[[operations]]
include-path = "/api/v1/courses/{cid}/enrollments/{user_id}"
parameters = { "path.cid" = "${CAMPUS_ST_COURSE}", "path.user_id" = "${CAMPUS_ST_USER}" }
EOF
sed 's/CAMPUS_ST_KEY/CAMPUS_ST_SESSION/' "$WORK/tenant.toml" >"$WORK/session.toml"
cat >"$WORK/operator.toml" <<'EOF'
[auth.openapi.operator]
bearer = "${CAMPUS_ST_OPERATOR}"

[[operations]]
include-path-regex = '^/admin/api/v1/tenants/\{slug\}(/suspend|/resume)?$'
parameters = { "path.slug" = "${CAMPUS_ST_SCRATCH}" }
EOF

export SCHEMATHESIS_HOOKS="$HERE/st_hooks.py"
FAILED=0
run() { # NAME CONFIG [st run options...]
    local name=$1 config=$2 started rc
    shift 2
    local report=()
    [[ -n ${REPORT_DIR:-} ]] && report=(--report junit,ndjson --report-dir "$REPORT_DIR/$name")
    echo "== schemathesis: $name (seed $SEED, at most $MAX_EXAMPLES examples per operation)"
    started=$SECONDS
    rc=0
    "$ST" --config-file "$config" run "$SCHEMA" --checks "$CHECKS" --seed "$SEED" \
        --max-examples "$MAX_EXAMPLES" --workers 1 --generation-database none \
        --no-color "${report[@]}" "$@" || rc=$?
    echo "== $name: exit $rc in $((SECONDS - started)) s"
    [[ $rc -eq 0 ]] || FAILED=1
}

# The learner's session first: the tenant run may change or delete the learner.
run session "$WORK/session.toml" --include-path /api/v1/me
run logout "$WORK/session.toml" --include-path /api/v1/auth/logout
run tenant "$WORK/tenant.toml" --include-path-regex '^/api/v1/' \
    --exclude-path /api/v1/me --exclude-path /api/v1/auth/logout

if [[ -n $OPERATOR_TOKEN ]]; then
    export CAMPUS_ST_OPERATOR=$OPERATOR_TOKEN
    SCRATCH="st-$RAND"
    call POST /admin/api/v1/tenants "$OPERATOR_TOKEN" \
        '{"slug": "'"$SCRATCH"'", "name": "schemathesis scratch", "admin": {"email": "admin@'"$SCRATCH"'.test", "name": "admin"}}' >/dev/null
    export CAMPUS_ST_SCRATCH=$SCRATCH
    run operator "$WORK/operator.toml" --include-path-regex '^/admin/api/v1/' \
        --exclude-operation-id delete_tenant \
        --exclude-path-regex '/(export|exports|import|imports|move)$'
else
    echo "== control plane skipped (no OPERATOR_TOKEN)"
fi

exit $FAILED
