#!/bin/bash
# What one event costs Postgres to insert, piece by piece: pgbench runs the writer's
# statement shape (64 rows a statement, rows like the ingest benchmark's ~1.4 KB events,
# raw compressed with lz4 as the migrations set it) into a fresh copy of the `events` table
# with more of its indexes and clauses each step, one client, 600 statements a step.
# Needs pgbench (Debian's postgresql package) and a server where the user may create
# databases:   eval "$(.ci/postgres)" && scripts/postgres-insert-cost.sh
set -eu
cd "$(dirname "$0")/.."
: "${AUDITHOOK_TEST_POSTGRES_URL:?set it (eval \"\$(.ci/postgres)\")}"
PGBENCH=$(ls /usr/lib/postgresql/*/bin/pgbench 2>/dev/null | tail -1)
[ -n "$PGBENCH" ] || PGBENCH=pgbench
admin=$AUDITHOOK_TEST_POSTGRES_URL
db=audithook_insert_cost_$$
url=${admin%/*}/$db
work=$(mktemp -d)
trap 'psql "$admin" -qc "DROP DATABASE IF EXISTS $db" >/dev/null 2>&1; rm -rf "$work"' EXIT
psql "$admin" -qc "CREATE DATABASE $db" >/dev/null
for f in migrations/postgres/*.sql; do
  psql "$url" -q -v ON_ERROR_STOP=1 -f "$f" >/dev/null
done

cat > "$work/template.sql" <<'SQL'
\set b random(1, 100000000000)
INSERT INTO ev (id, date, kind, name, title, member_id, member_email, token_id, accesses, resources, search, channel, received_at, raw, source, actor, action, resource, summary)
SELECT id, 1700000000000 + g, 'flag', 'Flag number ' || g, 'Sandy Smith turned on the flag Flag number ' || g || ' in ''Production''', '569f514183f2164430000002', 'sandy@example.com', NULL,
 '[{"action":"updateOn","resource":"proj/default:env/production:flag/flag-' || g || '"}]',
 'proj/default:env/production:flag/flag-' || g,
 lower('Flag number ' || g || E'\nSandy Smith turned on the flag Flag number ' || g || E' in production\nflag\n- turned on the flag\nrollout step ' || g || E'\nsandy@example.com\nsandy smith\n\nproj/default:env/production:flag/flag-' || g),
 'hook', (extract(epoch from clock_timestamp()) * 1000)::bigint,
 replace(replace('{"_links":{"canonical":{"href":"/api/v2/flags/default/flag-XNX","type":"application/json"},"parent":{"href":"/api/v2/auditlog","type":"application/json"},"self":{"href":"/api/v2/auditlog/XIDX","type":"application/json"},"site":{"href":"/default/production/features/flag-XNX","type":"text/html"}},"_id":"XIDX","_accountId":"5c7d1d9e0e1f2a3b4c5d6e7f","timestamp":{"milliseconds":1700000000000,"seconds":1700000000,"rfc3339":"2023-11-14T22:13:20Z","simple":"2023-11-14 22:13:20"},"kind":"flag","name":"Flag number XNX","description":"- Turned on the flag","shortDescription":"","comment":"rollout step XNX","member":{"_links":{"parent":{"href":"/api/v2/members","type":"application/json"},"self":{"href":"/api/v2/members/569f514183f2164430000002","type":"application/json"}},"_id":"569f514183f2164430000002","email":"sandy@example.com","firstName":"Sandy","lastName":"Smith"},"titleVerb":"turned on the flag","markdownTitle":"[Sandy Smith](mailto:sandy@example.com) turned on the flag [Flag number XNX](https://app.launchdarkly.com/default/production/features/flag-XNX) in `Production`","title":"Sandy Smith turned on the flag Flag number XNX in ''Production''","target":{"_links":null,"name":"Flag number XNX","resources":["proj/default:env/production:flag/flag-XNX"]},"accesses":[{"action":"updateOn","resource":"proj/default:env/production:flag/flag-XNX"}]}', 'XIDX', id), 'XNX', g::text), 'launchdarkly', 'sandy@example.com', 'updateOn', 'proj/default:env/production:flag/flag-' || g, 'Sandy Smith turned on the flag'
FROM __LOCK__(SELECT g, lpad(to_hex(:b::bigint * 64 + g), 24, '0') AS id FROM generate_series(1,64) g) s
__CONFLICT__;
SQL
statement() { # $1: the FROM prefix (the lock or nothing), $2: the conflict clause
  sed -e "s/__LOCK__/$1/" -e "s/__CONFLICT__/$2/" "$work/template.sql" > "$work/stmt.sql"
}
table() { # $@: DDL for the indexes
  psql "$url" -q -v ON_ERROR_STOP=1 >/dev/null <<DDL
SET client_min_messages = warning;
DROP TABLE IF EXISTS ev;
CREATE TABLE ev (LIKE events INCLUDING DEFAULTS INCLUDING IDENTITY INCLUDING STORAGE INCLUDING COMPRESSION);
$*
DDL
}
run() { # $1: the step's name
  "$PGBENCH" -n -f "$work/stmt.sql" -t "${STATEMENTS:-600}" -c 1 "$url" 2>&1 |
    awk -v n="$1" '/^tps/ { printf "| %s | %.0f | %.1f |\n", n, $3 * 64, 1e6 / ($3 * 64) }'
}
PK="ALTER TABLE ev ADD PRIMARY KEY (seq);"
UQ="ALTER TABLE ev ADD UNIQUE (source, id);"
DT="CREATE INDEX ON ev (date, id, source);"
SD="CREATE INDEX ON ev (source, date);"
MB="CREATE INDEX ON ev (member_id, date) WHERE member_id IS NOT NULL; CREATE INDEX ON ev (member_email, date) WHERE member_email IS NOT NULL; CREATE INDEX ON ev (token_id, date) WHERE token_id IS NOT NULL;"
LOCK="(SELECT pg_advisory_xact_lock(7)) l, "
ON="ON CONFLICT (source, id) DO NOTHING RETURNING source, id"
echo "| step | rows/s | µs per row |"
echo "| --- | ---: | ---: |"
statement "" ""
"$PGBENCH" -n -f <(sed -e 's/^INSERT INTO ev .*$/SELECT count(*) FROM (/' -e 's/^FROM __LOCK__\(.*\)$/FROM \1) q/' -e 's/__CONFLICT__//' "$work/template.sql") \
  -t "${STATEMENTS:-600}" -c 1 "$url" 2>&1 |
  awk '/^tps/ { printf "| rows generated, not stored (the statement round trip) | %.0f | %.1f |\n", $3 * 64, 1e6 / ($3 * 64) }'
table ""; run "heap only (TOAST, lz4), plain INSERT"
table "$PK"; run "+ primary key (seq)"
statement "" "$ON"
table "$PK $UQ"; run "+ unique (source, id), ON CONFLICT DO NOTHING RETURNING"
table "$PK $UQ $DT"; run "+ (date, id, source)"
table "$PK $UQ $DT $SD"; run "+ (source, date)"
table "$PK $UQ $DT $SD $MB"; run "+ member, email, token (partial)"
statement "$LOCK" "$ON"
table "$PK $UQ $DT $SD $MB"; run "+ the insert lock: the writer's statement"
table "$PK $UQ $DT $SD $MB"; PGOPTIONS="-c synchronous_commit=off" run "the same, synchronous_commit=off"
