# shellcheck shell=bash disable=SC2034 # what this sets is for the scripts that source it
# What scripts/test and scripts/demo install, shared: Debian packages, a JDK, the user that runs
# the search nodes, and the search distributions from Maven Central, unpacked once into a cache
# ($MQTT2ES_CACHE) that every work tree and both scripts reuse. Sourced, not run; the caller
# sets `set -euo pipefail` and runs from the repository's root.

ES_MODERN=9.2.0 # needs a JDK >= 21
ES_LEGACY=8.19.0 # runs on Java 17
OS_VERSION=2.19.1 # Java 17..23 (still uses the SecurityManager, which Java 24 removed)
SEARCH_USER=mqtt2es-search

say() { printf '==> %s\n' "$*"; }
die() {
	printf 'scripts/%s: %s\n' "${0##*/}" "$*" >&2
	exit 1
}

if [[ $(id -u) == 0 ]]; then
	default_cache=/var/cache/mqtt2es # $HOME (/root) is not readable by the search user
else
	default_cache=${XDG_CACHE_HOME:-$HOME/.cache}/mqtt2es
fi
CACHE=${MQTT2ES_CACHE:-$default_cache}

# --- Debian packages ---------------------------------------------------------------------------

apt_updated=
apt_install() {
	[[ $(id -u) == 0 ]] || die "missing Debian packages ($*): run as root or install them"
	if [[ -z $apt_updated ]]; then
		say "apt-get update"
		DEBIAN_FRONTEND=noninteractive apt-get update -qq
		apt_updated=1
	fi
	say "apt-get install $*"
	DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$@" >/dev/null
}

installed() { dpkg-query -W -f='${Status}' "$1" 2>/dev/null | grep -q 'install ok installed'; }

# --- JDKs ----------------------------------------------------------------------------------------

java_major() { # $1: a Java home
	local v
	if [[ -r $1/release ]]; then
		v=$(sed -n 's/^JAVA_VERSION="\([^"]*\)".*/\1/p' "$1/release")
	else
		v=$("$1/bin/java" -version 2>&1 | sed -n 's/.* version "\([^"]*\)".*/\1/p' | head -n1)
	fi
	v=${v#1.}
	echo "${v%%[.+-]*}"
}

# Sets modern_jdk (highest >= 21) and legacy_jdk (highest in 17..23).
find_jdks() {
	modern_jdk='' legacy_jdk=''
	local best_modern=0 best_legacy=0 home major seen=" "
	for home in ${JAVA_HOME:-} /usr/lib/jvm/*; do
		[[ -x $home/bin/java ]] || continue
		home=$(readlink -f "$home")
		[[ $seen == *" $home "* ]] && continue
		seen+="$home "
		major=$(java_major "$home")
		[[ $major =~ ^[0-9]+$ ]] || continue
		if ((major >= 21 && major > best_modern)); then best_modern=$major modern_jdk=$home; fi
		if ((major >= 17 && major <= 23 && major > best_legacy)); then best_legacy=$major legacy_jdk=$home; fi
	done
}

# Sets es_version and es_jdk from find_jdks: Elasticsearch 9 on a JDK >= 21, else 8 on Java 17.
pick_elasticsearch() {
	if [[ -n $modern_jdk ]]; then
		es_version=$ES_MODERN es_jdk=$modern_jdk
	else
		es_version=$ES_LEGACY es_jdk=$legacy_jdk
	fi
}

# --- the user that runs the search nodes ---------------------------------------------------------

# Sets search_user: as root, the system user the nodes run as (created if missing); else empty.
ensure_search_user() {
	if [[ $(id -u) == 0 ]]; then
		search_user=$SEARCH_USER
		if ! id -u "$search_user" >/dev/null 2>&1; then
			say "useradd $search_user (Elasticsearch and OpenSearch refuse to run as root)"
			useradd --system --no-create-home --shell /usr/sbin/nologin "$search_user"
		fi
	else
		search_user=
	fi
}

# --- search distributions ------------------------------------------------------------------------

# Runs in other work trees may fill the same cache at the same time: hold this lock while
# calling `distribution`.
lock_cache() {
	mkdir -p "$CACHE"
	exec 9>"$CACHE/.lock"
	flock 9
}
unlock_cache() { exec 9>&-; }

# Whether `distribution` has $2 (artifact id) $3 (version) unpacked already.
distribution_cached() { [[ -f $CACHE/search/$1-$2/.complete ]]; }

# $1 group id, $2 artifact id, $3 version; prints the unpacked home.
distribution() {
	local group=$1 artifact=$2 version=$3
	local home=$CACHE/search/$artifact-$version
	if [[ ! -f $home/.complete ]]; then
		local repo=${MAVEN_LOCAL_REPO:-$HOME/.m2/repository}
		local zip=$repo/${group//.//}/$artifact/$version/$artifact-$version.zip
		if [[ ! -f $zip ]]; then
			say "mvn dependency:get $group:$artifact:$version:zip (50-100 MB, once)" >&2
			# sed: Maven prints bare colour resets even in batch mode.
			mvn -q -B ${MAVEN_LOCAL_REPO:+-Dmaven.repo.local="$MAVEN_LOCAL_REPO"} dependency:get \
				-Dartifact="$group:$artifact:$version:zip" -Dtransitive=false 2>&1 |
				sed 's/\x1b\[[0-9;]*m//g; /^$/d' >&2 ||
				die "could not download $artifact $version with Maven"
			[[ -f $zip ]] || die "Maven did not put $zip there (set MAVEN_LOCAL_REPO to your local repository)"
		fi
		say "unpack $artifact $version into $home" >&2
		mkdir -p "$CACHE/search"
		local tmp
		tmp=$(mktemp -d "$CACHE/search/.unpack.XXXXXX")
		unzip -q "$zip" -d "$tmp"
		rm -rf "$home"
		mv "$tmp/$artifact-$version" "$home"
		rmdir "$tmp"
		# Read-only for the search user: nodes keep config, data, logs and tmp in their own dirs.
		chmod -R a+rX,go-w "$home"
		touch "$home/.complete"
	fi
	if [[ -n $search_user ]] && ! setpriv --reuid="$search_user" --regid="$search_user" --init-groups \
		test -x "$home/bin/$artifact"; then
		die "$search_user cannot reach $home: put MQTT2ES_CACHE where every user can read"
	fi
	echo "$home"
}
