#!/usr/bin/env bash
# scripts/e2e/25-network-cli.sh: a network volume from the command line, and every mistake
# a person can make with one answered by one line and a non-zero exit, changing nothing:
# the server unreachable, a wrong password, a password in the URL, no such database or
# volume, a name that exists, no such bucket, missing or world-readable credentials. Then
# list, status, mount with a cache, and destroy (refused while mounted).
# e2e-backends: network
set -euo pipefail
. "$(dirname "$0")/lib.sh"

url=$VOLUME
name=${url##*volume=}
base=${url%%\?*}
store=(--store "s3://$NETVOL_E2E_BUCKET/$name" --endpoint "$NETVOL_TEST_S3_ENDPOINT")
# refused PATTERN ARGS...: netvol ARGS fails with one line matching PATTERN.
refused() {
    local pattern=$1
    shift
    assert_cli_error "$pattern" timeout 120 "$NETVOL" "$@"
    log "ok: netvol $* -> $E2E_OUTPUT"
}

# refused_env PATTERN ENV_ARGS... -- ARGS...: the same, with env(1) arguments first.
refused_env() {
    local pattern=$1 environment=()
    shift
    while [[ $1 != -- ]]; do environment+=("$1"); shift; done
    shift
    assert_cli_error "$pattern" timeout 120 env "${environment[@]}" "$NETVOL" "$@"
    log "ok: ${environment[*]} netvol $* -> $E2E_OUTPUT"
}
host_port=$(sed -E 's|^postgres://[^@]*@([^/]*)/.*|\1|' <<<"$url")

step "create: mistakes, each refused with one line"
refused "cannot connect|could not connect|refused|reach" create "postgres://netvol@127.0.0.1:1/netvol?volume=$name" "${store[@]}" --size 1G
refused_env "password" PGPASSWORD=wrong-password -- create "$url" "${store[@]}" --size 1G
grep -q "wrong-password" "$WORK/cli.err" && fail "the error shows the password"
refused "password.*PGPASSWORD|PGPASSWORD" create "postgres://netvol:secret@$host_port/netvol?volume=$name" "${store[@]}" --size 1G
grep -q "secret" "$WORK/cli.err" && fail "the error shows the password"
refused "does not exist|no database" create "postgres://netvol@$host_port/no_such_db?volume=$name" "${store[@]}" --size 1G
refused "volume=NAME" create "$base" "${store[@]}" --size 1G
refused "needs --store" create "$url" --size 1G
refused "bucket" create "$url" --store "s3://no-such-bucket-$name/x" --endpoint "$NETVOL_TEST_S3_ENDPOINT" --size 1G
refused_env "S3 credentials|AWS_ACCESS_KEY_ID" -u AWS_ACCESS_KEY_ID -u AWS_SECRET_ACCESS_KEY -- create "$url" "${store[@]}" --size 1G
refused_env "[Aa]ccess denied|signature|credentials" AWS_SECRET_ACCESS_KEY=wrong-secret -- create "$url" "${store[@]}" --size 1G
grep -q "wrong-secret" "$WORK/cli.err" && fail "the error shows the secret"
refused "http://|https://" create "$url" --store "s3://$NETVOL_E2E_BUCKET/$name" --endpoint "ftp://x" --size 1G
refused "network volumes" create "$WORK/embedded" "${store[@]}" --size 1G
[[ ! -e $WORK/embedded ]] || fail "a refused create left a directory behind"
refused "no volume named $name" status "$url"
# libpq's own URL parameters reach libpq: this server speaks no TLS.
refused "SSL" status "$url&sslmode=require"

step "credential files must be private"
printf '%s\n' "$PGPASSWORD" >"$WORK/pgpass"
chmod 0644 "$WORK/pgpass"
refused_env "chmod 600" -u PGPASSWORD -- status "$url" --password-file "$WORK/pgpass"
chmod 0600 "$WORK/pgpass"
printf 'AWS_ACCESS_KEY_ID=%s\nAWS_SECRET_ACCESS_KEY=%s\n' "$AWS_ACCESS_KEY_ID" "$AWS_SECRET_ACCESS_KEY" >"$WORK/s3creds"
chmod 0640 "$WORK/s3creds"
refused "chmod 600" create "$url" "${store[@]}" --size 1G --s3-credentials-file "$WORK/s3creds"
chmod 0600 "$WORK/s3creds"

step "create with the secrets in files, then the same name again"
env -u PGPASSWORD -u AWS_ACCESS_KEY_ID -u AWS_SECRET_ACCESS_KEY "$NETVOL" create "$url" "${store[@]}" --size 2G \
    --password-file "$WORK/pgpass" --s3-credentials-file "$WORK/s3creds" >/dev/null
E2E_CREATED[$url]=1
refused "already exists" create "$url" --store "s3://$NETVOL_E2E_BUCKET/$name-other" --endpoint "$NETVOL_TEST_S3_ENDPOINT" --size 1G

step "list and status"
assert_contains "$(netvol list "$base")" "$name" "netvol list"
assert_contains "$(netvol status "$url")" "s3://$NETVOL_E2E_BUCKET/$name" "netvol status names the store"

step "mount with a cache of its own; the prefix is now taken"
mount_volume "$url"
head -c 5M /dev/urandom >"$WORK/data"
cp "$WORK/data" "$MNT/data"
sync "$MNT/data"
assert_equal_files "$WORK/data" "$MNT/data"
cache=$(find "$WORK" -maxdepth 1 -name 'cache*' | head -n 1)
[[ -n $(find "$cache" -type f -size +1k) ]] || fail "the writer's uploads did not enter its cache"
assert_equal 700 "$(stat -c %a "$cache")" "mode of the cache directory"
[[ -z $(find "$cache" -type f -perm /077) ]] || fail "cache files readable by others"
refused "already holds objects|prefix of its own" create "$url-second" "${store[@]}" --size 1G
refused "mounted" destroy "$url" --yes
refused "--yes" destroy "$url"
unmount_volume

step "destroy: metadata and objects gone"
netvol destroy "$url" --yes >/dev/null
refused "no volume named $name" status "$url"
[[ $(netvol list "$base") != *"$name "* ]] || fail "the destroyed volume is still listed"
unset "E2E_CREATED[$url]"
