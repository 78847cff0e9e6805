# Shared by bench/run (upstream mode) and bench/broker (embedded broker): preflight, the
# release build, process groups and cleanup, the Elasticsearch node, Mosquitto, counting.
# Sourced after the script has set repo, MAX_S and ES_HEAP; builds mqtt2es and every bench example.

SEARCH_USER=mqtt2es-search
TICK=$(getconf CLK_TCK)

say() { printf '==> %s\n' "$*" >&2; }
die() {
	printf 'bench/run: %s\n' "$*" >&2
	exit 1
}
now() { date +%s.%N; }
calc() { python3 -c "print($*)"; }

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
cargo build --release --quiet --bin mqtt2es --example bench-publish --example bench-idle
bridge_bin=$repo/target/release/mqtt2es
publish_bin=$repo/target/release/examples/bench-publish
idle_bin=$repo/target/release/examples/bench-idle

# --- processes and cleanup -----------------------------------------------------------------------

run_tmp=$(mktemp -d -t mqtt2es-bench.XXXXXX)
chmod 755 "$run_tmp"
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
	if [[ -z ${BENCH_KEEP:-} ]]; then rm -rf "$run_tmp"; else say "kept $run_tmp"; fi
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

# Polls the count of data stream $1 until it reaches $2, stops growing for 15 s, or $MAX_S
# passed since $3; sets stored and stored_at.
await_stored() {
	local stream=$1 want=$2 t0=$3 last=-1 last_change
	last_change=$(now)
	while :; do
		stored=$(es_count "$stream")
		stored_at=$(now)
		stored=${stored:-0}
		((stored >= want)) && return
		if ((stored != last)); then
			last=$stored last_change=$stored_at
		elif (($(calc "int($stored_at - $last_change > 15)"))); then
			say "  stalled at $stored of $want"
			return
		fi
		(($(calc "int($stored_at - $t0 > $MAX_S)"))) && {
			say "  time cap: $stored of $want after $MAX_S s"
			return
		}
		sleep 0.75 # with the request above, about Elasticsearch's own 1 s refresh
	done
}
