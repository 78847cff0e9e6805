# shellcheck shell=bash
# Shared by bench/run (upstream mode), bench/broker (embedded broker) and bench/fast (issue 9's
# table): preflight, the release build, process groups and cleanup, the Elasticsearch node,
# Mosquitto and Mosquitto alone, mqtt2es's config and start, the null _bulk endpoint, counting,
# the idle-client test. Sourced after the script has set repo, MESSAGES, MAX_S, ES_HEAP, ONLY and
# IDLE_CLIENTS (0 where the script has no idle test); builds mqtt2es and every bench example.

SEARCH_USER=mqtt2es-search
TICK=$(getconf CLK_TCK)

say() { printf '==> %s\n' "$*" >&2; }
die() {
	printf 'bench/%s: %s\n' "${0##*/}" "$*" >&2
	exit 1
}
now() { date +%s.%N; }
calc() { python3 -c "print($*)"; }

# The idle test holds 10,000 sockets per broker plus the generator's own: as many as we may.
if ((IDLE_CLIENTS > 0)); then
	ulimit -n "$(ulimit -Hn)"
	(($(ulimit -n) > IDLE_CLIENTS + 1000)) || die "ulimit -n $(ulimit -n) is too low for $IDLE_CLIENTS idle clients"
fi

# --- what scripts/test provided ------------------------------------------------------------------

if [[ $(id -u) == 0 ]]; then
	cache=${MQTT2ES_CACHE:-/var/cache/mqtt2es}
	search_user=$SEARCH_USER
	id -u "$search_user" >/dev/null 2>&1 || die "no user $search_user: run scripts/test once"
else
	cache=${MQTT2ES_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/mqtt2es}
	search_user=
fi
for tool in mosquitto mosquitto_sub curl python3; do
	command -v "$tool" >/dev/null || die "$tool missing: run scripts/test once"
done
es_home=${MQTT2ES_TEST_ES_HOME:-}
if [[ -z $es_home ]]; then
	# The newest unpacked distribution, as scripts/test left it.
	for home in "$cache"/search/elasticsearch-*; do
		[[ -f $home/.complete ]] && es_home=$home
	done
fi
[[ -n $es_home && -x $es_home/bin/elasticsearch ]] || die "no Elasticsearch under $cache/search: run scripts/test once"
es_version=${es_home##*-}
es_java=${MQTT2ES_TEST_ES_JAVA_HOME:-}
if [[ -z $es_java ]]; then
	# ES 9 needs Java >= 21, ES 8 runs on 17: take the newest JDK that qualifies.
	need=17
	[[ ${es_version%%.*} -ge 9 ]] && need=21
	best=0
	for home in ${JAVA_HOME:-} /usr/lib/jvm/*; do
		[[ -x $home/bin/java ]] || continue
		major=$("$home/bin/java" -version 2>&1 | sed -n 's/.* version "\([^"]*\)".*/\1/p' | head -n1)
		major=${major#1.}
		major=${major%%[.+-]*}
		[[ $major =~ ^[0-9]+$ ]] || continue
		if ((major >= need && major > best)); then best=$major es_java=$(readlink -f "$home"); fi
	done
	[[ -n $es_java ]] || die "no Java >= $need for Elasticsearch $es_version"
fi

say "cargo build --release (mqtt2es and the bench examples)"
cargo build --release --quiet --bin mqtt2es --example bench-publish --example bench-idle \
	--example bench-null-es
target=${CARGO_TARGET_DIR:-$repo/target}/release
# BENCH_MQTT2ES: another mqtt2es binary to measure (an A/B of a change, built elsewhere).
bridge_bin=${BENCH_MQTT2ES:-$target/mqtt2es}
publish_bin=$target/examples/bench-publish
idle_bin=$target/examples/bench-idle
null_bin=$target/examples/bench-null-es

# --- rows -----------------------------------------------------------------------------------------

wanted() { [[ -z $ONLY || " $ONLY " == *" $1 "* ]]; } # BENCH_ONLY names the scenarios to run
rows=()
row() { rows+=("$(printf -- "$@")"); printf -- "$@" >&2; echo >&2; } # kept, and shown as it comes

# --- processes and cleanup -----------------------------------------------------------------------

run_tmp=$(mktemp -d -t mqtt2es-bench.XXXXXX)
chmod 755 "$run_tmp"
base_tmp=$run_tmp # run_tmp may move into a subdirectory per round (bench/fast); this goes at exit
pids=() # process group leaders (setsid) we started
stop_group() { # $1: pgid; TERM, then KILL after 10 s
	local pgid=$1 i
	kill -TERM -- "-$pgid" 2>/dev/null || return 0
	for ((i = 0; i < 100; i++)); do
		alive "$pgid" || return 0
		sleep 0.1
	done
	kill -KILL -- "-$pgid" 2>/dev/null || true
}
alive() { ps -o stat= -g "$1" 2>/dev/null | grep -qv '^Z'; } # a live process in group $1
cleanup() {
	local pid
	for pid in "${pids[@]}"; do stop_group "$pid"; done
	if [[ -z ${BENCH_KEEP:-} ]]; then rm -rf "$base_tmp"; else say "kept $base_tmp"; fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM
# Starts "$@" in a process group of its own (so stopping it stops its children); sets $started.
spawn() {
	local log=$1
	shift
	setsid "$@" </dev/null >>"$log" 2>&1 &
	started=$!
	pids+=("$started")
}
forget() { # $1: pid no longer ours to clean up
	local kept=() p
	for p in "${pids[@]}"; do [[ $p == "$1" ]] || kept+=("$p"); done
	pids=("${kept[@]}")
}
stop() { # $1: pgid
	stop_group "$1"
	wait "$1" 2>/dev/null || true
	forget "$1"
}
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

# CPU seconds (user+system) of every process in the group $1.
group_cpu() {
	local total=0 pid stat
	for pid in $(ps -o pid= -g "$1" 2>/dev/null); do
		stat=$(cat "/proc/$pid/stat" 2>/dev/null) || continue
		stat=${stat##*) } # fields after "comm", which may hold spaces
		read -r -a f <<<"$stat"
		total=$((total + f[11] + f[12])) # utime, stime (fields 14, 15)
	done
	calc "$total / $TICK"
}
status_kb() { sed -n "s/^$2:[[:space:]]*\([0-9]*\) kB/\1/p" "/proc/$1/status"; } # $1 pid, $2 field

# --- Elasticsearch --------------------------------------------------------------------------------

es_dir=$run_tmp/es
mkdir -p "$es_dir"/{data,logs,tmp}
cp -r "$es_home/config" "$es_dir/config"
[[ -n $search_user ]] && chown -R "$search_user:" "$es_dir"
es_port=$(free_port)
es_url=http://127.0.0.1:$es_port
as_search_user=()
[[ -n $search_user ]] && as_search_user=(setpriv --reuid="$search_user" --regid="$search_user" --init-groups)
say "starting Elasticsearch $es_version (heap $ES_HEAP, Java $es_java) on $es_port"
spawn "$es_dir/out.log" "${as_search_user[@]}" env \
	ES_JAVA_HOME="$es_java" ES_PATH_CONF="$es_dir/config" ES_TMPDIR="$es_dir/tmp" \
	ES_JAVA_OPTS="-Xms$ES_HEAP -Xmx$ES_HEAP -XX:-UsePerfData" CLI_JAVA_OPTS="-XX:-UsePerfData" \
	"$es_home/bin/elasticsearch" -Ediscovery.type=single-node -Enetwork.host=127.0.0.1 \
	-Ehttp.port="$es_port" -Etransport.port="$(free_port)" -Epath.data="$es_dir/data" \
	-Epath.logs="$es_dir/logs" -Ecluster.name=mqtt2es-bench -Expack.security.enabled=false \
	-Ecluster.routing.allocation.disk.threshold_enabled=false
es_pid=$started
for ((i = 0; ; i++)); do
	curl -sf "$es_url/_cluster/health?wait_for_status=yellow&timeout=1s" >/dev/null 2>&1 && break
	kill -0 "$es_pid" 2>/dev/null || die "Elasticsearch exited: $(tail -n 20 "$es_dir/out.log")"
	((i < 300)) || die "Elasticsearch not healthy within 150 s"
	sleep 0.5
done

es_count() { # documents in data stream $1 after a refresh; 0 while it has no active shard yet
	local body
	curl -sf -XPOST "$es_url/$1/_refresh?ignore_unavailable=true&allow_no_indices=true" >/dev/null || true
	body=$(curl -sf "$es_url/$1/_count?ignore_unavailable=true&allow_no_indices=true") || body='"count":0'
	sed -n 's/.*"count":\([0-9]*\).*/\1/p' <<<"$body"
}

# --- Mosquitto ------------------------------------------------------------------------------------

# Starts a broker with extra config lines "$@"; sets broker_pid and broker_port.
start_broker() {
	local dir
	dir=$(mktemp -d "$run_tmp/mosquitto.XXXX")
	broker_port=$(free_port)
	{
		echo "listener $broker_port 127.0.0.1"
		echo "allow_anonymous true"
		echo "persistence false"
		# Unlimited queue: a subscriber that falls behind slows the run down, it loses nothing.
		echo "max_queued_messages 0"
		echo "log_dest stderr"
		echo "log_type error"
		echo "log_type warning"
		printf '%s\n' "$@"
	} >"$dir/mosquitto.conf"
	spawn "$dir/mosquitto.log" "$broker_bin" -c "$dir/mosquitto.conf"
	broker_pid=$started
	for ((i = 0; ; i++)); do
		(exec 3<>"/dev/tcp/127.0.0.1/$broker_port") 2>/dev/null && break
		kill -0 "$broker_pid" 2>/dev/null || die "mosquitto exited: $(cat "$dir/mosquitto.log")"
		((i < 100)) || die "mosquitto not listening"
		sleep 0.05
	done
}

# Runs the probe "${@:3}" (it sets count and count_at, and paces itself) until count reaches $1,
# stops growing for 15 s, or $MAX_S passed since $2.
await_count() {
	local want=$1 t0=$2 last=-1 last_change
	shift 2
	last_change=$(now)
	while :; do
		"$@"
		((count >= want)) && return
		if ((count != last)); then
			last=$count last_change=$(now)
		elif (($(calc "int($(now) - $last_change > 15)"))); then
			say "  stalled at $count of $want"
			return
		fi
		(($(calc "int($(now) - $t0 > $MAX_S)"))) && {
			say "  time cap: $count of $want after $MAX_S s"
			return
		}
	done
}

# Probe: documents in data stream $1, about once a second (Elasticsearch's own refresh).
count_stored() {
	sleep 0.75 # with the refresh in es_count, about a second
	count=$(es_count "$1")
	count_at=$(now)
	count=${count:-0}
}

# Polls the count of data stream $1 until it reaches $2 (see await_count); sets stored and
# stored_at (late by up to a second).
await_stored() {
	await_count "$2" "$3" count_stored "$1"
	stored=$count stored_at=$count_at
}

# Readings of data stream $1 stored more than once: documents beyond the first with the same
# mqtt2es.reading_id. Exact, as a bench stream has one shard; "?" if the search fails.
es_duplicates() {
	curl -sf -XPOST "$es_url/$1/_search?size=0" -H 'content-type: application/json' \
		-d '{"aggs":{"ids":{"terms":{"field":"mqtt2es.reading_id","min_doc_count":2,"size":10000}}}}' |
		python3 -c '
import json, sys
buckets = json.load(sys.stdin)["aggregations"]["ids"]["buckets"]
print(sum(b["doc_count"] - 1 for b in buckets))' 2>/dev/null || echo "?"
}

# Mosquitto alone, the vs-mosq denominator: $2 publishers -> one mosquitto_sub at QoS $1 on a
# fresh broker, timed until it has $MESSAGES messages. Sets got, seconds, broker_cpu (Mosquitto's
# CPU seconds during the run) and broker_hwm_kb.
pub_sub() { # $1 qos, $2 publishers, $3 name (the topics' site), then lines for mosquitto.conf
	local qos=$1 pubs=$2 name=$3 t0 t1 cpu0
	start_broker "${@:4}"
	local out=$run_tmp/$name.sub
	# One short line per message (its payload length): counting, not printing, is measured.
	spawn "$out" timeout "$MAX_S" mosquitto_sub -h 127.0.0.1 -p "$broker_port" \
		-q "$qos" -t 'sensors/#' -C "$MESSAGES" -F '%l'
	local sub_pid=$started
	sleep 1 # mosquitto_sub has subscribed
	cpu0=$(group_cpu "$broker_pid")
	t0=$(now)
	spawn "$run_tmp/$name.pub" "$publish_bin" --port "$broker_port" --qos "$qos" \
		--publishers "$pubs" --messages "$MESSAGES" --site "$name"
	local pub_pid=$started
	wait "$sub_pid" || true
	t1=$(now)
	broker_cpu=$(calc "$(group_cpu "$broker_pid") - $cpu0")
	broker_hwm_kb=$(status_kb "$broker_pid" VmHWM)
	forget "$sub_pid"
	got=$(grep -c '^[0-9]' "$out" || true)
	((got >= MESSAGES)) || say "  mosquitto_sub got $got of $MESSAGES"
	stop "$pub_pid"
	stop "$broker_pid"
	seconds=$(calc "$t1 - $t0")
}
mosquitto_version_of() { { "$1" -h 2>&1 || true; } | sed -n 's/^mosquitto version //p' | head -n1; }

# --- mqtt2es --------------------------------------------------------------------------------------

# Writes mqtt2es's config to $1: the source section $2 (one line, from broker_source or
# upstream_source), Elasticsearch at $3, the pipelines in $4, then the further top-level YAML
# lines "${@:5}" (`batch: ...`, `setup: ...`). Everything else is mqtt2es's default. Sets
# metrics_port.
mqtt2es_config() {
	local file=$1 source=$2 url=$3 pipelines=$4
	shift 4
	metrics_port=$(free_port)
	{
		echo "$source"
		cat <<-EOF
			elasticsearch:
			  url: $url
			pipelines:
			  dir: $pipelines
			dead_letter:
			  file: ${file%.yaml}.deadletter.ndjson
			shutdown:
			  grace_ms: 5000
			# Not the default port, which another instance on a shared machine may hold.
			metrics:
			  bind: "127.0.0.1:$metrics_port"
			log:
			  level: info
		EOF
		printf '%s\n' "$@"
	} >"$file"
}

# `broker:` for mqtt2es_config: the embedded broker on 127.0.0.1:$1, anonymous, its state beside
# config file $2; further keys "${@:3}" (`max_inflight: 1000`).
broker_source() {
	printf 'broker: {listeners: [{transport: tcp, bind: "127.0.0.1:%s"}], auth: {allow_anonymous: true}, state_dir: %s' \
		"$1" "${2%.yaml}.state"
	shift 2
	(($# == 0)) || printf ', %s' "$@"
	echo '}'
}

# `upstream:` for mqtt2es_config: subscribed to the Mosquitto of start_broker as client $1, its
# state beside config file $2; further keys "${@:3}" (`qos: 0`, `connections: 4`).
upstream_source() {
	printf 'upstream: {host: 127.0.0.1, port: %s, client_id: %s, state_dir: %s' "$broker_port" "$1" \
		"${2%.yaml}.state"
	shift 2
	(($# == 0)) || printf ', %s' "$@"
	echo '}'
}

# Starts mqtt2es with config $1 and waits for its log to say $2 (see await_log); sets bridge_pid.
start_mqtt2es() {
	spawn "${1%.yaml}.log" "$bridge_bin" run --config "$1"
	bridge_pid=$started
	await_log "$1" "$2" "${3:-1}"
}

# Waits (30 s at most) until the log of the mqtt2es started with config $1 has $3 (default 1)
# lines with $2: `listening transport=tcp` (the broker's listener is bound), ` subscribed` (an
# upstream connection), `elasticsearch ready` (setup or detection done: documents are written).
await_log() {
	local log=${1%.yaml}.log ready=$2 want=${3:-1} n
	for ((i = 0; ; i++)); do
		n=$(grep -c -- "$ready" "$log" 2>/dev/null || true)
		((${n:-0} >= want)) && break
		kill -0 "$bridge_pid" 2>/dev/null || die "mqtt2es exited: $(tail -n 20 "$log")"
		((i < 600)) || die "mqtt2es is not ready ($ready): $(tail -n 20 "$log")"
		sleep 0.05
	done
}

# --- the null _bulk endpoint ----------------------------------------------------------------------

# Starts a fresh bench/null_es.rs (a stand-in that answers every bulk item 201 at once: on two
# cores the real node is the bottleneck, so only a stand-in shows mqtt2es's own cost); sets
# null_pid and null_url.
start_null() {
	local log
	log=$(mktemp "$run_tmp/null.XXXX")
	spawn "$log" "$null_bin"
	null_pid=$started
	for ((i = 0; ; i++)); do
		null_url=$(sed -n 's|^listening=|http://|p' "$log")
		[[ -n $null_url ]] && break
		kill -0 "$null_pid" 2>/dev/null || die "the null endpoint exited: $(tail -n 5 "$log")"
		((i < 200)) || die "the null endpoint is not listening"
		sleep 0.05
	done
}

# Probe: distinct readings at the null endpoint, waiting up to a second for $1 of them. Sets count,
# duplicates, other (documents without a reading id) and count_at (when the last new reading came).
count_received() {
	local stats
	stats=$(curl -sf "$null_url/_null/stats?wait_for=$1&timeout_ms=1000") ||
		die "the null endpoint did not answer"
	read -r count duplicates other count_at < <(python3 -c '
import json, sys, time
d = json.load(sys.stdin)
print(d["distinct"], d["duplicates"], d["other"], d["last_at"] or time.time())' <<<"$stats")
}

# --- idle clients ---------------------------------------------------------------------------------

# RSS of a broker (pid $2, port $3) before and with $IDLE_CLIENTS idle clients connected.
idle() { # $1 name, $2 pid, $3 port, $4 setup
	local name=$1 pid=$2 port=$3 setup=$4 rss0 rss1 t0 cpu0 cpu1
	rss0=$(status_kb "$pid" VmRSS)
	cpu0=$(group_cpu "$pid")
	t0=$(now)
	spawn "$run_tmp/$name.idle" timeout 300 "$idle_bin" --port "$port" --clients "$IDLE_CLIENTS" \
		--prefix "$name"
	local gen_pid=$started
	for ((i = 0; ; i++)); do
		grep -qs '^connected=' "$run_tmp/$name.idle" && break
		kill -0 "$gen_pid" 2>/dev/null || die "idle clients failed: $(tail -n 5 "$run_tmp/$name.idle")"
		((i < 2400)) || die "idle clients not connected within 120 s"
		sleep 0.05
	done
	local up
	up=$(sed -n 's/^connected=[0-9]* seconds=\([0-9.]*\)$/\1/p' "$run_tmp/$name.idle")
	sleep 3 # let the broker settle: no client sends anything now
	rss1=$(status_kb "$pid" VmRSS)
	cpu1=$(group_cpu "$pid")
	kill -0 "$gen_pid" 2>/dev/null || die "idle clients dropped: $(tail -n 5 "$run_tmp/$name.idle")"
	stop "$gen_pid"
	idle_rows+=("$(printf '%-16s %-34s %8d %9.1f %9.1f %9.1f %8.2f %9.2f' "$name" "$setup" \
		"$IDLE_CLIENTS" "$(calc "$rss0 / 1024")" "$(calc "$rss1 / 1024")" \
		"$(calc "($rss1 - $rss0) / 1024")" "$(calc "($rss1 - $rss0) / $IDLE_CLIENTS")" "$up")")
	say "  ${idle_rows[-1]} (cpu $(calc "round($cpu1 - $cpu0, 2)") s)"
}
idle_rows=()

# The idle test: Mosquitto ($broker_bin), then mqtt2es's broker with the shipped pipelines and
# defaults (Elasticsearch at $es_url), each with $IDLE_CLIENTS idle clients. Only when wanted.
idle_test() {
	((IDLE_CLIENTS > 0)) && { [[ -z $ONLY ]] || wanted idle; } || return 0
	say "idle: $IDLE_CLIENTS connected idle clients"
	start_broker
	idle mosq-idle "$broker_pid" "$broker_port" "Mosquitto $(mosquitto_version_of "$broker_bin")"
	stop "$broker_pid"
	local port config=$run_tmp/idle.yaml
	port=$(free_port)
	mqtt2es_config "$config" \
		"$(broker_source "$port" "$config" "max_connections: $((IDLE_CLIENTS + 1000))")" \
		"$es_url" "$repo/pipelines"
	start_mqtt2es "$config" 'listening transport=tcp'
	idle mqtt2es-idle "$bridge_pid" "$port" "mqtt2es broker, shipped pipelines"
	stop "$bridge_pid"
}

# The idle test's table, if it ran.
print_idle() {
	((${#idle_rows[@]} > 0)) || return 0
	echo
	printf '%-16s %-34s %8s %9s %9s %9s %8s %9s\n' scenario setup clients "rss0-MB" "rss-MB" \
		"delta-MB" "KB/conn" "up-s"
	printf '%s\n' "${idle_rows[@]}"
	echo "rss0: RSS before the clients connected; rss: with them connected and idle (3 s after" \
		"the last CONNACK); up-s: time to connect them all"
}
